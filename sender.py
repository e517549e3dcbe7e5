"""The sending engine: claim in one BEGIN IMMEDIATE transaction, send, record the outcome.

Invariant: a lead gets at most one message per campaign, and every enrollment ends in an
accounted state. How a crash at each step leaves the data:
- during the claim transaction: rolled back, nothing happened;
- after the claim committed, before SMTP finished: the row stays `sending`; `recover`
  turns it into `unknown` (its pid is gone, or it is older than the stale limit) and
  nothing re-sends it on its own; a person decides;
- after SMTP, before the outcome is recorded: the same, `unknown`;
- during the outcome transaction: rolled back, so again `sending` -> `unknown`.
Pacing, the daily cap, the send window, the campaign's status and (for scheduler
ticks) the lease are all checked inside the claim transaction, so two ticks, a cron
run and a button click racing each other cannot slip past any of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, bindparam, func, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import OperationalError

import lease as leases
import messages
import templating
from database import immediate
from models import (
    ButtonPress,
    Campaign,
    CampaignLead,
    CampaignStatus,
    EnrollmentState,
    Lead,
    SendLog,
    SendStatus,
    Suppression,
    Trigger,
    Variant,
)
from suppressions import suppress
from timeutil import utcnow
from transport import Result, Transport
from unsubscribe import unsubscribe_url

log = logging.getLogger(__name__)

_campaign = Campaign.__table__
_enrollment = CampaignLead.__table__
_log = SendLog.__table__
_lead = Lead.__table__
_variant = Variant.__table__
_suppression = Suppression.__table__
_press = ButtonPress.__table__

_FINAL_STATE = {
    SendStatus.SENT: EnrollmentState.SENT,
    SendStatus.FAILED: EnrollmentState.FAILED,
    SendStatus.UNKNOWN: EnrollmentState.UNKNOWN,
    SendStatus.RETRY: EnrollmentState.SENDING,
}
# Suppressed enrollments skipped inside one claim before it gives the lock back.
_SKIP_LIMIT = 200


@dataclass(frozen=True)
class Settings:
    base_url: str
    secret_key: str
    lease_seconds: float = 120
    stale_seconds: float = 300  # a `sending` row older than this is `unknown`
    max_attempts: int = 5
    retry_base_seconds: float = 60
    pause_after_failures: int = 5

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        """Engine settings from a Flask config mapping."""
        return cls(
            base_url=config["BASE_URL"],
            secret_key=config["SECRET_KEY"],
            lease_seconds=float(config["LEASE_SECONDS"]),
            stale_seconds=float(config["STALE_SENDING_SECONDS"]),
            max_attempts=int(config["MAX_ATTEMPTS"]),
            retry_base_seconds=float(config["RETRY_BASE_SECONDS"]),
            pause_after_failures=int(config["PAUSE_AFTER_FAILURES"]),
        )


@dataclass(frozen=True)
class Claim:
    send_log_id: int
    campaign_id: int
    lead_id: int
    variant_letter: str
    attempts: int
    worker: str


@dataclass(frozen=True)
class Refusal:
    """Why a claim took nothing: code is stable (for UI messages), detail is for people."""

    code: str  # not_active, lease_lost, not_due, outside_window, daily_cap, nothing_due, finished
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


@dataclass
class BatchResult:
    outcomes: list[tuple[Claim, Result]] = field(default_factory=list)
    stopped_by: Refusal | None = None

    @property
    def sent(self) -> int:
        return sum(1 for _, r in self.outcomes if r.status == SendStatus.SENT)


# --- the claim -------------------------------------------------------------------


_CAMPAIGN = select(_campaign).where(_campaign.c.id == bindparam("campaign"))
_CHECKPOINT = update(_campaign).where(_campaign.c.id == bindparam("campaign")).values(
    last_claim_at=bindparam("now"))


def claim_next(engine: Engine, settings: Settings, campaign_id: int, trigger: Trigger,
               now: datetime, lease: leases.Lease | None = None,
               once_key: str | None = None) -> Claim | Refusal:
    """Take the next message of a campaign for this process, or say why not."""
    with immediate(engine) as conn:
        if lease is not None and not leases.fence(conn, lease, now, settings.lease_seconds):
            return Refusal("lease_lost", f"epoch {lease.epoch} is no longer current")
        if once_key is not None and not _consume_key(conn, once_key, campaign_id, now):
            return Refusal("already_pressed", "this button press was handled already")
        campaign = conn.execute(_CAMPAIGN, {"campaign": campaign_id}).first()
        refusal = _check_campaign(conn, campaign, trigger, now)
        if refusal is not None:
            return refusal
        worker = leases.worker_id()
        epoch = lease.epoch if lease else None
        claim = (_take_retry(conn, campaign_id, trigger, now, worker, epoch)
                 or _take_pending(conn, campaign_id, trigger, now, worker, epoch))
        if claim is None:
            return _finish_if_done(conn, campaign_id)
        # The pacing checkpoint advances in the claim itself (listmonk's lesson: never
        # after the send, or a crash in between lets the next tick send early).
        conn.execute(_CHECKPOINT, {"campaign": campaign_id, "now": now})
        return claim


def _consume_key(conn: Connection, key: str, campaign_id: int, now: datetime) -> bool:
    # A double click, a reloaded POST or two tabs share one key: the primary key lets
    # exactly one of them through, decided inside the claim transaction.
    return conn.execute(sqlite_insert(_press).values(key=key, campaign_id=campaign_id, pressed_at=now)
                        .on_conflict_do_nothing()).rowcount == 1


def _check_campaign(conn: Connection, campaign: Row | None, trigger: Trigger,
                    now: datetime) -> Refusal | None:
    if campaign is None or campaign.status != CampaignStatus.ACTIVE:
        return Refusal("not_active", campaign.status if campaign else "no such campaign")
    tz = ZoneInfo(campaign.timezone)
    local = now.replace(tzinfo=UTC).astimezone(tz)
    if campaign.daily_cap is not None:
        day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        day_start_utc = day_start.astimezone(UTC).replace(tzinfo=None)
        today = conn.execute(select(func.count()).select_from(_log).where(
            _log.c.campaign_id == campaign.id, _log.c.created_at >= day_start_utc)).scalar_one()
        if today >= campaign.daily_cap:
            return Refusal("daily_cap", f"{today}/{campaign.daily_cap}")
    if trigger == Trigger.BUTTON:  # a person asked: interval and window do not apply
        return None
    if campaign.last_claim_at is not None:
        due = campaign.last_claim_at + timedelta(seconds=campaign.interval_seconds)
        if due > now:
            return Refusal("not_due", due.isoformat(sep=" ", timespec="seconds") + " UTC")
    if not in_window(campaign, local):
        return Refusal("outside_window", f"{local:%a %H:%M} {campaign.timezone}")
    return None


def in_window(campaign: Any, local: datetime) -> bool:
    """Whether a local time falls in the campaign's weekdays and [start, end) hours."""
    days = {int(d) for d in campaign.window_weekdays.split(",") if d.strip()}
    return local.weekday() in days and campaign.window_start_hour <= local.hour < campaign.window_end_hour


