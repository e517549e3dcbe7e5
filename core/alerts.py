"""Alerts (#16): what a person must know without watching the dashboard.

Kinds: a mailbox paused (key: its id), new `unknown` sends, the scheduler lease unheld
while campaigns are active, a failed backup (key ""). Each is one row of `alert`:
- at most one *open* alert (cleared_at IS NULL) per (kind, key): `raise_alert` of an
  open one only refreshes its details, so a condition that lasts is mailed once;
- `check` (every tick, in every ticking process, and `flask alerts check` from cron)
  opens and clears the condition-based kinds; `flask backup` raises and clears its own;
- a person's "dismiss" closes an alert; a condition still true then stays quiet until it
  ends (the dismissal is noted in app_meta and forgotten when the condition clears);
- `email_due` sends every open, not yet mailed alert in one mail to each admin, at most
  one mail per `min_interval` (later alerts wait and go together). Alerts are not
  campaign mail: send_log is never touched.

`message` holds the alert's details as JSON (an address, a count, an error), so the
dashboard and the mail say them in each reader's language (`describe`).

Every write here runs inside BEGIN IMMEDIATE (storage.database.immediate), which is what
keeps "one open alert per (kind, key)" true between processes. (PostgreSQL, later: a
partial unique index on (kind, key) WHERE cleared_at IS NULL.)
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask_babel import force_locale, gettext, ngettext
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Row

from delivery.lease import LEASE_NAME
from delivery.messages import build_message
from delivery.transport import Transport
from models import (
    Alert,
    AppMeta,
    Campaign,
    CampaignStatus,
    Mailbox,
    MailboxStatus,
    SchedulerLease,
    SendLog,
    SendStatus,
    User,
)
from storage.database import immediate
from storage.migrate import claim_gate

MAILBOX_PAUSED = "mailbox_paused"
CAMPAIGN_PAUSED = "campaign_paused"
UNKNOWN_SENDS = "unknown_sends"
LEASE_UNHELD = "lease_unheld"
BACKUP_FAILED = "backup_failed"
KINDS = (MAILBOX_PAUSED, CAMPAIGN_PAUSED, UNKNOWN_SENDS, LEASE_UNHELD, BACKUP_FAILED)
BY_HAND = "paused by hand"  # core.campaigns.pause's reason: a person's pause is no alert

_alert = Alert.__table__
_meta = AppMeta.__table__
_UNKNOWN_SEEN = "alert_unknown_seen"  # app_meta: the unknown sends already alerted about
log = logging.getLogger(__name__)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(" ", "seconds")


# --- the alert rows ---------------------------------------------------------------------------

def _open(kind: str, key: str) -> Any:
    return (_alert.c.kind == kind) & (_alert.c.key == key) & _alert.c.cleared_at.is_(None)


def raise_alert(conn: Connection, kind: str, key: str, details: dict[str, Any], now: datetime) -> bool:
    """Open an alert unless one is open for (kind, key), whose details are then refreshed; True if opened."""
    message = json.dumps(details, sort_keys=True)
    opened = conn.execute(select(_alert.c.id, _alert.c.message).where(_open(kind, key))).first()
    if opened is not None:
        if opened.message != message:  # a tick that finds nothing new writes nothing
            conn.execute(update(_alert).where(_alert.c.id == opened.id).values(message=message))
        return False
    conn.execute(insert(_alert).values(kind=kind, key=key, message=message, created_at=now))
    log.warning("alert %s %s: %s", kind, key, message)
    return True


def clear(conn: Connection, kind: str, key: str, now: datetime) -> int:
    """The condition is gone: close its open alert and forget a dismissal of it; how many were closed."""
    _forget_dismissal(conn, kind, key)
    return conn.execute(update(_alert).where(_open(kind, key)).values(cleared_at=now)).rowcount


def dismiss(engine: Engine, alert_id: int, who: str, now: datetime) -> bool:
    """A person's "OK": close an open alert; False if it was closed already."""
    with immediate(engine) as conn:
        row = conn.execute(select(_alert.c.kind, _alert.c.key)
                           .where(_alert.c.id == alert_id, _alert.c.cleared_at.is_(None))).first()
        if row is None:
            return False
        conn.execute(update(_alert).where(_alert.c.id == alert_id).values(cleared_at=now))
        # The condition may well last (a mailbox still paused): note it, so `check` does not
        # reopen it at the next tick; `clear` forgets the note once the condition ends.
        _forget_dismissal(conn, row.kind, row.key)
        conn.execute(insert(_meta).values(key=_dismissal_key(row.kind, row.key),
                                          value=f"{who} {_stamp(now)}"))
    log.info("alert %s (%s %s) dismissed by %s", alert_id, row.kind, row.key, who)
    return True


