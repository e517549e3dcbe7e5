"""Read-only figures for the pages: progress per campaign, send log rows, the scheduler's state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session

from delivery import lease as leases
from models import (
    AppMeta,
    Campaign,
    CampaignStateCount,
    CampaignStatus,
    ClaimHeartbeat,
    Lead,
    SchedulerLease,
    SendLog,
    SendStatus,
)
from storage.revision import HEAD, current_revision
from storage.timeutil import utcnow


@dataclass
class Progress:
    total: int = 0
    pending: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0
    last_sent_at: datetime | None = None
    next_due_at: datetime | None = None

    @property
    def done_percent(self) -> int:
        finished = self.sent + self.failed + self.unknown + self.skipped
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
    for c in campaigns:
        if c.status == CampaignStatus.ACTIVE:
            last = c.last_claim_at
            result[c.id].next_due_at = last + timedelta(seconds=c.interval_seconds) if last else utcnow()
    return result


# What a send log table shows (templates/_sendlog_table.html), with the lead's address and
# the last heartbeat of the row's claim (whether a person may decide an `unknown` row yet).
SEND_ROW_COLUMNS = (SendLog.id, SendLog.lead_id, SendLog.variant_letter, SendLog.status, SendLog.attempts,
                    SendLog.trigger, SendLog.worker, SendLog.claimed_at, SendLog.smtp_reply,
                    SendLog.decided_by, Lead.email, ClaimHeartbeat.beat_at, SendLog.campaign_id)


def send_rows(session: Session, conditions: tuple, limit: int, offset: int = 0) -> list:
    """Send log rows matching `conditions`, newest first, each with its lead's email: one
    query, plain rows (ORM objects for 50 rows and their leads cost more than the SQL)."""
    return session.execute(select(*SEND_ROW_COLUMNS).outerjoin(Lead, Lead.id == SendLog.lead_id)
                           .outerjoin(ClaimHeartbeat, leases.claim_beat())
                           .where(*conditions).order_by(SendLog.id.desc())
                           .limit(limit).offset(offset)).all()


def unknown_rows(session: Session) -> list:
    """Every `unknown` send, oldest first, as send_rows shows them."""
    return list(reversed(send_rows(session, (SendLog.status == SendStatus.UNKNOWN,), limit=-1)))


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
