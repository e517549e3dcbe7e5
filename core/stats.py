"""Read-only figures for the pages: progress per campaign, send log rows, the scheduler's state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, bindparam, func, literal, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from core import mailboxes
from delivery import lease as leases
from models import (
    AppMeta,
    Campaign,
    CampaignStateCount,
    CampaignStatus,
    CampaignStep,
    ClaimHeartbeat,
    Lead,
    SchedulerLease,
    SendLog,
    SendStatus,
    Suppression,
)
from storage.revision import HEAD, current_revision
from storage.timeutil import utcnow


@dataclass(frozen=True)
class NextSend:
    """When the scheduler will send next (UTC, None: not by itself) and why then.

    why: "due" (at the interval's end, or now when overdue), "outside_window" (at the next
    opening of the send window), "daily_cap" (the cap is reached: the first opening of a
    later day), "mailbox_limit" (every mailbox of the campaign is at its cap or in its gap:
    when the first frees up), "mailboxes_paused", "paused", "not_active".
    """

    at: datetime | None
    why: str


def next_send(campaign: Campaign, now: datetime, sent_today: int = 0) -> NextSend:
    """The scheduler's next send for a campaign as its claim would decide it (sender._check_campaign)."""
    if campaign.status == CampaignStatus.PAUSED:
        return NextSend(None, "paused")
    if campaign.status != CampaignStatus.ACTIVE:
        return NextSend(None, "not_active")
    tz = ZoneInfo(campaign.timezone)
    due = now
    if campaign.last_claim_at is not None:
        due = max(now, campaign.last_claim_at + timedelta(seconds=campaign.interval_seconds))
    local = due.replace(tzinfo=UTC).astimezone(tz)
    why = "due"
    if campaign.daily_cap is not None and sent_today >= campaign.daily_cap:
        local = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        why = "daily_cap"
    opening = _window_opening(campaign, local)
    if opening is None:
        return NextSend(None, "outside_window")
    if opening != local and why == "due":
        why = "outside_window"
    # A due time in the past would move with every page load: "now" is what it means.
    at = opening.astimezone(UTC).replace(tzinfo=None)
    return NextSend(at if at > now else now, why)


def _window_opening(campaign: Campaign, local: datetime) -> datetime | None:
    """The first moment at or after `local` inside the send window (None: the window is empty)."""
    days = {int(d) for d in campaign.window_weekdays.split(",") if d.strip()}
    start, end = campaign.window_start_hour, campaign.window_end_hour
    for offset in range(8):
        day = (local + timedelta(days=offset)).replace(hour=0, minute=0, second=0, microsecond=0)
        if day.weekday() not in days:
            continue
        opens = day.replace(hour=start)
        closes = day + timedelta(hours=end)  # end may be 24
        if offset == 0 and local >= closes:
            continue
        return max(opens, local) if offset == 0 else opens
    return None


@dataclass
class Progress:
    """A campaign's enrollments by counted state (storage.schema.counted_state) and its send times."""

    total: int = 0
    pending: int = 0  # not contacted yet (step 1 to send)
    waiting: int = 0  # got an earlier step, waits for the next one (#17): still open, not finished
    sending: int = 0
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0
    stopped: int = 0  # a sequence stopped (#17): a reply, a person
    last_sent_at: datetime | None = None
    next_due_at: datetime | None = None
    next_send: NextSend | None = None  # when the scheduler sends next, and why not sooner

    @property
    def unfinished(self) -> int:
        """Enrollments that may still get a message: not contacted, waiting or in flight."""
        return self.pending + self.waiting + self.sending

    @property
    def done_percent(self) -> int:
        finished = self.sent + self.failed + self.unknown + self.skipped + self.stopped
        return round(100 * finished / self.total) if self.total else 0


def _by_campaign(*columns, where) -> Select:
    """SELECT columns WHERE where.in_(:ids): built once, run with each request's ids."""
    return select(*columns).where(where.in_(bindparam("ids", expanding=True)))


_COUNTS = _by_campaign(CampaignStateCount.campaign_id, CampaignStateCount.state, CampaignStateCount.n,
                       where=CampaignStateCount.campaign_id)
# One statement for every campaign: a correlated max() is one probe of ix_send_log_last_sent
# each, where a GROUP BY would walk every sent row.
_LAST_SENT = _by_campaign(Campaign.id, select(func.max(SendLog.sent_at)).where(
    SendLog.campaign_id == Campaign.id, SendLog.status == SendStatus.SENT).scalar_subquery(),
    where=Campaign.id)


