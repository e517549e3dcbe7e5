"""The timeline of SendOnce's own send_log, computed in SQL so a million rows stay fast.

Two ways to the same Analysis and chart:
- from the hourly summary (table timeline_hour, kept by storage/schema.py's triggers;
  summary_analyse and summary_buckets below) when it is installed and send_log's unique
  index makes duplicates impossible: a few thousand summary rows, plus send_log through
  its claimed_at indexes for the exact first and last send, partial hours at a range's edges and minute bars;
- live (below), for a database without the summary or without that index (a legacy
  or forensic copy): GROUP BY queries over send_log; only the events of duplicated keys
  and the most recent sends for the median interval are read into Python, where
  timeline/analysis.py judges them.

A "send" here is a send_log row that went out or may have: status `sent` or `unknown`,
at its latest claim time (when SMTP started).

The summary path is only used when summary_usable(): send_log's unique index then rules out
duplicates, so every distinct count equals the number of sends and there are no
duplicate groups, histogram or clusters. What is left are counts per hour, which the
summary holds, and a few exact figures read from send_log through its indexes:
- a range whose from/to is not on the hour: its partial first and last hours;
- the first and last send: within the first and last non-empty hour (or minute);
- minute bars (a span of six hours at most);
- the median interval over the most recent sends (median_interval).

The page's statements are built once per scope and kept (the lru_cache'd *_query functions):
building a Core statement costs 80 µs and more, longer than most of the summary's queries
take to run, and a statement built for a scope never changes (its values are bound parameters).
"""

from __future__ import annotations

import operator
import statistics
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache

from sqlalchemy import Select, String, and_, func, inspect, literal_column, select, type_coerce
from sqlalchemy.engine import Connection

from models import Campaign, Lead, SendLog, timeline_hour
from storage.database import is_postgres
from storage.schema import HOUR_FORMAT, SENT, summary_usable
from storage.sqlfunc import middle_values, text_agg, time_label, unindexed
from timeline.analysis import Analysis, Bucket, SendEvent, Totals
from timeline.analysis import analyse as analyse_events
from timeline.analysis import bucket as bucket_events

MEDIAN_SAMPLE = 10_000  # the median interval is taken over the most recent sends
MAX_DUPLICATE_KEYS = 1_000


@dataclass(frozen=True)
class Scope:
    campaign_id: int | None = None
    start: datetime | None = None
    end: datetime | None = None

    def where(self, by_time: bool = False) -> list:
        """The scope's conditions on send_log.

        by_time: for a query that should walk a claimed_at index (ORDER BY claimed_at,
        or a claimed_at range): on SQLite the status test is written as an expression,
        which no index can serve (storage.sqlfunc.unindexed). Without ANALYZE statistics
        -- a database init-db made and the engine grew has none -- SQLite otherwise takes
        ix_send_log_status for `status IN (...)` and sorts or filters every send, seconds
        at a million rows.
        """
        status = unindexed(SendLog.status) if by_time else SendLog.status
        conditions = [status.in_(SENT)]
        if self.campaign_id is not None:
            conditions.append(SendLog.campaign_id == self.campaign_id)
        if self.start is not None:
            conditions.append(SendLog.claimed_at >= self.start)
        if self.end is not None:
            conditions.append(SendLog.claimed_at < self.end)
        return conditions


def analyse(conn: Connection, scope: Scope) -> Analysis:
    """The same Analysis timeline.analysis.analyse gives, from the summary when it can stand in."""
    if summary_usable(conn):
        return summary_analyse(conn, scope)
    return live_analyse(conn, scope)


def buckets(conn: Connection, scope: Scope, minutes: int, duplicates: list[SendEvent]) -> list[Bucket]:
    """The chart's bars; from the summary when it can stand in (then there are no duplicates)."""
    if not duplicates and summary_usable(conn):
        return summary_buckets(conn, scope, minutes)
    return live_buckets(conn, scope, minutes, duplicates)


