"""Sender mailboxes (#16): create and edit them, their limits today, which campaigns use them.

A mailbox's daily cap (with ramp-up) and minimum gap are enforced by the claim
(sender.py), counting every campaign that sends through it; this module computes the
same limits for pages and the CLI, and holds the person's actions: pause, resume, link
a campaign's mailboxes, move a campaign's leads pinned to one mailbox to another.
Secrets arrive in plain text and are stored sealed (storage.secrets.Vault); nothing
here returns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import Message
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Engine, and_, delete, func, insert, inspect, select, update
from sqlalchemy.engine import Connection, Row

from delivery import messages, templating
from delivery.probe import Check, check
from delivery.transport import Result, mailbox_transport
from models import (
    Campaign,
    CampaignLead,
    EnrollmentState,
    Mailbox,
    MailboxStatus,
    SendLog,
    SendStatus,
    campaign_mailbox,
)
from storage.database import immediate
from storage.secrets import SecretError, Vault
from storage.timeutil import utcnow

_mailbox = Mailbox.__table__
_enrollment = CampaignLead.__table__
_log = SendLog.__table__

BACKENDS = ("smtp", "outbox")
SECURITY = ("none", "starttls", "ssl")
AUTH_KINDS = ("password", "xoauth2")
# Plain fields a person may set; the secrets come as smtp_password / imap_password.
FIELDS = ("name", "address", "backend", "smtp_host", "smtp_port", "smtp_security", "smtp_username",
          "auth_kind", "imap_host", "imap_port", "imap_security", "imap_username", "daily_cap",
          "min_gap_seconds", "ramp_start", "ramp_step", "timezone", "signature", "alert_sender")
SECRETS = {"smtp_password": "smtp_secret", "imap_password": "imap_secret"}


class MailboxError(ValueError):
    """A mailbox value was refused: `field` names the form field, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- limits ------------------------------------------------------------------------


def local_day(timezone: str, now: datetime) -> tuple[date, datetime]:
    """The mailbox's local date at `now` (naive UTC) and that day's start in naive UTC."""
    local = now.replace(tzinfo=UTC).astimezone(ZoneInfo(timezone))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return local.date(), start.astimezone(UTC).replace(tzinfo=None)


def ramp_day(ramp_from: datetime, timezone: str, now: datetime) -> int:
    """Days since the ramp-up began (0 on its first day), in the mailbox's zone."""
    today, _ = local_day(timezone, now)
    first, _ = local_day(timezone, ramp_from)
    return max(0, (today - first).days)


def cap_today(daily_cap: int, ramp_start: int | None, ramp_step: int, ramp_from: datetime,
              timezone: str, now: datetime) -> int:
    """How many messages the mailbox may send today: ramp_start + ramp_step a day, up to the cap."""
    if ramp_start is None:
        return daily_cap
    return min(daily_cap, ramp_start + ramp_step * ramp_day(ramp_from, timezone, now))


def sent_today(conn: Connection, mailbox_id: int, day_start: datetime) -> int:
    """Messages the mailbox sent (claimed) since its local midnight, across all campaigns."""
    return conn.execute(select(func.count()).select_from(_log).where(
        _log.c.mailbox_id == mailbox_id, _log.c.claimed_at >= day_start)).scalar_one()


@dataclass(frozen=True)
class Usage:
    """One mailbox as the list page and `flask mailbox list` show it (no secrets)."""

    id: int
    name: str
    address: str
    backend: str
    status: str
    pause_reason: str | None
    last_error: str | None
    sent_today: int
    cap_today: int
    ramp_day: int | None  # None: no ramp-up
    next_free_at: datetime | None  # the gap: when it may send again (naive UTC), None: now
    campaigns: int
    alert_sender: bool

    timezone: str = "Europe/Warsaw"

    @property
    def left_today(self) -> int:
        return max(0, self.cap_today - self.sent_today)

    def free_at(self, now: datetime) -> datetime | None:
        """When a claim may next go through it (naive UTC): now, after its gap, or at its
        next local midnight when today's cap is used up; None while it is paused."""
        if self.status != MailboxStatus.ACTIVE:
            return None
        if self.left_today == 0:
            _, day_start = local_day(self.timezone, now + timedelta(days=1))
            return max(day_start, now)
        return self.next_free_at or now


