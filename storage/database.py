"""Connection set-up and write transactions, for SQLite (the default) and PostgreSQL.

SQLite: Python's sqlite3 emits a deferred BEGIN only before a write, so a claim that reads
and then writes could fail with "database is locked" (or, worse, read a stale snapshot).
We take transaction control from the driver (isolation_level=None) and emit BEGIN
ourselves: BEGIN IMMEDIATE for connections marked `immediate=True`, which takes the
write lock up front so two claimers queue instead of interleaving.

PostgreSQL (#19) has no database-wide write lock, so we make the one we need: a
transaction-scoped advisory lock, WRITE_LOCK. Every write transaction takes it
*exclusively* at BEGIN -- exactly BEGIN IMMEDIATE's meaning, so every read-then-write in
the code base keeps the serial order it was written for -- except the engine's claims
(and the outcomes they store), which take it *shared* and serialize among themselves on
the rows they touch instead (`lock_claim_rows`: the campaign rows FOR UPDATE, then their
mailboxes', then the lease FOR SHARE; always in that order, so claims cannot deadlock).
Claims of campaigns with different mailboxes then run in parallel; a person's edit, an
import, a reply being recorded or a lease take-over waits for the claims in flight and
holds new ones back, as on SQLite. lock_timeout plays busy_timeout's part.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any

import psycopg
from flask import current_app, has_app_context
from sqlalchemy import Engine, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

BUSY_TIMEOUT_MS = 10_000  # the default of the SQLITE_BUSY_TIMEOUT_MS config key
# PostgreSQL's advisory lock standing in for SQLite's write lock (any constant of ours).
WRITE_LOCK = 0x53656E64  # "Send"
# How a write transaction locks (execution option "immediate"): True/"exclusive" is
# BEGIN IMMEDIATE; "claim" is the engine's shared mode on PostgreSQL (BEGIN IMMEDIATE on SQLite).
CLAIM = "claim"
# PostgreSQL errors that mean "try again", as SQLite's BUSY/LOCKED do: serialization
# failure, deadlock detected, lock not available (lock_timeout).
_PG_BUSY = {"40001", "40P01", "55P03"}


def is_postgres(bind: Any) -> bool:
    """Whether an engine or connection talks to PostgreSQL (else SQLite)."""
    return bind.dialect.name == "postgresql"


def configure_engine(engine: Engine) -> None:
    """Install the pragma and BEGIN hooks on an SQLite engine (once per engine).

    In an app context, the app's SQLITE_BUSY_TIMEOUT_MS sets how long a connection waits
    for another process's write lock before failing with "database is locked".
    """
    if getattr(engine, "_sendonce_configured", False):
        return
    engine._sendonce_configured = True  # type: ignore[attr-defined]
    busy_ms = int(current_app.config.get("SQLITE_BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)
                  if has_app_context() else BUSY_TIMEOUT_MS)
    if is_postgres(engine):
        event.listen(engine, "connect",
                     lambda dbapi_connection, record: _on_connect_pg(dbapi_connection, busy_ms))
        event.listen(engine, "begin", _on_begin_pg)
        return
    _create_private_file(engine.url.database)
    event.listen(engine, "connect", lambda dbapi_connection, record: _on_connect(dbapi_connection, busy_ms))
    event.listen(engine, "begin", _on_begin)


def _create_private_file(path: str | None) -> None:
    """Create a new database file readable by its owner only (0600) before SQLite does (0644).

    The file holds every lead's personal data; SQLite gives its -wal and -shm files the
    database file's own permissions. An existing file is left as it is.
    """
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    if not os.path.isdir(os.path.dirname(path) or "."):
        return  # no folder: connecting fails with SQLite's own error
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _on_connect(dbapi_connection, busy_ms: int) -> None:
    # Pragmas are per connection. synchronous=FULL: in WAL mode NORMAL may lose a
    # committed claim on power loss, and the claim is our reservation ledger.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms:d}")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("immediate", False)
    run_sql(conn, "BEGIN IMMEDIATE" if immediate else "BEGIN")


def _on_connect_pg(dbapi_connection, busy_ms: int) -> None:
    # Naive datetimes are UTC everywhere in SendOnce; lock waits end like SQLite's busy
    # timeout (55P03, retried or shown as "busy" like SQLITE_BUSY).
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
        cursor.execute(f"SET lock_timeout = {busy_ms:d}")
    dbapi_connection.commit()


def _on_begin_pg(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("immediate", False)
    if immediate == CLAIM:
        run_sql(conn, "SELECT pg_advisory_xact_lock_shared(?)", (WRITE_LOCK,))
    elif immediate:
        run_sql(conn, "SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))


def is_busy(exc: BaseException) -> bool:
    """Whether a database error means "another writer holds the lock: try again"."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) in _PG_BUSY:
        return True
    return getattr(orig, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def is_read_only(exc: BaseException) -> bool:
    """Whether a database error means the database may not be written (a read-only file)."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlite_errorname", "").startswith("SQLITE_READONLY") or \
        getattr(orig, "sqlstate", None) == "25006"


def email_domain_sql(column: str, bind: Any) -> str:
    """SQL text for an address column's domain with its "@" ("@example.com"), for the hot
    path's text SQL, in the dialect of `bind`."""
    if is_postgres(bind):
        return f"'@' || split_part({column}, '@', 2)"
    return f"'@' || substr({column}, instr({column}, '@') + 1)"


def as_datetime(value: datetime | str | None) -> datetime | None:
    """A datetime column's value as run_sql returns it: text on SQLite, datetime on PostgreSQL."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def next_id(conn: Connection, table: str) -> int:
    """The id the next row of `table` gets, chosen inside the caller's write transaction.

    SQLite: max + 1, safe under the write lock every writer holds. PostgreSQL: the
    table's sequence, as claims of different campaigns insert in parallel there.
    """
    if is_postgres(conn):
        return run_sql(conn, f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))").fetchone()[0]
    return run_sql(conn, f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0]


def update_then_next_id(conn: Connection, statement: str, params: Sequence[Any], table: str) -> int | None:
    """Run UPDATE `statement` (run_sql's placeholders); when it changed one row, the id the
    next row of `table` gets (as next_id), else None. On PostgreSQL in one round trip:
    the UPDATE returns nextval (a claim's take and its send_log id, on every message)."""
    if is_postgres(conn):
        row = run_sql(conn, f"{statement} RETURNING nextval(pg_get_serial_sequence('{table}', 'id'))",
                      params).fetchone()
        return row[0] if row is not None else None
    if run_sql(conn, statement, params).rowcount != 1:
        return None
    return next_id(conn, table)


def next_ids(conn: Connection, table: str, count: int) -> list[int]:
    """`count` new ids for `table` (a batch insert's), as next_id chooses them."""
    if count <= 0:
        return []
    if is_postgres(conn):
        rows = run_sql(conn, f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) "
                             "FROM generate_series(1, ?)", (count,)).fetchall()
        return [r[0] for r in rows]
    first = next_id(conn, table)
    return list(range(first, first + count))


def insert_for(bind: Any, table: Any):
    """An INSERT of the bind's dialect, with on_conflict_do_nothing/do_update (both have them)."""
    # preserve_rowcount: an INSERT's rowcount (did ON CONFLICT DO NOTHING insert?) is kept
    # for the caller only when asked for, on PostgreSQL.
    dialect_insert = postgresql_insert if is_postgres(bind) else sqlite_insert
    return dialect_insert(table).execution_options(preserve_rowcount=True)


def lock_claim_rows(conn: Connection, campaigns: Iterable[int],
                    mailboxes: Iterable[int] = ()) -> set[int] | None:
    """PostgreSQL: lock what a claim (or a stored outcome) reads and then writes, in one
    order for every claim: the campaign rows, then every mailbox of those campaigns (and
    `mailboxes`), ascending ids. Pacing, caps, windows, a campaign's finish and its
    wake-up then stay atomic under READ COMMITTED, and claims of campaigns that share no
    mailbox do not wait for each other. Returns which of `campaigns` have mailboxes
    (read under the lock: no writer changes that before the claim commits), so a claim
    need not ask again. SQLite: nothing to do (BEGIN IMMEDIATE holds all); None, not known.
    """
    if not is_postgres(conn):
        return None
    ids = sorted(set(campaigns))
    boxes = sorted({int(m) for m in mailboxes if m is not None})
    # The campaign rows, and whether any has mailboxes: without any, no second round trip.
    rows = run_sql(conn, _LOCK_CAMPAIGNS, (ids,)).fetchall()
    linked = {campaign_id for campaign_id, has_mailboxes in rows if has_mailboxes}
    if boxes or linked:
        run_sql(conn, _LOCK_MAILBOXES, (ids, boxes))
    return linked


_LOCK_CAMPAIGNS = ("SELECT c.id, EXISTS (SELECT 1 FROM campaign_mailbox cm WHERE cm.campaign_id = c.id) "
                   "FROM campaign c WHERE c.id = ANY(?) ORDER BY c.id FOR UPDATE OF c")
_LOCK_MAILBOXES = ("SELECT id FROM mailbox WHERE id IN (SELECT mailbox_id FROM campaign_mailbox "
                   "WHERE campaign_id = ANY(?)) OR id = ANY(?) ORDER BY id FOR UPDATE")


def run_sql(conn: Connection, statement: str, params: Sequence[Any] | Mapping[str, Any] = ()):
    """Run SQL text on the driver connection beneath `conn`, inside conn's transaction.

    For the few statements every message runs: Core costs ~90 us a statement, the
    driver ~13 us (bench/README.md). Written with sqlite3's placeholders (`?`, `:name`);
    on PostgreSQL they are rewritten once per statement text for psycopg. Errors come out
    as SQLAlchemy's exception classes (OperationalError, IntegrityError), like every
    other query's, so the callers' and the app's handlers (busy retries, the 503 page)
    see one kind.
    """
    driver = conn.connection.driver_connection
    if isinstance(driver, sqlite3.Connection):
        try:
            return driver.execute(statement, params)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(statement, params, exc, sqlite3.Error) from exc
    try:
        return driver.execute(_pg_placeholders(statement), params or None, prepare=True)
    except psycopg.Error as exc:
        raise DBAPIError.instance(statement, params, exc, psycopg.Error) from exc


_TOKENS = re.compile(r"'(?:[^']|'')*'|\?|(?<!:):([A-Za-z_]\w*)|%")


@lru_cache(maxsize=512)
def _pg_placeholders(statement: str) -> str:
    """sqlite3's `?` and `:name` as psycopg's `%s` and `%(name)s`; a literal `%` doubled."""
    def swap(match: re.Match) -> str:
        text = match.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({match.group(1)})s"
    return _TOKENS.sub(swap, statement)


@contextmanager
def immediate(engine: Engine, mode: bool | str = True) -> Iterator[Connection]:
    """A BEGIN IMMEDIATE transaction on a fresh connection; commits on success.
    `mode=CLAIM`: the engine's claim lock on PostgreSQL (module docstring)."""
    with engine.connect() as conn, transaction(conn, immediate=mode):
        yield conn


@contextmanager
def transaction(conn: Connection, *, immediate: bool | str) -> Iterator[Connection]:
    """A transaction on an open connection: BEGIN IMMEDIATE to write, BEGIN to read.

    For a loop that keeps one connection (a batch of sends): checking a pooled
    connection out and back in twice per message cost more than its SQL.
    """
    conn.execution_options(immediate=immediate)
    with conn.begin():
        yield conn


@contextmanager
def reading(conn: Connection) -> Iterator[Connection]:
    """Reads that belong together, on an open connection (a batch's, between its claims).

    SQLite: one deferred transaction, so that they share one snapshot. PostgreSQL: under
    READ COMMITTED each statement takes its own snapshot, in a transaction or not; there
    they run in autocommit, which saves BEGIN's and COMMIT's round trips (every message
    reads once before SMTP).
    """
    if not is_postgres(conn):
        with transaction(conn, immediate=False):
            yield conn
        return
    driver = conn.connection.driver_connection
    driver.autocommit = True
    try:
        with transaction(conn, immediate=False):  # SQLAlchemy's bookkeeping: no BEGIN is sent
            yield conn
    finally:
        driver.autocommit = False


def forbid_writes(session_class: type[Session]) -> None:
    """Make a session class read-only: every write must go through write_session.

    A request's session starts with a deferred BEGIN at its first read; if another
    process commits before this session writes, SQLite refuses the upgrade at once
    ("database is locked"; busy_timeout cannot help). So db.session only reads, and
    writes take BEGIN IMMEDIATE up front in a short transaction of their own.
    """

    @event.listens_for(session_class, "before_flush")
    def _refuse(session: Session, _context, _instances) -> None:
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("db.session is read-only: write inside database.write_session()")


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """An ORM session whose one transaction is BEGIN IMMEDIATE; commits on success."""
    with immediate(engine) as conn, Session(bind=conn) as session:
        yield session
        session.flush()