def _take_retry(conn: Connection, campaign_id: int, trigger: Trigger, now: datetime,
                worker: str, epoch: int | None) -> Claim | None:
    row = conn.execute(
        select(_log.c.id, _log.c.lead_id, _log.c.variant_letter, _log.c.attempts,
               _suppression.c.id.is_not(None).label("suppressed"))
        .join(_lead, _lead.c.id == _log.c.lead_id)
        .outerjoin(_suppression, _suppression.c.email == _lead.c.email)
        .where(_log.c.campaign_id == campaign_id, _log.c.status == SendStatus.RETRY,
               _log.c.next_attempt_at <= now)
        .order_by(_log.c.next_attempt_at).limit(1)
    ).first()
    if row is None:
        return None
    if row.suppressed:  # unsubscribed or bounced while waiting: never retry it
        conn.execute(update(_log).where(_log.c.id == row.id)
                     .values(status=SendStatus.FAILED, smtp_reply="suppressed before retry"))
        claim = Claim(row.id, campaign_id, row.lead_id, row.variant_letter, row.attempts, worker)
        _set_enrollment(conn, claim, EnrollmentState.SKIPPED)
        return None
    attempts = row.attempts + 1
    taken = conn.execute(
        update(_log).where(_log.c.id == row.id, _log.c.status == SendStatus.RETRY)
        .values(status=SendStatus.SENDING, attempts=attempts, worker=worker, trigger=trigger,
                lease_epoch=epoch, claimed_at=now, next_attempt_at=None)
    )
    if taken.rowcount != 1:  # impossible under BEGIN IMMEDIATE; refuse rather than guess
        return None
    return Claim(row.id, campaign_id, row.lead_id, row.variant_letter, attempts, worker)