def overview(conn: Connection, now: datetime | None = None) -> list[Usage]:
    """Every mailbox with today's sends against today's cap, by address."""
    now = now or utcnow()
    linked = dict(conn.execute(select(campaign_mailbox.c.mailbox_id, func.count())
                               .group_by(campaign_mailbox.c.mailbox_id)).all())
    found = []
    for row in conn.execute(select(_mailbox).order_by(_mailbox.c.address)):
        _, day_start = local_day(row.timezone, now)
        free = row.last_send_at and row.last_send_at + timedelta(seconds=row.min_gap_seconds)
        found.append(Usage(
            row.id, row.name, row.address, row.backend, row.status, row.pause_reason, row.last_error,
            sent_today(conn, row.id, day_start),
            cap_today(row.daily_cap, row.ramp_start, row.ramp_step, row.ramp_from, row.timezone, now),
            None if row.ramp_start is None else ramp_day(row.ramp_from, row.timezone, now),
            free if free and free > now else None, linked.get(row.id, 0), row.alert_sender, row.timezone))
    return found


# --- writes ------------------------------------------------------------------------


def _clean(values: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """Checked and normalized plain values; raises MailboxError naming the field."""
    unknown = set(values) - set(FIELDS) - set(SECRETS)
    if unknown:
        raise MailboxError(sorted(unknown)[0], "unknown field")
    clean = {k: v for k, v in values.items() if k in FIELDS}
    if "address" in clean or not partial:
        try:
            clean["address"] = validate_email(str(clean.get("address", "")).strip(),
                                              check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            raise MailboxError("address", str(exc)) from exc
    for field, allowed in (("backend", BACKENDS), ("smtp_security", SECURITY), ("imap_security", SECURITY),
                           ("auth_kind", AUTH_KINDS)):
        if field in clean and clean[field] not in allowed:
            raise MailboxError(field, f"must be one of {', '.join(allowed)}")
    for field in ("smtp_port", "imap_port", "daily_cap", "min_gap_seconds", "ramp_step", "ramp_start"):
        if field in clean and not (field == "ramp_start" and clean[field] in (None, "")):
            clean[field] = _number(field, clean[field])
        elif field in clean:
            clean[field] = None
    if "timezone" in clean:
        try:
            ZoneInfo(str(clean["timezone"]))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise MailboxError("timezone", "unknown time zone") from exc
    for field in ("name", "smtp_host", "smtp_username", "imap_host", "imap_username"):
        if field in clean:
            clean[field] = str(clean[field] or "").strip()
    if "signature" in clean:
        clean["signature"] = str(clean["signature"] or "")
    return clean


def _number(field: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise MailboxError(field, "must be a whole number") from exc
    top = 65535 if field.endswith("_port") else 10_000_000
    if not 0 <= number <= top:
        raise MailboxError(field, f"must be from 0 to {top}")
    return number


def _sealed(vault: Vault, values: dict[str, Any]) -> dict[str, Any]:
    # A secret changes only when a new one is typed: an empty "change" field keeps it.
    return {column: vault.seal(str(values[field])) for field, column in SECRETS.items() if values.get(field)}


def create(engine: Engine, vault: Vault, **values: Any) -> int:
    """Add a mailbox (active) and return its id; secrets are stored sealed."""
    clean = {**_clean(values, partial=False), **_sealed(vault, values)}
    now = utcnow()
    with immediate(engine) as conn:
        if conn.execute(select(_mailbox.c.id).where(_mailbox.c.address == clean["address"])).first():
            raise MailboxError("address", "a mailbox with this address exists already")
        return conn.execute(insert(_mailbox).values(**clean, ramp_from=now, created_at=now, updated_at=now)
                            .returning(_mailbox.c.id)).scalar_one()


def update_mailbox(engine: Engine, vault: Vault, mailbox_id: int, **values: Any) -> None:
    """Change a mailbox's settings; secrets only when given (non-empty)."""
    clean = {**_clean(values, partial=True), **_sealed(vault, values)}
    with immediate(engine) as conn:
        if "address" in clean and conn.execute(select(_mailbox.c.id).where(
                _mailbox.c.address == clean["address"], _mailbox.c.id != mailbox_id)).first():
            raise MailboxError("address", "a mailbox with this address exists already")
        done = conn.execute(update(_mailbox).where(_mailbox.c.id == mailbox_id)
                            .values(**clean, updated_at=utcnow()))
        if done.rowcount != 1:
            raise MailboxError("id", f"no mailbox {mailbox_id}")


def pause(engine: Engine, mailbox_id: int, reason: str) -> None:
    """Stop sending through a mailbox; its leads wait (never moved on their own)."""
    with immediate(engine) as conn:
        conn.execute(update(_mailbox).where(_mailbox.c.id == mailbox_id)
                     .values(status=MailboxStatus.PAUSED, pause_reason=reason[:1000]))


def resume(engine: Engine, mailbox_id: int) -> None:
    """Send through a paused mailbox again, its failure count reset."""
    with immediate(engine) as conn:
        conn.execute(update(_mailbox).where(_mailbox.c.id == mailbox_id).values(
            status=MailboxStatus.ACTIVE, pause_reason=None, consecutive_failures=0))


def link(engine: Engine, campaign_id: int, mailbox_ids: list[int]) -> None:
    """Make `mailbox_ids` the campaign's mailboxes (leads already pinned keep theirs)."""
    with immediate(engine) as conn:
        conn.execute(delete(campaign_mailbox).where(campaign_mailbox.c.campaign_id == campaign_id))
        if mailbox_ids:
            conn.execute(insert(campaign_mailbox),
                         [{"campaign_id": campaign_id, "mailbox_id": m} for m in sorted(set(mailbox_ids))])


def links(conn: Connection) -> dict[int, list[int]]:
    """Every campaign's mailbox ids, in one query (the dashboard's next send, for all campaigns)."""
    found: dict[int, list[int]] = {}
    rows = conn.execute(select(campaign_mailbox.c.campaign_id, campaign_mailbox.c.mailbox_id)
                        .order_by(campaign_mailbox.c.mailbox_id))
    for campaign_id, mailbox_id in rows:
        found.setdefault(campaign_id, []).append(mailbox_id)
    return found


def of_campaign(conn: Connection, campaign_id: int) -> list[int]:
    """The ids of the mailboxes a campaign sends through."""
    return list(conn.execute(select(campaign_mailbox.c.mailbox_id)
                             .where(campaign_mailbox.c.campaign_id == campaign_id)
                             .order_by(campaign_mailbox.c.mailbox_id)).scalars())


def move_leads(engine: Engine, campaign_id: int, from_id: int, to_id: int) -> int:
    """A person's explicit move: the campaign's unfinished leads pinned to `from_id` go to `to_id`.

    Only leads waiting for a message (pending, or a retry not yet claimed): a lead whose
    message is in flight or decided stays. The move links `to_id` to the campaign.
    """
    with immediate(engine) as conn:
        waiting = and_(_enrollment.c.campaign_id == campaign_id, _enrollment.c.mailbox_id == from_id,
                       _enrollment.c.state.in_([EnrollmentState.PENDING, EnrollmentState.SENDING]))
        retry = and_(_log.c.campaign_id == campaign_id, _log.c.mailbox_id == from_id,
                     _log.c.status == SendStatus.RETRY)
        conn.execute(update(_log).where(retry).values(mailbox_id=to_id))
        # A `sending` enrollment whose row is in flight (not `retry`) keeps its mailbox.
        in_flight = select(_log.c.lead_id).where(_log.c.campaign_id == campaign_id,
                                                 _log.c.status == SendStatus.SENDING)
        moved = conn.execute(update(_enrollment).where(waiting, _enrollment.c.lead_id.not_in(in_flight))
                             .values(mailbox_id=to_id)).rowcount
        if to_id not in of_campaign(conn, campaign_id):
            conn.execute(insert(campaign_mailbox).values(campaign_id=campaign_id, mailbox_id=to_id))
        return moved


def rotate_key(engine: Engine, vault: Vault) -> int:
    """Add a new key and re-seal every stored secret with it; the number of mailboxes re-sealed."""
    vault.add_key()
    with immediate(engine) as conn:
        rows = conn.execute(select(_mailbox.c.id, _mailbox.c.smtp_secret, _mailbox.c.imap_secret)).all()
        for row in rows:
            conn.execute(update(_mailbox).where(_mailbox.c.id == row.id).values(
                smtp_secret=vault.reseal(row.smtp_secret), imap_secret=vault.reseal(row.imap_secret)))
    return len(rows)


# --- reads for the pages -------------------------------------------------------------


@dataclass(frozen=True)
class Stranded:
    """A campaign's leads waiting for a paused mailbox they are pinned to."""

    mailbox_id: int
    name: str
    address: str
    waiting: int


def listing(conn: Connection) -> list[Any]:
    """Every mailbox's id, name, address, status, timezone and daily cap (no secrets), by address."""
    return conn.execute(select(_mailbox.c.id, _mailbox.c.name, _mailbox.c.address, _mailbox.c.status,
                               _mailbox.c.timezone, _mailbox.c.daily_cap).order_by(_mailbox.c.address)).all()


def campaigns_using(conn: Connection) -> dict[int, list[Any]]:
    """For each mailbox id, the (id, name) of the campaigns linked to it."""
    campaign = Campaign.__table__
    found: dict[int, list[Any]] = {}
    for row in conn.execute(select(campaign_mailbox.c.mailbox_id, campaign.c.id, campaign.c.name)
                            .join(campaign, campaign.c.id == campaign_mailbox.c.campaign_id)
                            .order_by(campaign.c.name)):
        found.setdefault(row.mailbox_id, []).append(row)
    return found


def stranded(conn: Connection, campaign_id: int) -> list[Stranded]:
    """The campaign's waiting leads pinned to paused mailboxes, per mailbox: what move_leads would move."""
    # The same rows move_leads moves: pending or sending, but not a message in flight.
    in_flight = select(_log.c.lead_id).where(_log.c.campaign_id == campaign_id,
                                             _log.c.status == SendStatus.SENDING)
    rows = conn.execute(
        select(_mailbox.c.id, _mailbox.c.name, _mailbox.c.address, func.count())
        .select_from(_enrollment.join(_mailbox, _mailbox.c.id == _enrollment.c.mailbox_id))
        .where(_enrollment.c.campaign_id == campaign_id, _mailbox.c.status == MailboxStatus.PAUSED,
               _enrollment.c.state.in_([EnrollmentState.PENDING, EnrollmentState.SENDING]),
               _enrollment.c.lead_id.not_in(in_flight))
        .group_by(_mailbox.c.id, _mailbox.c.name, _mailbox.c.address).order_by(_mailbox.c.address))
    return [Stranded(*row) for row in rows]


# --- reading, testing, checking ------------------------------------------------------


def get(conn: Connection, mailbox_id: int) -> Row:
    """One mailbox row (secrets still sealed); MailboxError when there is none."""
    row = conn.execute(select(_mailbox).where(_mailbox.c.id == mailbox_id)).first()
    if row is None:
        raise MailboxError("id", f"no mailbox {mailbox_id}")
    return row


def find(conn: Connection, ref: str | int) -> int:
    """The id of the mailbox a person named by its id or its address."""
    text = str(ref).strip()
    if text.isdigit():
        return get(conn, int(text)).id
    found = conn.execute(select(_mailbox.c.id).where(_mailbox.c.address == text.lower())).scalar()
    if found is None:
        raise MailboxError("mailbox", f"no mailbox with the address or id {text!r}")
    return found


def _opened(vault: Vault, sealed: str | None, field: str) -> str:
    try:
        return vault.open(sealed)
    except SecretError as exc:
        raise MailboxError(field, str(exc)) from exc


def test_message(row: Row, to_address: str) -> Message:
    """The test message a mailbox sends (not campaign mail: no send_log row, no cap counted)."""
    body = (f"This is a test message from SendOnce, sent through the mailbox {row.address}.\n"
            "If you can read it, the mailbox's settings work.\n"
            + (f"\n-- \n{row.signature}\n" if row.signature else ""))
    return messages.build_message(
        from_address=row.address, from_name=row.name, to_address=to_address, to_name="",
        subject=f"[TEST] SendOnce: {row.address}", body=body,
        msg_id=messages.test_message_id(row.address), unsubscribe_url=templating.SAMPLE_UNSUBSCRIBE_URL)


def send_test(engine: Engine, vault: Vault, mailbox_id: int, to_address: str, *, timeout: float,
              outbox_dir: str) -> Result:
    """Send one test message through the mailbox, whatever its status; the transport's Result."""
    try:
        to = validate_email(to_address.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise MailboxError("to", str(exc)) from exc
    with engine.connect() as conn:
        row = get(conn, mailbox_id)
    transport = mailbox_transport(row, _opened(vault, row.smtp_secret, "smtp_password"),
                                  timeout=timeout, outbox_dir=outbox_dir)
    try:
        return transport.send(test_message(row, to), row.address, to)
    finally:
        transport.close()


def check_connection(engine: Engine, vault: Vault, mailbox_id: int, *, timeout: float) -> list[Check]:
    """Try the mailbox's SMTP (and IMAP) login; each service's outcome with the server's answer."""
    with engine.connect() as conn:
        row = get(conn, mailbox_id)
    return check(row, _opened(vault, row.smtp_secret, "smtp_password"), timeout,
                 _opened(vault, row.imap_secret, "imap_password"))


def unreadable_secrets(engine: Engine, vault: Vault) -> list[int]:
    """Mailboxes with a stored secret these keys cannot decrypt (e.g. after a restore without its keys)."""
    with engine.connect() as conn:
        rows = conn.execute(select(_mailbox.c.id, _mailbox.c.smtp_secret, _mailbox.c.imap_secret)).all()
    bad = []
    for row in rows:
        try:
            vault.open(row.smtp_secret)
            vault.open(row.imap_secret)
        except SecretError:
            bad.append(row.id)
    return bad


def sealed_count(conn: Connection) -> int:
    """How many mailboxes keep a secret (which the key file is needed to read); 0 before the
    mailbox table exists (a backup taken before upgrading, as the README says to)."""
    if not inspect(conn).has_table(_mailbox.name):
        return 0
    return conn.execute(select(func.count()).select_from(_mailbox).where(
        (_mailbox.c.smtp_secret.is_not(None)) | (_mailbox.c.imap_secret.is_not(None)))).scalar_one()