def _dismissal_key(kind: str, key: str) -> str:
    return f"alert_dismissed:{kind}:{key}"


def _forget_dismissal(conn: Connection, kind: str, key: str) -> None:
    conn.execute(delete(_meta).where(_meta.c.key == _dismissal_key(kind, key)))


def open_alerts(conn: Connection) -> list[Row]:
    """Every open alert, oldest first."""
    return list(conn.execute(select(_alert).where(_alert.c.cleared_at.is_(None)).order_by(_alert.c.id)))


def due_for_email(conn: Connection, now: datetime, min_interval: float) -> list[Row]:
    """Open alerts not mailed yet, or none while the last alert mail is younger than min_interval."""
    last = conn.execute(select(func.max(_alert.c.emailed_at))).scalar()
    if last is not None and now - last < timedelta(seconds=min_interval):
        return []
    return list(conn.execute(select(_alert).where(_alert.c.cleared_at.is_(None),
                                                  _alert.c.emailed_at.is_(None)).order_by(_alert.c.id)))


def mark_emailed(conn: Connection, ids: list[int], when: datetime | None) -> None:
    """Record that these alerts were mailed at `when` (None: put them back, the mail failed)."""
    conn.execute(update(_alert).where(_alert.c.id.in_(ids)).values(emailed_at=when))


# --- detection --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Watch:
    """What `check` needs to know: how long the lease may stay unheld (3 ticks by default)."""

    lease_grace_seconds: float

    @classmethod
    def from_config(cls, config: Any) -> Watch:
        """ALERT_LEASE_SECONDS, or 3 x TICK_SECONDS when it is not set."""
        grace = config.get("ALERT_LEASE_SECONDS")
        return cls(float(grace) if grace is not None else 3 * float(config["TICK_SECONDS"]))


def check(engine: Engine, watch: Watch, now: datetime) -> tuple[str, str] | None:
    """Open alerts for the conditions that hold now and clear those that ended (one short write).

    Returns the claim gate's (code, detail) instead when the database is at another schema
    revision or under restore: nothing is checked then (the claims refuse too, and say why).
    """
    with immediate(engine) as conn:
        if (gate := claim_gate(conn)) is not None:
            return gate
        _check_mailboxes(conn, now)
        _check_campaigns(conn, now)
        _check_unknown(conn, now)
        _check_lease(conn, watch, now)
    return None


def _sync(conn: Connection, kind: str, holding: dict[str, dict[str, Any]], now: datetime) -> None:
    """Make the alerts of a condition kind match what holds now (`holding`: details by key):
    raised where it holds (unless a person dismissed it), cleared where it ended."""
    opened = set(conn.execute(select(_alert.c.key).where(_alert.c.kind == kind,
                                                         _alert.c.cleared_at.is_(None))).scalars())
    prefix = _dismissal_key(kind, "")
    dismissed = {k.removeprefix(prefix) for k in conn.execute(
        select(_meta.c.key).where(_meta.c.key.startswith(prefix, autoescape=True))).scalars()}
    for key in (opened | dismissed) - holding.keys():
        clear(conn, kind, key, now)
    for key, details in holding.items():
        if key not in dismissed:
            raise_alert(conn, kind, key, details, now)


def _check_mailboxes(conn: Connection, now: datetime) -> None:
    mailbox = Mailbox.__table__
    rows = conn.execute(select(mailbox.c.id, mailbox.c.address, mailbox.c.pause_reason)
                        .where(mailbox.c.status == MailboxStatus.PAUSED))
    _sync(conn, MAILBOX_PAUSED, {str(r.id): {"address": r.address, "reason": r.pause_reason or ""}
                                 for r in rows}, now)


def _check_campaigns(conn: Connection, now: datetime) -> None:
    """A campaign paused by SendOnce itself (failures in a row, bad credentials, a restore);
    a person's own pause needs no alert."""
    table = Campaign.__table__
    rows = conn.execute(select(table.c.id, table.c.name, table.c.pause_reason)
                        .where(table.c.status == CampaignStatus.PAUSED,
                               func.coalesce(table.c.pause_reason, BY_HAND) != BY_HAND))
    _sync(conn, CAMPAIGN_PAUSED, {str(r.id): {"id": r.id, "name": r.name, "reason": r.pause_reason}
                                  for r in rows}, now)


