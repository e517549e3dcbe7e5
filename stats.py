"""Read-only figures for the pages: progress per campaign and the scheduler's state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import lease as leases
from models import Campaign, CampaignLead, CampaignStatus, SendLog, SendStatus
from timeutil import utcnow


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


def progress(session: Session, campaigns: list[Campaign]) -> dict[int, Progress]:
    """Enrollment counts, last send and next due time for each campaign (two queries)."""
    result = {c.id: Progress() for c in campaigns}
    ids = list(result)
    for campaign_id, state, count in session.execute(
            select(CampaignLead.campaign_id, CampaignLead.state, func.count())
            .where(CampaignLead.campaign_id.in_(ids))
            .group_by(CampaignLead.campaign_id, CampaignLead.state)):
        setattr(result[campaign_id], state, count)
        result[campaign_id].total += count
    for campaign_id in ids:  # one index probe each (ix_send_log_last_sent), not a scan
        result[campaign_id].last_sent_at = session.scalar(
            select(func.max(SendLog.sent_at))
            .where(SendLog.campaign_id == campaign_id, SendLog.status == SendStatus.SENT))
    for c in campaigns:
        if c.status == CampaignStatus.ACTIVE:
            last = c.last_claim_at
            result[c.id].next_due_at = last + timedelta(seconds=c.interval_seconds) if last else utcnow()
    return result


@dataclass
class SchedulerState:
    holder: str | None
    epoch: int
    heartbeat_at: datetime | None
    fresh: bool

    def as_json(self) -> dict:
        return {"holder": self.holder, "epoch": self.epoch, "fresh": self.fresh,
                "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None}


def scheduler_state(engine) -> SchedulerState:
    """Who holds the lease now; `fresh` is False when nobody does or it has expired."""
    row = leases.current(engine)
    if row is None or not row.holder:
        return SchedulerState(None, row.epoch if row else 0, row.heartbeat_at if row else None, False)
    return SchedulerState(row.holder, row.epoch, row.heartbeat_at, row.expires_at > utcnow())
