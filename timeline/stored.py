"""Uploaded legacy logs, parsed and analysed once and kept (tables legacy_log, legacy_event).

A page view reads the stored analysis and one page of events by seq (0 = the newest send),
so it costs the same at 1,000 rows as at 1,000,000; re-parsing the upload on every view
cost seconds. Events are written in chunks, each its own short write transaction, so the
sender's claims never wait long for the lock; the log is marked ready after the last one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from models import LegacyEvent, LegacyLog
from storage.bulk import binder, executemany
from storage.database import immediate
from storage.timeutil import utcnow
from timeline.analysis import (
    Analysis,
    Bucket,
    SendEvent,
    analyse,
    bucket,
    buckets_from_list,
    buckets_to_list,
    from_dict,
    in_order,
    key_function,
    to_dict,
)
from timeline.legacy_log import ParseResult, Rejection
from timeline.live import bucket_minutes

CHUNK = 20_000  # events per write transaction: ~0.1 s of write lock
STORED_REJECTIONS = 1000  # rejected rows kept to show; their count by kind is always exact
_EVENT = LegacyEvent.__table__
_COLUMNS = ("log_id", "seq", "at", "campaign", "lead", "variant", "step", "trigger", "worker", "duplicate")


def summarise(parsed: ParseResult, analysis: Analysis, minutes: int, buckets: list[Bucket]) -> dict:
    """What a page needs besides the events: the analysis, the chart and how the file was read."""
    return {
        "analysis": to_dict(analysis), "groups_total": len(analysis.duplicate_groups),
        "minutes": minutes, "buckets": buckets_to_list(buckets),
        "format": parsed.format, "encoding": parsed.encoding, "delimiter": parsed.delimiter,
        "columns": parsed.columns, "rejected": len(parsed.rejections),
        "rejected_by_kind": parsed.rejected_by_kind(), "left_out": parsed.left_out,
        "rejections": [[r.line, r.kind, r.reason, r.params] for r in parsed.rejections[:STORED_REJECTIONS]],
    }


def save(engine: Engine, name: str, parsed: ParseResult, view: str) -> int:
    """Analyse the parsed log once and store it with its events; returns its id."""
    analysis = analyse(parsed.events, view=view)
    minutes = bucket_minutes(analysis.first_send_at, analysis.last_send_at)
    summary = summarise(parsed, analysis, minutes, bucket(parsed.events, minutes, view))
    with immediate(engine) as conn:
        log_id = conn.execute(insert(LegacyLog).values(
            name=name[:200], created_at=utcnow(), ready=False, events=analysis.total_sends,
            duplicate_sends=analysis.duplicate_sends, summary=summary)).inserted_primary_key[0]
    rows = _rows(log_id, parsed.events, view)
    while chunk := _take(rows, CHUNK):
        with immediate(engine) as conn:
            _insert(conn, chunk)
    with immediate(engine) as conn:
        conn.execute(update(LegacyLog).where(LegacyLog.id == log_id).values(ready=True))
    return log_id


def _take(rows: Iterator[tuple], n: int) -> list[tuple]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == n:
            break
    return chunk


def _rows(log_id: int, events: list[SendEvent], view: str) -> Iterator[tuple]:
    """Each event as a row, newest first (seq 0), with whether it repeats an earlier send."""
    key = key_function(view)
    ordered, seen, duplicate = in_order(events), set(), []
    for event in ordered:
        k = key(event)
        duplicate.append(k in seen)
        seen.add(k)
    for seq, index in enumerate(range(len(ordered) - 1, -1, -1)):
        e = ordered[index]
        yield (log_id, seq, e.at, e.campaign, e.lead, e.variant, e.step, e.trigger, e.worker,
               duplicate[index])


def _insert(conn: Connection, rows: list[tuple]) -> None:
    """The rows at the driver's speed: SQLAlchemy binding each row in Python costs ~25 µs a row."""
    convert = [binder(conn, _EVENT.c[name]) for name in _COLUMNS]
    executemany(conn, insert(LegacyEvent), [
        {name: f(value) for name, f, value in zip(_COLUMNS, convert, row, strict=True)} for row in rows])