def _check_unknown(conn: Connection, now: datetime) -> None:
    """New `unknown` sends: more of them than last time, or one newer than all seen (a person
    may have decided some meanwhile). An alert mailed already is closed and a new one opened,
    so the new sends are mailed too; one not mailed yet just takes the new figures."""
    log_table = SendLog.__table__
    rows = conn.execute(select(log_table.c.campaign_id, func.count(), func.max(log_table.c.id))
                        .where(log_table.c.status == SendStatus.UNKNOWN)
                        .group_by(log_table.c.campaign_id).order_by(log_table.c.campaign_id)).all()
    count, newest = sum(r[1] for r in rows), max((r[2] for r in rows), default=0)
    stored = conn.execute(select(_meta.c.value).where(_meta.c.key == _UNKNOWN_SEEN)).scalar()
    seen = json.loads(stored or "{}")
    if seen != {"count": count, "newest": newest}:
        conn.execute(delete(_meta).where(_meta.c.key == _UNKNOWN_SEEN))
        conn.execute(insert(_meta).values(key=_UNKNOWN_SEEN,
                                          value=json.dumps({"count": count, "newest": newest})))
    if count == 0:
        clear(conn, UNKNOWN_SENDS, "", now)
        return
    new = count > seen.get("count", 0) or newest > seen.get("newest", 0)
    opened = conn.execute(select(_alert.c.emailed_at).where(_open(UNKNOWN_SENDS, ""))).first()
    if not new and opened is None:
        return  # dismissed, or already decided down: nothing new to say
    if new and opened is not None and opened.emailed_at is not None:
        conn.execute(update(_alert).where(_open(UNKNOWN_SENDS, "")).values(cleared_at=now))
    names = dict(conn.execute(select(Campaign.id, Campaign.name)
                              .where(Campaign.id.in_([r[0] for r in rows]))).all())
    raise_alert(conn, UNKNOWN_SENDS, "", {"count": count, "campaigns": [
        {"id": r[0], "name": names.get(r[0], ""), "count": r[1]} for r in rows]}, now)


def _check_lease(conn: Connection, watch: Watch, now: datetime) -> None:
    lease = conn.execute(select(SchedulerLease.__table__).where(SchedulerLease.name == LEASE_NAME)).first()
    held = lease is not None and bool(lease.holder) and lease.expires_at > now
    active = conn.execute(select(Campaign.id).where(Campaign.status == CampaignStatus.ACTIVE)
                          .limit(1)).first()
    if held or active is None:  # a scheduler runs, or nothing waits for one
        _sync(conn, LEASE_UNHELD, {}, now)
        return
    since = lease.expires_at if lease is not None else None
    if since is not None and now - since <= timedelta(seconds=watch.lease_grace_seconds):
        return  # a holder between two ticks, or one taking over: not yet, nor over
    _sync(conn, LEASE_UNHELD, {"": {"since": _stamp(since) if since else None}}, now)


def backup_result(engine: Engine, error: str | None, now: datetime) -> None:
    """After `flask backup`: raise backup_failed with the error, or clear it on success."""
    with immediate(engine) as conn:
        if error is None:
            clear(conn, BACKUP_FAILED, "", now)
        else:
            raise_alert(conn, BACKUP_FAILED, "", {"error": error}, now)


# --- words and mail ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Described:
    """An alert in the reader's language: what kind it is, and what happened."""

    id: int
    kind: str
    title: str
    text: str
    created_at: datetime
    links: list[tuple[str, str]]  # (label, path on this site)


def describe(alert: Row) -> Described:
    """The alert in the current locale (force_locale picks a mail reader's)."""
    details = json.loads(alert.message or "{}")
    title, text, links = _WORDS.get(alert.kind, _other)(details)
    return Described(alert.id, alert.kind, title, text, alert.created_at, links)


def _mailbox_paused(d: dict[str, Any]) -> tuple[str, str, list]:
    return (gettext("Mailbox paused"),
            gettext("%(address)s is paused and sends nothing; its leads wait. Reason: %(reason)s",
                    address=d.get("address", ""), reason=d.get("reason") or "—"), [])


def _campaign_paused(d: dict[str, Any]) -> tuple[str, str, list]:
    return (gettext("Campaign paused by SendOnce"),
            gettext("%(name)s was paused and sends nothing until a person resumes it. Reason: %(reason)s",
                    name=d.get("name", ""), reason=d.get("reason") or "—"),
            [(gettext("Open the campaign"), f"/campaigns/{int(d['id'])}")] if "id" in d else [])