def progress(session: Session, campaigns: list[Campaign]) -> dict[int, Progress]:
    """Enrollment counts, last send and next due time for each campaign (two queries).

    The counts come from campaign_state_count, which triggers keep equal to a GROUP BY of
    campaign_lead (schema.py): ~6 rows a campaign instead of a scan of every enrollment.
    """
    result = {c.id: Progress() for c in campaigns}
    ids = {"ids": list(result)}
    for campaign_id, state, count in session.execute(_COUNTS, ids):
        setattr(result[campaign_id], state, count)
        result[campaign_id].total += count
    for campaign_id, at in session.execute(_LAST_SENT, ids):
        result[campaign_id].last_sent_at = at
    now = utcnow()
    linked = mailboxes.links(session.connection())
    usage = {u.id: u for u in mailboxes.overview(session.connection(), now)} if linked else {}
    for c in campaigns:
        result[c.id].next_send = next_send(c, now, _sent_today(session, c, now) if c.daily_cap else 0)
        if c.status == CampaignStatus.ACTIVE and c.id in linked:
            boxes = [usage[m] for m in linked[c.id]]
            result[c.id].next_send = _mailbox_wait(boxes, now, result[c.id].next_send)
        if c.status == CampaignStatus.ACTIVE:
            result[c.id].next_due_at = result[c.id].next_send.at
    return result


def _mailbox_wait(boxes: list[mailboxes.Usage], now: datetime, upcoming: NextSend) -> NextSend:
    """The campaign's next send, later if its mailboxes are all at their cap or in their gap
    (the claim checks them too: sender._ready_mailboxes), or never while all are paused."""
    if upcoming.at is None:
        return upcoming
    free = [at for at in (box.free_at(now) for box in boxes) if at is not None]
    if not free:
        return NextSend(None, "mailboxes_paused")
    if min(free) > upcoming.at:
        return NextSend(min(free), "mailbox_limit")
    return upcoming


