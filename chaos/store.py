"""The chaos run's own reads of the database, from outside the app: the SQLite file or the
PostgreSQL database every process of the run shares (`--database`).

One read transaction is one snapshot on both: SQLite (WAL) from an explicit BEGIN, as
the driver's own transaction handling is switched off (it would begin none for a
SELECT); PostgreSQL at REPEATABLE READ. A snapshot's reads then agree with each other,
which the checks need (a lease row, the newest ids and a lead's rows, all of one moment).

On PostgreSQL the cluster is a throwaway one (tests/pg_server.py): started for the run
and stopped at its end, or the one named by SENDONCE_PG_CLUSTER_DIR (make test's session
cluster), which is left running.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection

SQLITE, POSTGRESQL = "sqlite", "postgresql"


def reader(url: str) -> Engine:
    """An engine whose every transaction reads one snapshot."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "isolation_level": None})

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, isolation_level="REPEATABLE READ", pool_size=4)


def is_postgres(engine: Engine | Connection) -> bool:
    return engine.dialect.name == POSTGRESQL


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """One read transaction on a pooled connection (given back at once: no snapshot stays pinned)."""
    with engine.connect() as conn, conn.begin():
        yield conn


def rows(conn: Connection, sql: str, **params: Any) -> list[tuple]:
    """Rows of SQL text (`:name` parameters) as plain tuples, with the driver's own values:
    timestamps are text on SQLite, datetimes on PostgreSQL."""
    return [tuple(row) for row in conn.execute(text(sql), params)]


def dicts(conn: Connection, sql: str) -> list[dict[str, Any]]:
    """Rows of SQL text as dicts by column name."""
    return [dict(row._mapping) for row in conn.execute(text(sql))]


def query(engine: Engine, sql: str, **params: Any) -> list[tuple]:
    """One read in its own transaction."""
    with snapshot(engine) as conn:
        return rows(conn, sql, **params)
