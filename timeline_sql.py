"""The timeline of SendOnce's own send_log, computed in SQL so a million rows stay fast.

Totals, buckets and duplicate groups are GROUP BY queries over indexes; only the events
of duplicated keys (none, while the unique index holds) and the most recent sends for
the median interval are read into Python, where timeline.py judges them.

A "send" here is a send_log row that went out or may have: status `sent` or `unknown`,
at its latest claim time (when SMTP started).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from sqlalchemy import and_, func, literal_column, select
from sqlalchemy.engine import Connection

import timeline
from models import Lead, SendLog, SendStatus
from timeline import Analysis, Bucket, SendEvent, Totals

SENT = (SendStatus.SENT, SendStatus.UNKNOWN)
MEDIAN_SAMPLE = 10_000  # the median interval is taken over the most recent sends
MAX_DUPLICATE_KEYS = 1_000


@dataclass(frozen=True)
class Scope:
    campaign_id: int | None = None
    start: datetime | None = None
    end: datetime | None = None

    def where(self) -> list:
        conditions = [SendLog.status.in_(SENT)]
        if self.campaign_id is not None:
            conditions.append(SendLog.campaign_id == self.campaign_id)
        if self.start is not None:
            conditions.append(SendLog.claimed_at >= self.start)
        if self.end is not None:
            conditions.append(SendLog.claimed_at < self.end)
        return conditions


def _count(conn: Connection, *conditions) -> int:
    return conn.execute(select(func.count()).select_from(SendLog).where(*conditions)).scalar_one()


def _distinct(conn: Connection, columns: list, conditions: list) -> int:
    grouped = select(literal_column("1")).where(*conditions).group_by(*columns).subquery()
    return conn.execute(select(func.count()).select_from(grouped)).scalar_one()


_KEY = [SendLog.campaign_id, SendLog.lead_id, SendLog.variant_letter]


def duplicate_events(conn: Connection, scope: Scope) -> list[SendEvent]:
    """Every send of every key sent more than once (empty while the unique index holds)."""
    keys = select(*_KEY).where(*scope.where()).group_by(*_KEY).having(func.count() > 1) \
        .limit(MAX_DUPLICATE_KEYS).subquery()
    rows = conn.execute(select(SendLog.claimed_at, *_KEY, SendLog.trigger, SendLog.worker)
                        .join(keys, and_(*(c == keys.c[c.name] for c in _KEY))).where(*scope.where()))
    return [_event(row) for row in rows]


def _event(row) -> SendEvent:
    return SendEvent(row.claimed_at, str(row.campaign_id), str(row.lead_id), row.variant_letter,
                     row.trigger, row.worker)


def _median_interval(conn: Connection, scope: Scope) -> float | None:
    recent = conn.execute(select(SendLog.campaign_id, SendLog.claimed_at).where(*scope.where())
                          .order_by(SendLog.claimed_at.desc()).limit(MEDIAN_SAMPLE)).all()
    by_campaign: dict[int, list[datetime]] = {}
    for campaign_id, at in recent:
        by_campaign.setdefault(campaign_id, []).append(at)
    gaps = [(newer - older).total_seconds()
            for times in by_campaign.values() for newer, older in pairwise(times)]
    return statistics.median(gaps) if gaps else None


def analyse(conn: Connection, scope: Scope) -> Analysis:
    """The same Analysis timeline.analyse gives, from SQL aggregates."""
    where = scope.where()
    total, first, last = conn.execute(select(func.count(), func.min(SendLog.claimed_at),
                                             func.max(SendLog.claimed_at)).where(*where)).one()
    dup_analysis = timeline.analyse(duplicate_events(conn, scope))
    unique_keys = _distinct(conn, _KEY, where)
    duplicates = total - unique_keys
    split = dup_analysis.first_duplicate_at
    before = _count(conn, *where, SendLog.claimed_at < split) if split else total
    return Analysis(
        total_sends=total, unique_keys=unique_keys,
        unique_leads=_distinct(conn, _KEY[:2], where), duplicate_sends=duplicates,
        duplicate_groups=dup_analysis.duplicate_groups, first_duplicate_at=split,
        before=Totals(before, before, 0),
        after=Totals(total - before, total - before - duplicates, duplicates),
        duplicate_second_histogram=dup_analysis.duplicate_second_histogram,
        median_interval_seconds=_median_interval(conn, scope),
        clusters=dup_analysis.clusters, first_send_at=first, last_send_at=last,
        cluster_seconds=dup_analysis.cluster_seconds,
    )


_FORMATS = {1: "%Y-%m-%d %H:%M", 60: "%Y-%m-%d %H:00", 1440: "%Y-%m-%d 00:00"}


def bucket_minutes(first: datetime | None, last: datetime | None) -> int:
    """Minute buckets for up to six hours, hour buckets up to three weeks, else days."""
    span = (last - first) if first and last else timedelta(0)
    if span <= timedelta(hours=6):
        return 1
    return 60 if span <= timedelta(days=21) else 1440


def buckets(conn: Connection, scope: Scope, minutes: int, duplicates: list[SendEvent]) -> list[Bucket]:
    """Sends per bucket and trigger, grouped in SQL; duplicate counts from the few dup events."""
    label = func.strftime(_FORMATS[minutes], SendLog.claimed_at)
    rows = conn.execute(select(label, SendLog.trigger, func.count()).where(*scope.where())
                        .group_by(label, SendLog.trigger).order_by(label)).all()
    dup_buckets = {b.start: b.duplicates for b in timeline.bucket(duplicates, minutes) if b.duplicates}
    result: dict[datetime, Bucket] = {}
    for start_text, trigger, count in rows:
        start = datetime.strptime(start_text, "%Y-%m-%d %H:%M")
        old = result.get(start) or Bucket(start, 0, dup_buckets.get(start, 0), {})
        result[start] = Bucket(start, old.sends + count, old.duplicates, {**old.by_trigger, trigger: count})
    return [result[k] for k in sorted(result)]


_EVENT_COLUMNS = (SendLog.claimed_at, SendLog.campaign_id, Lead.email, SendLog.variant_letter,
                  SendLog.status, SendLog.trigger, SendLog.worker)


def events_page(conn: Connection, scope: Scope, page: int, size: int) -> list:
    """One page of the event table, newest first, with each lead's address."""
    return conn.execute(select(*_EVENT_COLUMNS).join(Lead, Lead.id == SendLog.lead_id)
                        .where(*scope.where()).order_by(SendLog.claimed_at.desc(), SendLog.id.desc())
                        .limit(size).offset((page - 1) * size)).all()


def all_events(conn: Connection, scope: Scope):
    """Every event in the scope, oldest first, streamed (for the CSV export)."""
    return conn.execution_options(yield_per=2000).execute(
        select(*_EVENT_COLUMNS).join(Lead, Lead.id == SendLog.lead_id).where(*scope.where())
        .order_by(SendLog.claimed_at, SendLog.id))
