"""One competing claimer process:
`python -m bench.claim_worker engine|bare|bare-grouped|pg-bare|pg-bare-grouped DB CAMPAIGNS [START]`.

CAMPAIGNS is one id or a comma-separated list: with several, the process takes them in
turn, BATCH claims from each, beginning with the START-th (its own index among the
processes, so N processes begin on N different campaigns); a campaign with nothing left
leaves the turn, and the process stops when none is left.

- engine: SendOnce's own path, sender.send_batch (claim, render, re-check, send, record
  the outcome; one commit per message, the outcome riding on the next claim) in batches
  of BATCH, as a campaign with that batch size is sent by the button or a scheduler tick,
  with a transport that only counts; the app is built by create_app() from FLASK_*
  variables, as a scheduler or gunicorn process builds it.
- bare: the SQLite ceiling with nothing but sqlite3: BEGIN IMMEDIATE, select the next
  pending enrollment, update it, insert its send_log row, COMMIT; then a second BEGIN
  IMMEDIATE marking the row and its enrollment sent. Same file, same pragmas (WAL,
  synchronous=FULL, busy_timeout, foreign_keys) as database.py sets.
- bare-grouped: the same, but claim n's marking is committed with claim n+1, as the
  engine's batches do: a second, stricter ceiling, reported beside the first.
- pg-bare, pg-bare-grouped: the PostgreSQL ceiling with nothing but psycopg (DB is the
  SQLAlchemy URL): BEGIN, lock the campaign row FOR UPDATE, take the next pending
  enrollment FOR UPDATE SKIP LOCKED, update it, insert its send_log row with the id from
  nextval, COMMIT; then a second transaction marking it sent (grouped: with the next claim).
  The engine on PostgreSQL does the same and more (the shared advisory write lock, the
  lease, gate and mailbox reads: storage/database.py's docstring).
Prints "ready" when imported and built, then reads "START STOP" (epoch seconds) from stdin:
all start in the same instant and claim until nothing is left or STOP passes (0: no stop;
a claim already taken is always delivered and recorded), then print one JSON line.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

from bench.rss import peak_rss_kb

BATCH = 20  # messages per send_batch call (a campaign's batch size)


class NullTransport:
    """A Transport that sends nothing and counts what it was given."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, msg, sender: str, recipient: str, deadline: float = float("inf")):
        from delivery.transport import Result
        from models import SendStatus

        self.sent += 1
        return Result(SendStatus.SENT, "250 null transport")

    def close(self) -> None:
        """Nothing to close."""


def _wait_for_start() -> float:
    """Wait for the common start; returns the stop time (infinity: run until empty)."""
    print("ready", flush=True)
    start_at, stop_at = map(float, sys.stdin.readline().split())
    time.sleep(max(0.0, start_at - time.time()))
    return stop_at or float("inf")


class Turns:
    """The campaigns this process claims from, in turn, BATCH claims each."""

    def __init__(self, campaigns: list[int], start: int) -> None:
        first = start % len(campaigns)
        self.left, self.at, self.taken = campaigns[first:] + campaigns[:first], 0, 0

    def current(self) -> int | None:
        return self.left[self.at] if self.left else None

    def took(self) -> None:
        """One claim from the current campaign; after BATCH of them, the next one's turn."""
        self.taken += 1
        if self.taken >= BATCH:
            self.next()

    def next(self) -> None:
        self.taken = 0
        if self.left:
            self.at = (self.at + 1) % len(self.left)

    def drop(self) -> None:
        """The current campaign has nothing left: out of the turn."""
        self.taken = 0
        del self.left[self.at]
        if self.left:
            self.at %= len(self.left)