# The claim's statements are built once, with bind parameters: building SQLAlchemy
# expressions costs more than running them, and it happens while the write lock is held.
_NEXT_PENDING = (
    select(_enrollment.c.id, _enrollment.c.lead_id, _enrollment.c.variant_letter,
           _suppression.c.id.is_not(None).label("suppressed"))
    .join(_lead, _lead.c.id == _enrollment.c.lead_id)
    .outerjoin(_suppression, _suppression.c.email == _lead.c.email)
    .where(_enrollment.c.campaign_id == bindparam("campaign"),
           _enrollment.c.state == EnrollmentState.PENDING)
    .order_by(_enrollment.c.id).limit(1)
)
_TAKE_PENDING = (update(_enrollment)
                 .where(_enrollment.c.id == bindparam("row"), _enrollment.c.state == EnrollmentState.PENDING)
                 .values(state=bindparam("new_state")))
_NEW_LOG_ROW = insert(_log).values(
    campaign_id=bindparam("campaign"), lead_id=bindparam("lead"), variant_letter=bindparam("letter"),
    status=SendStatus.SENDING, attempts=1, trigger=bindparam("trigger"), worker=bindparam("worker"),
    lease_epoch=bindparam("epoch"), created_at=bindparam("now"), claimed_at=bindparam("now"))


def _take_pending(conn: Connection, campaign_id: int, trigger: Trigger, now: datetime,
                  worker: str, epoch: int | None) -> Claim | None:
    for _ in range(_SKIP_LIMIT):
        row = conn.execute(_NEXT_PENDING, {"campaign": campaign_id}).first()
        if row is None:
            return None
        state = EnrollmentState.SKIPPED if row.suppressed else EnrollmentState.SENDING
        taken = conn.execute(_TAKE_PENDING, {"row": row.id, "new_state": state})
        if taken.rowcount != 1 or row.suppressed:
            continue
        # The unique indexes on send_log make the database itself refuse a second row.
        log_id = conn.execute(_NEW_LOG_ROW, {
            "campaign": campaign_id, "lead": row.lead_id, "letter": row.variant_letter,
            "trigger": trigger, "worker": worker, "epoch": epoch, "now": now,
        }).inserted_primary_key[0]
        return Claim(log_id, campaign_id, row.lead_id, row.variant_letter, 1, worker)
    return None


def _finish_if_done(conn: Connection, campaign_id: int) -> Refusal:
    open_enrollments = conn.execute(
        select(func.count()).select_from(_enrollment).where(
            _enrollment.c.campaign_id == campaign_id,
            _enrollment.c.state.in_([EnrollmentState.PENDING, EnrollmentState.SENDING]))
    ).scalar_one()
    if open_enrollments:
        return Refusal("nothing_due", f"{open_enrollments} in flight or waiting to retry")
    conn.execute(update(_campaign).where(_campaign.c.id == campaign_id)
                 .values(status=CampaignStatus.FINISHED))
    return Refusal("finished")


# --- sending one claim -------------------------------------------------------------


def deliver(engine: Engine, settings: Settings, transport: Transport, claim: Claim,
            lease: leases.Lease | None = None, clock: Callable[[], datetime] = utcnow) -> Result:
    """Render, re-check ownership, talk SMTP and record what happened to one claim."""
    try:
        msg, sender, recipient = _compose(engine, settings, claim)
    except Exception as exc:  # noqa: BLE001 - a template or data problem, not the lead's fault
        # Certainly not sent: keep the lead for a retry and pause the campaign, so one bad
        # template does not burn through the list while nobody is looking.
        log.exception("cannot build message for send_log %s", claim.send_log_id)
        result = Result(SendStatus.RETRY, f"message not built: {exc}", config_error=True)
        record(engine, settings, claim, result, clock())
        return result
    if not _still_ours(engine, claim, lease, clock()):
        # We were frozen between claim and send and someone moved on; we sent nothing.
        _release(engine, settings, claim, clock())
        return Result(SendStatus.RETRY, "released before sending: claim or lease lost")
    try:
        result = transport.send(msg, sender, recipient)
    except Exception as exc:  # noqa: BLE001 - an unexpected transport error: cannot know
        log.exception("transport failed for send_log %s", claim.send_log_id)
        result = Result(SendStatus.UNKNOWN, f"transport error: {exc!r}")
    record(engine, settings, claim, result, clock())
    return result