def _unknown_sends(d: dict[str, Any]) -> tuple[str, str, list]:
    count = int(d.get("count", 0))
    links = [(ngettext("%(name)s: %(num)d unknown", "%(name)s: %(num)d unknown", c["count"], name=c["name"]),
              f"/campaigns/{int(c['id'])}/log?status=unknown") for c in d.get("campaigns", [])]
    return (gettext("Sends with an unknown outcome"),
            ngettext("%(num)d send may or may not have been delivered: a person must decide it.",
                     "%(num)d sends may or may not have been delivered: a person must decide each.",
                     count), links)


def _lease_unheld(d: dict[str, Any]) -> tuple[str, str, list]:
    since = d.get("since")
    text = (gettext("No process has held the scheduler lease since %(at)s UTC: active campaigns are "
                    "not sent automatically. Is the scheduler running?", at=since) if since else
            gettext("No process has ever held the scheduler lease: active campaigns are not sent "
                    "automatically. Is the scheduler running?"))
    return gettext("Scheduler not running"), text, []


def _backup_failed(d: dict[str, Any]) -> tuple[str, str, list]:
    text = gettext("The last backup failed: %(error)s", error=d.get("error", ""))
    return gettext("Backup failed"), text, []


def _other(d: dict[str, Any]) -> tuple[str, str, list]:
    return gettext("Alert"), json.dumps(d, ensure_ascii=False), []


_WORDS = {MAILBOX_PAUSED: _mailbox_paused, CAMPAIGN_PAUSED: _campaign_paused, UNKNOWN_SENDS: _unknown_sends,
          LEASE_UNHELD: _lease_unheld, BACKUP_FAILED: _backup_failed}


@dataclass(frozen=True)
class Sender:
    """Who alert mail comes from: an address and a display name."""

    address: str
    name: str = "SendOnce"


def admins(conn: Connection) -> list[Row]:
    """Every user who may log in (all users are admins), with their language."""
    return list(conn.execute(select(User.email, User.language)
                             .where(User.disabled.is_(False)).order_by(User.id)))


def compose(alerts: list[Row], language: str, base_url: str) -> tuple[str, str]:
    """(subject, plain-text body) of one alert mail, in `language` (Polish unless 'en')."""
    with force_locale("en" if language == "en" else "pl"):
        described = [describe(alert) for alert in alerts]
        subject = ngettext("SendOnce: %(num)d alert", "SendOnce: %(num)d alerts", len(described))
        if len(described) == 1:
            subject = gettext("SendOnce: %(title)s", title=described[0].title)
        parts = []
        for item in described:
            lines = [f"* {item.title} ({_stamp(item.created_at)} UTC)", f"  {item.text}"]
            lines += [f"  {label}: {base_url}{path}" for label, path in item.links]
            parts.append("\n".join(lines))
        footer = gettext("Every open alert is on the dashboard: %(url)s", url=f"{base_url}/")
    return subject, "\n\n".join(parts) + "\n\n" + footer + "\n"


def email_due(engine: Engine, transport: Transport, sender: Sender, now: datetime, min_interval: float,
              base_url: str) -> int:
    """Mail the open, not yet mailed alerts to every admin in one message each, unless an alert
    mail went out less than min_interval ago; how many alerts were mailed."""
    with immediate(engine) as conn:
        # Claimed (emailed_at set) before sending, inside the write lock: two processes
        # cannot both mail the same alerts or both pass the rate limit.
        due = due_for_email(conn, now, min_interval)
        mark_emailed(conn, [a.id for a in due], now)
        recipients = admins(conn) if due else []
    if not due:
        return 0
    delivered = sum(_mail_one(transport, sender, user, due, base_url) for user in recipients)
    if not delivered:  # nobody got it: back in the queue for the next tick (and the limit with it)
        with immediate(engine) as conn:
            mark_emailed(conn, [a.id for a in due], None)
        return 0
    return len(due)


def _mail_one(transport: Transport, sender: Sender, user: Row, due: list[Row], base_url: str) -> bool:
    subject, body = compose(due, user.language, base_url)
    domain = sender.address.rpartition("@")[2] or "sendonce.invalid"
    msg = build_message(from_address=sender.address, from_name=sender.name, to_address=user.email,
                        to_name="", subject=subject, body=body,
                        msg_id=f"<sendonce.alert.{secrets.token_hex(8)}@{domain}>")
    try:
        result = transport.send(msg, sender.address, user.email)
    except Exception:  # noqa: BLE001 - one admin's failure must not stop the others' mail
        log.exception("alert mail to %s failed", user.email)
        return False
    if result.status != SendStatus.SENT:
        log.warning("alert mail to %s not sent: %s", user.email, result.reply)
    return result.status == SendStatus.SENT