def overview(conn: Connection, scope: Scope) -> tuple[Analysis, int, list[Bucket]]:
    """The Analysis, the chart's bucket width in minutes and its bars, for the page.

    Asks once whether the summary can stand in, so both halves come from the same source.
    """
    if summary_usable(conn):
        analysis = summary_analyse(conn, scope)
        minutes = bucket_minutes(analysis.first_send_at, analysis.last_send_at)
        return analysis, minutes, summary_buckets(conn, scope, minutes)
    analysis = live_analyse(conn, scope)
    minutes = bucket_minutes(analysis.first_send_at, analysis.last_send_at)
    duplicates = [SendEvent(at, g.campaign, g.lead, g.variant, step=g.step)
                  for g in analysis.duplicate_groups for at in g.times]
    return analysis, minutes, live_buckets(conn, scope, minutes, duplicates)


def _count(conn: Connection, *conditions) -> int:
    return conn.execute(select(func.count()).select_from(SendLog).where(*conditions)).scalar_one()


def _distinct(conn: Connection, columns: list, conditions: list) -> int:
    grouped = select(literal_column("1")).where(*conditions).group_by(*columns).subquery()
    return conn.execute(select(func.count()).select_from(grouped)).scalar_one()


def _keys(conn: Connection) -> tuple[list, list]:
    """The exact key (campaign, lead, step, variant) and the recipient's (campaign, lead, step):
    two steps of a sequence are two mails, never a duplicate (#17). A send_log without a step
    column (a copy from before revision 0008, a forensic table) has one message a lead."""
    if any(c["name"] == "step" for c in inspect(conn).get_columns("send_log")):
        return [SendLog.campaign_id, SendLog.lead_id, SendLog.step, SendLog.variant_letter], \
            [SendLog.campaign_id, SendLog.lead_id, SendLog.step]
    return [SendLog.campaign_id, SendLog.lead_id, SendLog.variant_letter], \
        [SendLog.campaign_id, SendLog.lead_id]


def duplicate_events(conn: Connection, scope: Scope) -> list[SendEvent]:
    """Every send of every key sent more than once (empty while the unique index holds)."""
    key = _keys(conn)[0]
    keys = select(*key).where(*scope.where()).group_by(*key).having(func.count() > 1) \
        .limit(MAX_DUPLICATE_KEYS).subquery()
    rows = conn.execute(select(SendLog.claimed_at, *key, SendLog.trigger, SendLog.worker)
                        .join(keys, and_(*(c == keys.c[c.name] for c in key))).where(*scope.where()))
    return [_event(row) for row in rows]


def _event(row) -> SendEvent:
    step = getattr(row, "step", None)
    return SendEvent(row.claimed_at, str(row.campaign_id), str(row.lead_id), row.variant_letter,
                     row.trigger, row.worker, "" if step is None else str(step))


def median_interval(conn: Connection, scope: Scope) -> float | None:
    """Median gap in seconds between consecutive sends of a campaign, over the most recent sends.

    Ties in claimed_at are broken by id so the sample is the same every time. Only the
    middle one or two gaps are converted: the result is the float timedelta.total_seconds()
    and statistics.median give (total_seconds preserves the order). PostgreSQL finds them
    itself; SQLite hands the times to Python (_middle_gaps_in_python).
    """
    if is_postgres(conn):
        middle = conn.execute(_middle_gaps_query(scope, MEDIAN_SAMPLE)).scalar()
    else:
        middle = _middle_gaps_in_python(conn, scope)
    return statistics.median([gap.total_seconds() for gap in middle]) if middle else None


def _recent(scope: Scope, sample: int):
    """The median's sample: the scope's `sample` most recent sends (campaign_id, at)."""
    return select(SendLog.campaign_id, SendLog.claimed_at.label("at")).where(*scope.where(by_time=True)) \
        .order_by(SendLog.claimed_at.desc(), SendLog.id.desc()).limit(sample).subquery()