def _compose(engine: Engine, settings: Settings, claim: Claim):
    with engine.connect() as conn:
        row = conn.execute(_COMPOSE, {"lead": claim.lead_id, "campaign": claim.campaign_id,
                                      "letter": claim.variant_letter}).one()
    url = unsubscribe_url(settings.base_url, settings.secret_key, row.email, claim.campaign_id)
    context = templating.lead_context(row, url)
    msg = messages.build_message(
        from_address=row.from_address, from_name=row.from_name,
        to_address=row.email, to_name=f"{row.first_name} {row.last_name}".strip(),
        subject=templating.render(row.subject, context),
        body=templating.render(row.body, context),
        msg_id=messages.message_id(claim.send_log_id, claim.campaign_id, row.from_address),
        unsubscribe_url=url,
    )
    return msg, row.from_address, row.email


# Everything one message needs, in one query (built once: this is the hot path).
_COMPOSE = (
    select(_lead.c.email, _lead.c.first_name, _lead.c.last_name, _lead.c.company, _lead.c.tags,
           _lead.c.fields, _campaign.c.from_address, _campaign.c.from_name, _variant.c.subject,
           _variant.c.body)
    .select_from(_lead.join(_campaign, _campaign.c.id == bindparam("campaign"))
                 .join(_variant, (_variant.c.campaign_id == _campaign.c.id)
                       & (_variant.c.letter == bindparam("letter"))))
    .where(_lead.c.id == bindparam("lead"))
)


# The outcome, stored only while the claim token matches. `unknown` is accepted too: the
# sweep may have judged us dead while we were merely slow; a definite answer from the
# server is better than a guess.
# The claim token: this row, claimed by this worker at this attempt (see _token).
_OURS = (_log.c.id == bindparam("log_id"), _log.c.worker == bindparam("token_worker"),
         _log.c.attempts == bindparam("token_attempts"))
_OUTCOME = (
    update(_log)
    .where(*_OURS, _log.c.status.in_([SendStatus.SENDING, SendStatus.UNKNOWN]))
    .values(status=bindparam("new_status"), smtp_reply=bindparam("reply"), sent_at=bindparam("sent"),
            next_attempt_at=bindparam("next"), message_id=bindparam("message_id"))
)
_STATUS_IF_OURS = select(_log.c.status).where(*_OURS)
# Certainly not sent (we never reached SMTP), so back to retry, even from `unknown`.
_PUT_BACK = (
    update(_log).where(*_OURS, _log.c.status.in_([SendStatus.SENDING, SendStatus.UNKNOWN]))
    .values(status=SendStatus.RETRY, next_attempt_at=bindparam("now"),
            smtp_reply="released before sending: claim or lease lost")
)
_FROM_ADDRESS = select(_campaign.c.from_address).where(_campaign.c.id == bindparam("campaign"))
_ENROLLMENT_STATE = update(_enrollment).where(
    _enrollment.c.campaign_id == bindparam("campaign"), _enrollment.c.lead_id == bindparam("lead")
).values(state=bindparam("new_state"))
_NO_FAILURES = update(_campaign).where(
    _campaign.c.id == bindparam("campaign"), _campaign.c.consecutive_failures != 0
).values(consecutive_failures=0)


def _token(claim: Claim) -> dict[str, Any]:
    return {"log_id": claim.send_log_id, "token_worker": claim.worker, "token_attempts": claim.attempts}



def _still_ours(engine: Engine, claim: Claim, lease: leases.Lease | None, now: datetime) -> bool:
    with engine.connect() as conn, conn.begin():
        status = conn.execute(_STATUS_IF_OURS, _token(claim)).scalar()
        if status != SendStatus.SENDING:
            return False
        return lease is None or leases.is_current(conn, lease, now)


def _release(engine: Engine, settings: Settings, claim: Claim, now: datetime) -> None:
    _until_stored(settings, claim, lambda: _put_back(engine, claim, now))


def _put_back(engine: Engine, claim: Claim, now: datetime) -> None:
    with immediate(engine) as conn:
        conn.execute(_PUT_BACK, {**_token(claim), "now": now})
        _set_enrollment(conn, claim, EnrollmentState.SENDING)