def find(conn: Connection, log_id: int):
    """The stored log's row (its summary included), or None."""
    return conn.execute(select(LegacyLog.__table__).where(LegacyLog.id == log_id)).first()


def analysis_of(log) -> tuple[Analysis, int, list[Bucket]]:
    """The stored analysis, the chart's bucket width and its buckets."""
    summary = log.summary
    return from_dict(summary["analysis"]), summary["minutes"], buckets_from_list(summary["buckets"])


def rejections_of(log) -> list[Rejection]:
    """The first stored rejected rows, with their kinds (to word them in the reader's language)."""
    return [Rejection(line, kind, reason, params) for line, kind, reason, params in log.summary["rejections"]]


def seq_range(conn: Connection, log_id: int, since: datetime | None,
              until: datetime | None) -> tuple[int, int]:
    """The seq numbers [first, last) of the sends in [since, until) (seq grows as time goes back).

    Each end is two lookups in ix_legacy_event_at: the time at the edge, then its seq among
    the sends at that very time (they are contiguous in seq), never a scan of the range.
    """
    def edge(time_rule, pick_time, pick_seq) -> int | None:
        at = select(pick_time(LegacyEvent.at)).where(LegacyEvent.log_id == log_id,
                                                     *time_rule).scalar_subquery()
        return conn.execute(select(pick_seq(LegacyEvent.seq)).where(LegacyEvent.log_id == log_id,
                                                                     LegacyEvent.at == at)).scalar()

    newest = edge([LegacyEvent.at < until] if until else [], func.max, func.min)
    oldest = edge([LegacyEvent.at >= since] if since else [], func.min, func.max)
    if newest is None or oldest is None or oldest < newest:
        return 0, 0
    return newest, oldest + 1


def events_page(conn: Connection, log_id: int, first: int, last: int, page: int, size: int) -> list:
    """One page of sends, newest first, within seq [first, last)."""
    start = first + (page - 1) * size
    return conn.execute(select(_EVENT).where(
        LegacyEvent.log_id == log_id, LegacyEvent.seq >= start, LegacyEvent.seq < min(start + size, last))
        .order_by(LegacyEvent.seq)).all()


def events_between(conn: Connection, log_id: int, first: int, last: int) -> list[SendEvent]:
    """The sends within seq [first, last), to analyse a filtered period."""
    rows = conn.execute(select(LegacyEvent.at, LegacyEvent.campaign, LegacyEvent.lead, LegacyEvent.variant,
                               LegacyEvent.trigger, LegacyEvent.worker, LegacyEvent.step)
                        .where(LegacyEvent.log_id == log_id, LegacyEvent.seq >= first,
                               LegacyEvent.seq < last))
    return [SendEvent(*row) for row in rows]


def listing(conn: Connection) -> list:
    """Every stored log, newest first, without loading their summaries."""
    return conn.execute(select(LegacyLog.id, LegacyLog.name, LegacyLog.created_at, LegacyLog.ready,
                               LegacyLog.events, LegacyLog.duplicate_sends)
                        .order_by(LegacyLog.id.desc())).all()


def remove(engine: Engine, log_id: int) -> bool:
    """Delete a stored log and its events (in chunks, like they were written); False if absent."""
    while True:
        with immediate(engine) as conn:
            batch = select(LegacyEvent.seq).where(LegacyEvent.log_id == log_id).limit(CHUNK * 5)
            if not conn.execute(delete(LegacyEvent).where(LegacyEvent.log_id == log_id,
                                                          LegacyEvent.seq.in_(batch))).rowcount:
                return conn.execute(delete(LegacyLog).where(LegacyLog.id == log_id)).rowcount == 1