@lru_cache(maxsize=256)
def _middle_gaps_query(scope: Scope, sample: int) -> Select:
    """The middle gap(s) of the sample, found by the database (PostgreSQL): each send's gap to
    the next one of its campaign (lag over the campaign's sends newest first, the order the
    sample is read in), and the middle of them in order (storage.sqlfunc.middle_values).
    10,000 times never cross to Python, where parsing and sorting them cost more than this query."""
    recent = _recent(scope, sample)
    later = func.lag(recent.c.at).over(partition_by=recent.c.campaign_id, order_by=recent.c.at.desc())
    gaps = select((later - recent.c.at).label("gap")).subquery()
    return select(middle_values(gaps.c.gap))


@lru_cache(maxsize=256)
def _times_query(scope: Scope, sample: int) -> Select:
    """Each campaign's times in the sample as one comma-joined text."""
    recent = _recent(scope, sample)
    # Fed to text_agg newest first, the order the sample is read in. Neither database
    # promises that order inside text_agg, hence sorted() below; it costs one pass when it holds.
    in_order = select(recent.c.campaign_id, type_coerce(recent.c.at, String).label("at")) \
        .order_by(recent.c.campaign_id, recent.c.at.desc()).subquery()
    return select(text_agg(in_order.c.at, ",")).group_by(in_order.c.campaign_id)


