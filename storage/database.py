"""SQLite connection set-up: pragmas and real BEGIN IMMEDIATE transactions.

Python's sqlite3 emits a deferred BEGIN only before a write, so a claim that reads and
then writes could fail with "database is locked" (or, worse, read a stale snapshot).
We take transaction control from the driver (isolation_level=None) and emit BEGIN
ourselves: BEGIN IMMEDIATE for connections marked `immediate=True`, which takes the
write lock up front so two claimers queue instead of interleaving.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from flask import current_app, has_app_context
from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

BUSY_TIMEOUT_MS = 10_000  # the default of the SQLITE_BUSY_TIMEOUT_MS config key


def configure_engine(engine: Engine) -> None:
    """Install the pragma and BEGIN hooks on an SQLite engine (once per engine).

    In an app context, the app's SQLITE_BUSY_TIMEOUT_MS sets how long a connection waits
    for another process's write lock before failing with "database is locked".
    """
    if getattr(engine, "_sendonce_configured", False):
        return
    engine._sendonce_configured = True  # type: ignore[attr-defined]
    if engine.dialect.name == "sqlite":
        _create_private_file(engine.url.database)
    busy_ms = int(current_app.config.get("SQLITE_BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)
                  if has_app_context() else BUSY_TIMEOUT_MS)
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


def email_domain_sql(column: str) -> str:
    """SQL text for an address column's domain with its "@" ("@example.com"), for the hot
    path's text SQL. SQLite's spelling; PostgreSQL's would be '@' || split_part(column, '@', 2)."""
    return f"'@' || substr({column}, instr({column}, '@') + 1)"


def run_sql(conn: Connection, statement: str, params: Sequence[Any] | Mapping[str, Any] = ()
            ) -> sqlite3.Cursor:
    """Run SQL text on the sqlite3 connection beneath `conn`, inside conn's transaction.

    For the few statements every message runs: Core costs ~90 us a statement, the
    driver ~13 us (bench/README.md). Errors come out as SQLAlchemy's exception classes
    (OperationalError, IntegrityError), like every other query's, so the callers' and
    the app's handlers (busy retries, the 503 page) see one kind.
    """
    try:
        return conn.connection.driver_connection.execute(statement, params)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, params, exc, sqlite3.Error) from exc


@contextmanager
def immediate(engine: Engine) -> Iterator[Connection]:
    """A BEGIN IMMEDIATE transaction on a fresh connection; commits on success."""
    with engine.connect() as conn, transaction(conn, immediate=True):
        yield conn


@contextmanager
def transaction(conn: Connection, *, immediate: bool) -> Iterator[Connection]:
    """A transaction on an open connection: BEGIN IMMEDIATE to write, BEGIN to read.

    For a loop that keeps one connection (a batch of sends): checking a pooled
    connection out and back in twice per message cost more than its SQL.
    """
    conn.execution_options(immediate=immediate)
    with conn.begin():
        yield conn


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