def run_engine(turns: Turns) -> dict:
    from app import create_app
    from models import Trigger, db
    from sender import Settings, send_batch

    app = create_app()
    transport, stopped_by, errors = NullTransport(), "deadline", 0
    with app.app_context():
        engine, settings = db.engine, Settings.from_config(app.config)
        with engine.connect():  # open the pool's first connection before the clock starts
            pass
        stop_at = _wait_for_start()
        began = time.time()
        while time.time() < stop_at and (campaign_id := turns.current()) is not None:
            # BUTTON: the path that skips pacing and the send window (several processes at
            # once would otherwise refuse each other as `not_due`); claim and record are
            # exactly the scheduler's.
            batch = send_batch(engine, settings, transport, campaign_id, Trigger.BUTTON, limit=BATCH)
            errors += sum(1 for _, result in batch.outcomes if result.status != "sent")
            if batch.stopped_by is not None:  # finished (or refused): out of the turn
                stopped_by = batch.stopped_by.code
                turns.drop()
            else:
                turns.next()
        finished = time.time()
    return {"claims": transport.sent, "errors": errors, "stopped_by": stopped_by,
            "began": began, "finished": finished}


CLAIM = "SELECT id, lead_id, variant_letter FROM campaign_lead WHERE campaign_id = ? AND state = 'pending' " \
        "ORDER BY id LIMIT 1"
INSERT = ('INSERT INTO send_log (campaign_id, lead_id, variant_letter, status, attempts, "trigger", worker, '
          "message_id, created_at, claimed_at) VALUES (?, ?, ?, 'sending', 1, 'button', ?, '', ?, ?)")