def _middle_gaps_in_python(conn: Connection, scope: Scope) -> list[timedelta]:
    """The middle gap(s) of the sample, found in Python (SQLite: its window functions over text
    times cost about three times this). Each campaign's times cross as one comma-joined text
    and are parsed and subtracted by C-level map() calls: 10,000 SQLAlchemy rows and a Python
    loop over them cost more than the query."""
    gaps: list[timedelta] = []
    for text in conn.execute(_times_query(scope, MEDIAN_SAMPLE)).scalars():
        times = sorted(map(datetime.fromisoformat, text.split(",")), reverse=True)
        gaps += map(operator.sub, times, times[1:])
    gaps.sort()
    return gaps[(len(gaps) - 1) // 2:len(gaps) // 2 + 1]  # one gap, or the two middle ones


def live_analyse(conn: Connection, scope: Scope) -> Analysis:
    """The Analysis from GROUP BY queries over send_log (any schema shaped like it)."""
    where = scope.where()
    total, first, last = conn.execute(select(func.count(), func.min(SendLog.claimed_at),
                                             func.max(SendLog.claimed_at)).where(*where)).one()
    dup_analysis = analyse_events(duplicate_events(conn, scope))
    exact, recipient = _keys(conn)
    unique_keys = _distinct(conn, exact, where)
    duplicates = total - unique_keys
    split = dup_analysis.split_at  # the first repeated key's first send
    before = _count(conn, *where, SendLog.claimed_at < split) if split else total
    unique_leads = _distinct(conn, recipient, where)
    return Analysis(
        total_sends=total, unique_keys=unique_keys,
        unique_leads=unique_leads, duplicate_sends=duplicates,
        duplicate_groups=dup_analysis.duplicate_groups, first_duplicate_at=dup_analysis.first_duplicate_at,
        before=Totals(before, before, 0),
        after=Totals(total - before, total - before - duplicates, duplicates),
        duplicate_second_histogram=dup_analysis.duplicate_second_histogram,
        median_interval_seconds=median_interval(conn, scope),
        clusters=dup_analysis.clusters, first_send_at=first, last_send_at=last,
        cluster_seconds=dup_analysis.cluster_seconds, split_at=split,
        other_view_duplicates=total - unique_leads,  # the recipient view: (campaign, lead, step)
        bursts=[replace(b, sends=_count(conn, *where, SendLog.campaign_id == int(b.campaign),
                                        SendLog.claimed_at.between(b.start, b.end)))
                for b in dup_analysis.bursts],  # a burst's sends include those of unrepeated keys
    )


FORMATS = {1: "%Y-%m-%d %H:%M", 60: "%Y-%m-%d %H:00", 1440: "%Y-%m-%d 00:00"}


def bucket_minutes(first: datetime | None, last: datetime | None) -> int:
    """Minute buckets for up to six hours, hour buckets up to three weeks, else days."""
    span = (last - first) if first and last else timedelta(0)
    if span <= timedelta(hours=6):
        return 1
    return 60 if span <= timedelta(days=21) else 1440


def bucket_rows(conn: Connection, scope: Scope, minutes: int, by_time: bool = False):
    """(bucket label, trigger, sends) grouped in SQL over send_log, in label order."""
    return conn.execute(_bucket_rows_query(scope, minutes, by_time)).all()


@lru_cache(maxsize=256)
def _bucket_rows_query(scope: Scope, minutes: int, by_time: bool) -> Select:
    label = time_label(SendLog.claimed_at, FORMATS[minutes])
    return select(label, SendLog.trigger, func.count()).where(*scope.where(by_time)) \
        .group_by(label, SendLog.trigger).order_by(label)


def to_buckets(rows, dup_buckets: dict[datetime, int] | None = None) -> list[Bucket]:
    """Bars from (label, trigger, sends) rows; labels are 'YYYY-MM-DD HH:MM' (any order)."""
    dup_buckets = dup_buckets or {}
    by_start: dict[str, dict[str, int]] = {}
    for label, trigger, count in rows:
        triggers = by_start.setdefault(label, {})
        triggers[trigger] = triggers.get(trigger, 0) + count
    result = []
    for label in sorted(by_start):
        start = datetime.fromisoformat(label)
        triggers = by_start[label]
        result.append(Bucket(start, sum(triggers.values()), dup_buckets.get(start, 0), triggers))
    return result


def live_buckets(conn: Connection, scope: Scope, minutes: int, duplicates: list[SendEvent]) -> list[Bucket]:
    """Sends per bucket and trigger, grouped in SQL; duplicate counts from the few dup events."""
    dup_buckets = {b.start: b.duplicates for b in bucket_events(duplicates, minutes) if b.duplicates}
    return to_buckets(bucket_rows(conn, scope, minutes), dup_buckets)


_EVENT_COLUMNS = (SendLog.claimed_at, SendLog.campaign_id, Lead.email, SendLog.variant_letter,
                  SendLog.status, SendLog.trigger, SendLog.worker)


def events_page(conn: Connection, scope: Scope, page: int, size: int) -> list:
    """One page of the event table, newest first, with each lead's address and its campaign's
    name (`campaign_name`; None for a campaign deleted since)."""
    return conn.execute(_events_page_query(scope, page, size)).all()


@lru_cache(maxsize=256)
def _events_page_query(scope: Scope, page: int, size: int) -> Select:
    return select(*_EVENT_COLUMNS, Campaign.name.label("campaign_name")) \
        .join(Lead, Lead.id == SendLog.lead_id).outerjoin(Campaign, Campaign.id == SendLog.campaign_id) \
        .where(*scope.where(by_time=True)).order_by(SendLog.claimed_at.desc(), SendLog.id.desc()) \
        .limit(size).offset((page - 1) * size)


def all_events(conn: Connection, scope: Scope):
    """Every event in the scope, oldest first, streamed (for the CSV export)."""
    return conn.execution_options(yield_per=2000).execute(
        select(*_EVENT_COLUMNS).join(Lead, Lead.id == SendLog.lead_id).where(*scope.where(by_time=True))
        .order_by(SendLog.claimed_at, SendLog.id))


# --- From the hourly summary ---

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
        parts.append((conn.execute(_hours_total_query(scope, split.hours)).one(), HOUR))
    for edge in split.edges:
        parts.append((conn.execute(_edge_total_query(edge)).one(), MINUTE))
    # The parts do not overlap, so the earliest slot holds the first send.
    cells = [cell for row, width in parts for cell in _span(*row, width)]
    if not cells:
        return 0, None, None
    total = sum(row[0] or 0 for row, _ in parts)
    return total, min(cells, key=lambda c: c.start), max(cells, key=lambda c: c.start)


@lru_cache(maxsize=256)
def _hours_total_query(scope: Scope, hours: tuple) -> Select:
    h = timeline_hour.c
    return select(func.sum(h.sends), func.min(h.hour), func.max(h.hour)).where(*_summary_where(scope, hours))


@lru_cache(maxsize=256)
def _edge_total_query(edge: Scope) -> Select:
    minute = time_label(SendLog.claimed_at, FORMATS[1])
    return select(func.count(), func.min(minute), func.max(minute)).where(*edge.where(by_time=True))


def _narrowed(scope: Scope, first: _Cell, last: _Cell) -> Scope:
    """The scope cut down to [first slot, end of last slot): a claimed_at index bounds the scan."""
    start = first.start if scope.start is None else max(first.start, scope.start)
    end = last.start + last.width if scope.end is None else min(last.start + last.width, scope.end)
    return Scope(scope.campaign_id, start, end)


def _within(scope: Scope, cell: _Cell) -> list:
    return _narrowed(scope, cell, cell).where(by_time=True)


def _first_and_last(conn: Connection, scope: Scope, first: _Cell, last: _Cell) -> tuple:
    """The exact claimed_at of the first and the last send, each looked up inside its slot."""
    return tuple(conn.execute(_first_and_last_query(scope, first, last)).one())


@lru_cache(maxsize=256)
def _first_and_last_query(scope: Scope, first: _Cell, last: _Cell) -> Select:
    at = SendLog.claimed_at
    earliest = select(at).where(*_within(scope, first)).order_by(at).limit(1).scalar_subquery()
    latest = select(at).where(*_within(scope, last)).order_by(at.desc()).limit(1).scalar_subquery()
    return select(earliest, latest)


def summary_analyse(conn: Connection, scope: Scope) -> Analysis:
    """The Analysis live_analyse gives, from the summary."""
    total, first_cell, last_cell = _totals(conn, scope, _split(scope))
    first, last = _first_and_last(conn, scope, first_cell, last_cell) if total else (None, None)
    nothing = analyse_events([])  # no duplicates: the duplicate figures of an empty log
    return Analysis(
        total_sends=total, unique_keys=total, unique_leads=total, duplicate_sends=0,
        duplicate_groups=[], first_duplicate_at=None,
        before=Totals(total, total, 0), after=Totals(0, 0, 0),
        duplicate_second_histogram={}, median_interval_seconds=median_interval(conn, scope),
        clusters=[], first_send_at=first, last_send_at=last, cluster_seconds=nothing.cluster_seconds,
        other_view_duplicates=0,  # the unique index holds: one row per (campaign, lead, step) too
    )


def _summary_label(minutes: int):
    """The bucket label of a summary row: its hour, or its day."""
    if minutes == 60:
        return timeline_hour.c.hour
    return func.substr(timeline_hour.c.hour, 1, 10).op("||")(" 00:00")


def summary_buckets(conn: Connection, scope: Scope, minutes: int) -> list[Bucket]:
    """The chart's bars: hours and days from the summary, minutes from send_log."""
    split = _split(scope)
    if minutes == 1:  # at most six hours of sends: read them where they are, within those hours
        _, first, last = _totals(conn, scope, split)
        return to_buckets(bucket_rows(conn, _narrowed(scope, first, last), 1, by_time=True)) if first else []
    rows = []
    if split.hours is not None:
        rows += conn.execute(_summary_buckets_query(scope, split.hours, minutes)).all()
    for edge in split.edges:
        rows += bucket_rows(conn, edge, minutes, by_time=True)
    return to_buckets(rows)


@lru_cache(maxsize=256)
def _summary_buckets_query(scope: Scope, hours: tuple, minutes: int) -> Select:
    label, h = _summary_label(minutes), timeline_hour.c
    return select(label, h.trigger, func.sum(h.sends)).where(*_summary_where(scope, hours)) \
        .group_by(label, h.trigger)