def _sent_today(session: Session, campaign: Campaign, now: datetime) -> int:
    """Claims since local midnight in the campaign's zone: what the daily cap counts (sender._SENT_SINCE)."""
    local = now.replace(tzinfo=UTC).astimezone(ZoneInfo(campaign.timezone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC).replace(tzinfo=None)
    return session.scalar(select(func.count()).select_from(SendLog).where(
        SendLog.campaign_id == campaign.id, SendLog.created_at >= midnight))


# What a send log table shows (templates/_sendlog_table.html), with the lead's address and
# the last heartbeat of the row's claim (whether a person may decide an `unknown` row yet).
SEND_ROW_COLUMNS = (SendLog.id, SendLog.lead_id, SendLog.variant_letter, SendLog.status, SendLog.attempts,
                    SendLog.trigger, SendLog.worker, SendLog.claimed_at, SendLog.smtp_reply,
                    SendLog.decided_by, Lead.email, ClaimHeartbeat.beat_at, SendLog.campaign_id)


def send_rows(session: Session, conditions: tuple, limit: int | None, offset: int = 0) -> list:
    """Send log rows matching `conditions`, newest first, each with its lead's email: one
    query, plain rows (ORM objects for 50 rows and their leads cost more than the SQL).
    `limit` None: all of them."""
    return session.execute(select(*SEND_ROW_COLUMNS).outerjoin(Lead, Lead.id == SendLog.lead_id)
                           .outerjoin(ClaimHeartbeat, leases.claim_beat())
                           .where(*conditions).order_by(SendLog.id.desc())
                           .limit(limit).offset(offset)).all()


def unknown_rows(session: Session) -> list:
    """Every `unknown` send, oldest first, as send_rows shows them."""
    return list(reversed(send_rows(session, (SendLog.status == SendStatus.UNKNOWN,), limit=None)))


@dataclass
class SchedulerState:
    holder: str | None
    epoch: int
    heartbeat_at: datetime | None
    fresh: bool

    def as_json(self) -> dict:
        return {"holder": self.holder, "epoch": self.epoch, "fresh": self.fresh,
                "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None}


_LEASE = select(SchedulerLease.__table__).where(SchedulerLease.name == leases.LEASE_NAME)


def scheduler_state(session: Session) -> SchedulerState:
    """Who holds the lease now; `fresh` is False when nobody does or it has expired.

    Read through the page's own session (lease.current would check out a second
    connection and transaction for one row), so it shares the page's snapshot too.
    """
    row = session.execute(_LEASE).first()
    if row is None or not row.holder:
        return SchedulerState(None, row.epoch if row else 0, row.heartbeat_at if row else None, False)
    return SchedulerState(row.holder, row.epoch, row.heartbeat_at, row.expires_at > utcnow())


def operations_state(session: Session, now: datetime) -> dict[str, Any]:
    """What /healthz says about upkeep: the schema revision (and the code's) and the last backup."""
    conn = session.connection()
    taken = session.scalar(select(AppMeta.value).where(AppMeta.key == "last_backup_at"))
    age = None if taken is None else int((now - datetime.fromisoformat(taken)).total_seconds())
    return {"schema": current_revision(conn), "schema_expected": HEAD,
            "last_backup_at": taken, "last_backup_age_seconds": age}


@dataclass
class VariantResult:
    """One variant's outcome so far, keyed by (step, letter): step 1 until sequences exist."""

    step: int
    letter: str
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    unsubscribed: int = 0

    @property
    def unsubscribe_percent(self) -> float:
        return round(100 * self.unsubscribed / self.sent, 1) if self.sent else 0.0


# What the A/B table and the reply rates count; a send still `sending`/`retry` is neither yet.
COUNTED = (SendStatus.SENT, SendStatus.FAILED, SendStatus.UNKNOWN)
SendCounts = dict[tuple[int, str, str], int]  # (step, variant letter, status) -> sends


def send_counts(conn: Connection, campaign_id: int) -> SendCounts:
    """The campaign's sent, failed and unknown sends per (step, variant, status).

    A one-step campaign (most of them) is counted from ix_send_log_campaign_status_variant
    alone: its letters found by a skip scan, then each (status, letter) counted with every
    column of the index fixed. A GROUP BY over the same index entries compares or hashes
    every send's letter and status: ~3x the time on both databases (18 vs 6 ms at 100,000
    sends on PostgreSQL). No index has the step, so a sequence's counts read every send's row.
    The statements are built once (building them cost ~2 ms a page).
    """
    ids = {"campaign_id": campaign_id}
    if (conn.execute(_STEPS, ids).scalar() or 1) > 1:
        rows = conn.execute(_BY_STEP, ids)
        return {(step, letter, str(status)): n for step, letter, status, n in rows}
    found = conn.execute(_LETTERS, ids).all()
    if not found:
        return {}
    values = {f"status_{i}": status for i, (status, _letter) in enumerate(found)}
    values.update({f"letter_{i}": letter for i, (_status, letter) in enumerate(found)})
    counted = conn.execute(_counts(len(found)), {**ids, **values}).one()
    return {(1, letter, str(status)): n for (status, letter), n in zip(found, counted, strict=True)}


_CAMPAIGN = bindparam("campaign_id")
_STEPS = select(func.max(CampaignStep.position)).where(CampaignStep.campaign_id == _CAMPAIGN)
_BY_STEP = (select(SendLog.step, SendLog.variant_letter, SendLog.status, func.count())
            .where(SendLog.campaign_id == _CAMPAIGN, SendLog.status.in_(COUNTED))
            .group_by(SendLog.step, SendLog.variant_letter, SendLog.status))


def _first_letter(status, after=None):
    """The campaign's least letter with `status` (above `after`): one probe of the index."""
    later = () if after is None else (SendLog.variant_letter > after,)
    return (select(func.min(SendLog.variant_letter))
            .where(SendLog.campaign_id == _CAMPAIGN, SendLog.status == status, *later).scalar_subquery())


def _skip_scan() -> Select:
    """(status, letter) for every letter a COUNTED status has in the campaign, one index probe
    each (the least letter above the last). Its own statement, not a CTE under the counts:
    PostgreSQL then estimated ~300 letters, costed the counts past jit_above_cost and spent
    ~20 ms compiling them."""
    wanted = union_all(*(select(literal(s, SendLog.status.type).label("status")) for s in COUNTED)).subquery()
    letters = (select(wanted.c.status, _first_letter(wanted.c.status).label("letter"))
               .cte("letters", recursive=True))
    letters = letters.union_all(select(letters.c.status, _first_letter(letters.c.status, letters.c.letter))
                                .where(letters.c.letter.is_not(None)))
    return select(letters.c.status, letters.c.letter).where(letters.c.letter.is_not(None))


_LETTERS = _skip_scan()


@lru_cache(maxsize=32)
def _counts(pairs: int) -> Select:
    """One row of `pairs` counts, each (status_i, letter_i) a scalar subquery: one statement,
    and no UNION ALL, which gets a parallel plan on PostgreSQL whose workers cost more to
    start than they save."""
    return select(*(select(func.count()).where(
        SendLog.campaign_id == _CAMPAIGN, SendLog.status == bindparam(f"status_{i}"),
        SendLog.variant_letter == bindparam(f"letter_{i}")).scalar_subquery() for i in range(pairs)))


# An unsubscribe link names its campaign (web/unsubscribe.py: detail "campaign <id>"), and
# only a lead who was sent the campaign has the link: its send_log row knows the variant.
_UNSUBSCRIBED = (select(SendLog.variant_letter, func.count())
                 .join(Lead, Lead.id == SendLog.lead_id)
                 .join(Suppression, Suppression.email == Lead.email)
                 .where(SendLog.campaign_id == _CAMPAIGN, Suppression.reason == "unsubscribed",
                        Suppression.detail == bindparam("detail"))
                 .group_by(SendLog.variant_letter))


def variant_results(session: Session, campaign_id: int,
                    counts: SendCounts | None = None) -> list[VariantResult]:
    """Per-variant sent, failed, unknown and unsubscribed counts for A/B comparison (every
    step's sends of a letter together). counts: send_counts' result when the caller has it."""
    results: dict[str, VariantResult] = {}

    def row(letter: str) -> VariantResult:
        return results.setdefault(letter, VariantResult(1, letter))

    # From send_log alone: the campaign page must not scan a million enrollments.
    if counts is None:
        counts = send_counts(session.connection(), campaign_id)
    for (_step, letter, status), n in counts.items():
        setattr(row(letter), status, getattr(row(letter), status) + n)
    unsubscribed = session.execute(_UNSUBSCRIBED, {"campaign_id": campaign_id,
                                                   "detail": f"campaign {campaign_id}"})
    for letter, n in unsubscribed:
        row(letter).unsubscribed = n
    return [results[letter] for letter in sorted(results)]
