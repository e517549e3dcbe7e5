"""The timeline's Analysis and chart from the hourly summary (timeline_summary).

Only used when timeline_summary.usable(): send_log's unique index then rules out
duplicates, so every distinct count equals the number of sends and there are no
duplicate groups, histogram or clusters. What is left are counts per hour, which the
summary holds, and a few exact figures read from send_log through its indexes:
- a range whose from/to is not on the hour: its partial first and last hours;
- the first and last send: within the first and last non-empty hour (or minute);
- minute bars (a span of six hours at most);
- the median interval over the most recent sends (timeline_sql.median_interval).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

import timeline
from models import SendLog
from timeline import Analysis, Bucket, Totals
from timeline_sql import FORMATS, Scope, bucket_rows, median_interval, to_buckets
from timeline_summary import HOUR_FORMAT, timeline_hour

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class _Split:
    """A scope cut into whole UTC hours (read from the summary) and partial hours (send_log)."""

    hours: tuple[datetime | None, datetime | None] | None  # [from, to) of whole hours; None: none
    edges: list[Scope]  # at most two, each within one hour


def _floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _split(scope: Scope) -> _Split:
    lo = None if scope.start is None else _floor_hour(scope.start)
    if lo is not None and lo < scope.start:
        lo += HOUR  # the first whole hour
    hi = None if scope.end is None else _floor_hour(scope.end)
    if lo is not None and hi is not None and lo >= hi:  # no whole hour inside
        return _Split(None, [scope])
    edges = []
    if scope.start is not None and scope.start < lo:
        edges.append(Scope(scope.campaign_id, scope.start, lo))
    if scope.end is not None and hi < scope.end:
        edges.append(Scope(scope.campaign_id, hi, scope.end))
    return _Split((lo, hi), edges)


def _label(at: datetime) -> str:
    return at.strftime(HOUR_FORMAT)


def _summary_where(scope: Scope, hours: tuple[datetime | None, datetime | None]) -> list:
    conditions = [timeline_hour.c.sends > 0]
    if scope.campaign_id is not None:
        conditions.append(timeline_hour.c.campaign_id == scope.campaign_id)
    if hours[0] is not None:
        conditions.append(timeline_hour.c.hour >= _label(hours[0]))
    if hours[1] is not None:
        conditions.append(timeline_hour.c.hour < _label(hours[1]))
    return conditions


@dataclass(frozen=True)
class _Cell:
    """Where the first or last send lies: a time slot of known width."""

    start: datetime
    width: timedelta


def _span(count: int | None, first: str | None, last: str | None, width: timedelta) -> list[_Cell]:
    """The first and last slot of one part of the scope ('YYYY-MM-DD HH:MM' labels)."""
    if not count:
        return []
    return [_Cell(datetime.fromisoformat(first), width), _Cell(datetime.fromisoformat(last), width)]


def _totals(conn: Connection, scope: Scope, split: _Split) -> tuple[int, _Cell | None, _Cell | None]:
    """Sends in the scope, and the slots holding its first and its last send."""
    parts = []
    if split.hours is not None:
        h = timeline_hour.c
        row = conn.execute(select(func.sum(h.sends), func.min(h.hour), func.max(h.hour))
                           .where(*_summary_where(scope, split.hours))).one()
        parts.append((row, HOUR))
    minute = func.strftime(FORMATS[1], SendLog.claimed_at)
    for edge in split.edges:
        row = conn.execute(select(func.count(), func.min(minute), func.max(minute))
                           .where(*edge.where(by_time=True))).one()
        parts.append((row, MINUTE))
    # The parts do not overlap, so the earliest slot holds the first send.
    cells = [cell for row, width in parts for cell in _span(*row, width)]
    if not cells:
        return 0, None, None
    total = sum(row[0] or 0 for row, _ in parts)
    return total, min(cells, key=lambda c: c.start), max(cells, key=lambda c: c.start)


def _narrowed(scope: Scope, first: _Cell, last: _Cell) -> Scope:
    """The scope cut down to [first slot, end of last slot): a claimed_at index bounds the scan."""
    start = first.start if scope.start is None else max(first.start, scope.start)
    end = last.start + last.width if scope.end is None else min(last.start + last.width, scope.end)
    return Scope(scope.campaign_id, start, end)


def _within(scope: Scope, cell: _Cell) -> list:
    return _narrowed(scope, cell, cell).where(by_time=True)


def _first_and_last(conn: Connection, scope: Scope, first: _Cell, last: _Cell) -> tuple:
    """The exact claimed_at of the first and the last send, each looked up inside its slot."""
    at = SendLog.claimed_at
    earliest = select(at).where(*_within(scope, first)).order_by(at).limit(1).scalar_subquery()
    latest = select(at).where(*_within(scope, last)).order_by(at.desc()).limit(1).scalar_subquery()
    return tuple(conn.execute(select(earliest, latest)).one())


def analyse(conn: Connection, scope: Scope) -> Analysis:
    """The Analysis timeline_sql.live_analyse gives, from the summary."""
    total, first_cell, last_cell = _totals(conn, scope, _split(scope))
    first, last = _first_and_last(conn, scope, first_cell, last_cell) if total else (None, None)
    nothing = timeline.analyse([])  # no duplicates: the duplicate figures of an empty log
    return Analysis(
        total_sends=total, unique_keys=total, unique_leads=total, duplicate_sends=0,
        duplicate_groups=[], first_duplicate_at=None,
        before=Totals(total, total, 0), after=Totals(0, 0, 0),
        duplicate_second_histogram={}, median_interval_seconds=median_interval(conn, scope),
        clusters=[], first_send_at=first, last_send_at=last, cluster_seconds=nothing.cluster_seconds,
    )


def _summary_label(minutes: int):
    """The bucket label of a summary row: its hour, or its day."""
    if minutes == 60:
        return timeline_hour.c.hour
    return func.substr(timeline_hour.c.hour, 1, 10).op("||")(" 00:00")


def buckets(conn: Connection, scope: Scope, minutes: int) -> list[Bucket]:
    """The chart's bars: hours and days from the summary, minutes from send_log."""
    split = _split(scope)
    if minutes == 1:  # at most six hours of sends: read them where they are, within those hours
        _, first, last = _totals(conn, scope, split)
        return to_buckets(bucket_rows(conn, _narrowed(scope, first, last), 1, by_time=True)) if first else []
    rows = []
    if split.hours is not None:
        label, h = _summary_label(minutes), timeline_hour.c
        rows += conn.execute(select(label, h.trigger, func.sum(h.sends))
                             .where(*_summary_where(scope, split.hours)).group_by(label, h.trigger)).all()
    for edge in split.edges:
        rows += bucket_rows(conn, edge, minutes, by_time=True)
    return to_buckets(rows)