def record(engine: Engine, settings: Settings, claim: Claim, result: Result, now: datetime) -> None:
    """Store the outcome of one attempt on its own row, if the row is still ours."""
    status = result.status
    if status == SendStatus.RETRY and claim.attempts >= settings.max_attempts:
        status = SendStatus.FAILED
    backoff = timedelta(seconds=settings.retry_base_seconds * 2 ** (claim.attempts - 1))
    values: dict[str, Any] = {
        "new_status": status, "reply": result.reply[:2000],
        "sent": now if status == SendStatus.SENT else None,
        "next": now + backoff if status == SendStatus.RETRY else None,
    }
    _until_stored(settings, claim, lambda: _store(engine, settings, claim, result, status, values, now))


def _store(engine: Engine, settings: Settings, claim: Claim, result: Result, status: SendStatus,
           values: dict[str, Any], now: datetime) -> None:
    with immediate(engine) as conn:
        values["message_id"] = messages.message_id(
            claim.send_log_id, claim.campaign_id, _from_address(conn, claim.campaign_id))
        changed = conn.execute(_OUTCOME, {**values, **_token(claim)}).rowcount
        if changed != 1:
            log.warning("send_log %s was resolved elsewhere; outcome %s not stored",
                        claim.send_log_id, status)
            return
        _set_enrollment(conn, claim, _FINAL_STATE[status])
        if result.suppress:
            suppress(conn, _email_of(conn, claim.lead_id), "bounce", result.reply, now)
        _count_failures(conn, settings, claim.campaign_id, status, result)