def run_bare(db_path: str, turns: Turns, grouped: bool = False) -> dict:
    """The ceiling loop; `grouped`: the marking of claim n rides on claim n+1's commit,
    as the engine's batches do (one commit per message instead of two)."""
    from datetime import UTC, datetime

    conn = sqlite3.connect(db_path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "busy_timeout=10000", "synchronous=FULL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    worker = f"bench:{os.getpid()}"
    claims, stopped_by, unsettled = 0, "deadline", None
    stop_at = _wait_for_start()
    began = time.time()
    while time.time() < stop_at:
        if (campaign_id := turns.current()) is None:
            stopped_by = "empty"
            break
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        conn.execute("BEGIN IMMEDIATE")
        if unsettled:
            _mark_sent(conn, now, *unsettled)
            unsettled = None
        row = conn.execute(CLAIM, (campaign_id,)).fetchone()
        if row is None:
            conn.execute("COMMIT")
            turns.drop()
            continue
        turns.took()
        enrollment_id, lead_id, letter = row
        conn.execute("UPDATE campaign_lead SET state = 'sending' WHERE id = ? AND state = 'pending'",
                     (enrollment_id,))
        log_id = conn.execute(INSERT, (campaign_id, lead_id, letter, worker, now, now)).lastrowid
        conn.execute("COMMIT")
        unsettled = (log_id, enrollment_id)
        if not grouped:
            conn.execute("BEGIN IMMEDIATE")
            _mark_sent(conn, now, *unsettled)
            conn.execute("COMMIT")
            unsettled = None
        claims += 1
    if unsettled:
        conn.execute("BEGIN IMMEDIATE")
        _mark_sent(conn, now, *unsettled)
        conn.execute("COMMIT")
    finished = time.time()
    conn.close()
    return {"claims": claims, "errors": 0, "stopped_by": stopped_by, "began": began, "finished": finished}


def _mark_sent(conn: sqlite3.Connection, now: str, log_id: int, enrollment_id: int) -> None:
    conn.execute("UPDATE send_log SET status = 'sent', sent_at = ?, smtp_reply = '250 bare' "
                 "WHERE id = ? AND status = 'sending'", (now, log_id))
    conn.execute("UPDATE campaign_lead SET state = 'sent' WHERE id = ?", (enrollment_id,))


# The campaign rows first, ascending, as storage.database.lock_claim_rows does: the
# counts' and the summary's triggers lock their rows too, and a marking that took them
# before its campaign row could deadlock with a claim holding that campaign row.
PG_CAMPAIGN = "SELECT id FROM campaign WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
PG_CLAIM = ("SELECT id, lead_id, variant_letter FROM campaign_lead "
            "WHERE campaign_id = %s AND state = 'pending' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
PG_TAKE = "UPDATE campaign_lead SET state = 'sending' WHERE id = %s AND state = 'pending'"
PG_INSERT = ('INSERT INTO send_log (id, campaign_id, lead_id, variant_letter, status, attempts, "trigger", '
             "worker, message_id, created_at, claimed_at) "
             "VALUES (nextval(%s), %s, %s, %s, 'sending', 1, 'button', %s, '', %s, %s) RETURNING id")
PG_SENT = ("UPDATE send_log SET status = 'sent', sent_at = %s, smtp_reply = '250 bare' "
           "WHERE id = %s AND status = 'sending'")
PG_ENROLLMENT_SENT = "UPDATE campaign_lead SET state = 'sent' WHERE id = %s"


def pg_conninfo(url: str) -> str:
    """psycopg's connection string for an SQLAlchemy postgresql+psycopg URL."""
    from psycopg.conninfo import make_conninfo
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return make_conninfo(dbname=parsed.database, user=parsed.username, **{
        k: v for k, v in parsed.query.items() if k in ("host", "port")})


def run_pg_bare(url: str, turns: Turns, grouped: bool = False) -> dict:
    """The PostgreSQL ceiling loop (module docstring); `grouped` as run_bare's."""
    from datetime import UTC, datetime

    import psycopg

    conn = psycopg.connect(pg_conninfo(url), autocommit=True)  # BEGIN/COMMIT written out, as run_bare's
    sequence = conn.execute("SELECT pg_get_serial_sequence('send_log', 'id')").fetchone()[0]
    worker = f"bench:{os.getpid()}"
    claims, stopped_by, unsettled = 0, "deadline", None
    stop_at = _wait_for_start()
    began = time.time()
    while time.time() < stop_at:
        if (campaign_id := turns.current()) is None:
            stopped_by = "empty"
            break
        now = datetime.now(UTC).replace(tzinfo=None)
        conn.execute("BEGIN")
        conn.execute(PG_CAMPAIGN, (sorted({campaign_id, unsettled[2]} if unsettled else {campaign_id}),))
        if unsettled:
            _pg_mark_sent(conn, now, *unsettled[:2])
            unsettled = None
        row = conn.execute(PG_CLAIM, (campaign_id,)).fetchone()
        if row is None:
            conn.execute("COMMIT")
            turns.drop()
            continue
        turns.took()
        enrollment_id, lead_id, letter = row
        conn.execute(PG_TAKE, (enrollment_id,))
        values = (sequence, campaign_id, lead_id, letter, worker, now, now)
        log_id = conn.execute(PG_INSERT, values).fetchone()[0]
        conn.execute("COMMIT")
        unsettled = (log_id, enrollment_id, campaign_id)
        if not grouped:
            conn.execute("BEGIN")
            _pg_mark_sent(conn, now, *unsettled[:2])
            conn.execute("COMMIT")
            unsettled = None
        claims += 1
    if unsettled:
        conn.execute("BEGIN")
        conn.execute(PG_CAMPAIGN, ([unsettled[2]],))
        _pg_mark_sent(conn, now, *unsettled[:2])
        conn.execute("COMMIT")
    finished = time.time()
    conn.close()
    return {"claims": claims, "errors": 0, "stopped_by": stopped_by, "began": began, "finished": finished}


def _pg_mark_sent(conn, now, log_id: int, enrollment_id: int) -> None:
    conn.execute(PG_SENT, (now, log_id))
    conn.execute(PG_ENROLLMENT_SENT, (enrollment_id,))


def main(mode: str, db: str, campaigns: str, start: int = 0) -> None:
    turns = Turns([int(c) for c in campaigns.split(",")], start)
    run = {"engine": lambda: run_engine(turns),
           "bare": lambda: run_bare(db, turns),
           "bare-grouped": lambda: run_bare(db, turns, grouped=True),
           "pg-bare": lambda: run_pg_bare(db, turns),
           "pg-bare-grouped": lambda: run_pg_bare(db, turns, grouped=True)}[mode]
    profile_to = os.environ.get("BENCH_PROFILE")  # make bench ... --profile: where the stats go
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        report = profiler.runcall(run)
        profiler.dump_stats(profile_to)
    else:
        report = run()
    report["maxrss_kb"] = peak_rss_kb()
    report["pid"] = os.getpid()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