def _until_stored(settings: Settings, claim: Claim, write: Callable[[], None]) -> None:
    """Run an outcome write, waiting out other writers for up to the stale limit.

    The server has already answered: giving up on "database is locked" (a process that
    stalls holding the write lock past busy_timeout) would turn a known outcome into
    `unknown`. Retrying is safe: the write is guarded by the claim token.
    """
    deadline = time.monotonic() + settings.stale_seconds
    delay = 0.05
    while True:
        try:
            return write()
        except OperationalError as exc:
            busy = getattr(exc.orig, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
            if not busy or time.monotonic() + delay > deadline:
                raise
            log.warning("send_log %s: database busy, outcome not stored yet; retrying",
                        claim.send_log_id)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _from_address(conn: Connection, campaign_id: int) -> str:
    return conn.execute(_FROM_ADDRESS, {"campaign": campaign_id}).scalar_one()


def _email_of(conn: Connection, lead_id: int) -> str:
    return conn.execute(select(_lead.c.email).where(_lead.c.id == lead_id)).scalar_one()


def _set_enrollment(conn: Connection, claim: Claim, state: EnrollmentState) -> None:
    conn.execute(_ENROLLMENT_STATE, {"campaign": claim.campaign_id, "lead": claim.lead_id,
                                     "new_state": state})


def _count_failures(conn: Connection, settings: Settings, campaign_id: int,
                    status: SendStatus, result: Result) -> None:
    # Like listmonk's OnError: failures in a row mean the sender is broken (bad
    # credentials, server down), not the leads. A refused recipient does not count.
    where = _campaign.c.id == campaign_id
    if status == SendStatus.SENT:
        conn.execute(_NO_FAILURES, {"campaign": campaign_id})
        return
    if result.suppress:
        return
    failures = conn.execute(update(_campaign).where(where)
                            .values(consecutive_failures=_campaign.c.consecutive_failures + 1)
                            .returning(_campaign.c.consecutive_failures)).scalar_one()
    if result.config_error or failures >= settings.pause_after_failures:
        reason = (result.reply if result.config_error
                  else f"{failures} failed sends in a row; last: {result.reply}")[:1000]
        conn.execute(update(_campaign).where(where, _campaign.c.status == CampaignStatus.ACTIVE)
                     .values(status=CampaignStatus.PAUSED, pause_reason=reason))
        log.error("campaign %s paused: %s", campaign_id, reason)


# --- batches, ticks, recovery ------------------------------------------------------


def send_batch(engine: Engine, settings: Settings, transport: Transport, campaign_id: int,
               trigger: Trigger, *, lease: leases.Lease | None = None, limit: int | None = None,
               once_key: str | None = None, clock: Callable[[], datetime] = utcnow) -> BatchResult:
    """Claim and send up to `limit` (default: the campaign's batch size) messages.

    `once_key` (the button's one-time key) is consumed by the batch's first claim.
    """
    if limit is None:
        with engine.connect() as conn:
            limit = conn.execute(select(_campaign.c.batch_size)
                                 .where(_campaign.c.id == campaign_id)).scalar() or 1
    batch = BatchResult()
    for _ in range(limit):
        claim = claim_next(engine, settings, campaign_id, trigger, clock(), lease, once_key)
        once_key = None
        if isinstance(claim, Refusal):
            batch.stopped_by = claim
            break
        batch.outcomes.append((claim, deliver(engine, settings, transport, claim, lease, clock)))
    return batch


def tick(engine: Engine, settings: Settings, transport: Transport, lease: leases.Lease,
         trigger: Trigger = Trigger.SCHEDULER, campaign_id: int | None = None,
         clock: Callable[[], datetime] = utcnow) -> dict[int, BatchResult]:
    """One bounded pass for the lease holder: recover, then one batch per due campaign."""
    recover(engine, settings, clock())
    with engine.connect() as conn:
        query = select(_campaign.c.id).where(_campaign.c.status == CampaignStatus.ACTIVE)
        if campaign_id is not None:
            query = query.where(_campaign.c.id == campaign_id)
        ids = conn.execute(query.order_by(_campaign.c.id)).scalars().all()
    results = {}
    try:
        for cid in ids:
            results[cid] = send_batch(engine, settings, transport, cid, trigger,
                                      lease=lease, clock=clock)
            if results[cid].stopped_by and results[cid].stopped_by.code == "lease_lost":
                break
    finally:
        transport.close()
    return results


def recover(engine: Engine, settings: Settings, now: datetime) -> int:
    """Turn `sending` rows whose worker died or went silent into `unknown`; never re-send."""
    cutoff = now - timedelta(seconds=settings.stale_seconds)
    with immediate(engine) as conn:
        rows = conn.execute(select(_log.c.id, _log.c.worker, _log.c.attempts, _log.c.claimed_at,
                                   _log.c.campaign_id, _log.c.lead_id)
                            .where(_log.c.status == SendStatus.SENDING)).all()
        stale = [r for r in rows if r.claimed_at < cutoff or leases.is_dead_here(r.worker)]
        for row in stale:
            why = "worker gone" if leases.is_dead_here(row.worker) else "no outcome in time"
            conn.execute(update(_log).where(_log.c.id == row.id, _log.c.status == SendStatus.SENDING)
                         .values(status=SendStatus.UNKNOWN,
                                 smtp_reply=f"unknown: {why} ({row.worker}); not re-sent"))
            claim = Claim(row.id, row.campaign_id, row.lead_id, "", row.attempts, row.worker)
            _set_enrollment(conn, claim, EnrollmentState.UNKNOWN)
    for row in stale:
        log.warning("send_log %s marked unknown (worker %s)", row.id, row.worker)
    return len(stale)


def resolve_unknown(engine: Engine, send_log_id: int, action: str, who: str,
                    now: datetime | None = None) -> bool:
    """A person's decision on an `unknown` send: "mark-sent" or "send-again"."""
    if action not in ("mark-sent", "send-again"):
        raise ValueError(f"unknown action {action!r}")
    now = now or utcnow()
    sent = action == "mark-sent"
    with immediate(engine) as conn:
        row = conn.execute(select(_log).where(_log.c.id == send_log_id,
                                              _log.c.status == SendStatus.UNKNOWN)).first()
        if row is None:
            return False
        conn.execute(update(_log).where(_log.c.id == send_log_id).values(
            status=SendStatus.SENT if sent else SendStatus.RETRY, decided_by=who,
            next_attempt_at=None if sent else now, sent_at=now if sent else None))
        claim = Claim(row.id, row.campaign_id, row.lead_id, row.variant_letter, row.attempts, row.worker)
        _set_enrollment(conn, claim, EnrollmentState.SENT if sent else EnrollmentState.SENDING)
        if not sent:  # a finished campaign must wake up to send it
            conn.execute(update(_campaign).where(_campaign.c.id == row.campaign_id,
                                                 _campaign.c.status == CampaignStatus.FINISHED)
                         .values(status=CampaignStatus.ACTIVE))
    return True
