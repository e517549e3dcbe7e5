"""Bench data on PostgreSQL (section postgres): the generator's SQLite file copied in.

generate.py writes SQLite (fast, and the chaos run's too); a PostgreSQL database gets the
same rows by COPY: the schema from models.py and schema.py (schema.install, so the plpgsql
triggers and the revision stamp are PostgreSQL's own), then every table's rows with
triggers and foreign keys off (session_replication_role = replica: the rows are
consistent by construction) and the big tables' plain indexes built once after the load,
as the generator does; the sequences moved past the ids, then the derived tables
(counts, timeline summary) recomputed by PostgreSQL from the copied rows.

A copy of the 1,000,000-row pages database takes a few minutes on 2 cores; it is kept as a
`pg_dump -Fc` file in bench/results/ keyed on the generator's fingerprint plus the
PostgreSQL schema (tables, indexes, triggers), and restored from it by later runs.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from bench import generate
from bench.claim_worker import pg_conninfo
from models import Base
from storage import database, schema

VERSION = 1  # bump when the copy changes: cached dumps are keyed on it
DERIVED = (schema.COUNTS, schema.SUMMARY)  # recomputed on PostgreSQL, not copied
BIG = ("lead", "campaign_lead", "send_log")  # their plain indexes are built after the load


def recreate(cluster, name: str, template: str | None = None) -> str:
    """An empty database `name` (or a copy of database `template`), dropped first if it
    exists; its SQLAlchemy URL."""
    cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    cluster.psql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return cluster.url(name)


def fingerprint(spec: generate.Spec) -> str:
    """The SQLite template's fingerprint + PostgreSQL's DDL, triggers and VERSION."""
    dialect = postgresql.dialect()
    ddl = [str(CreateTable(t).compile(dialect=dialect)) for t in Base.metadata.sorted_tables]
    ddl += sorted(str(CreateIndex(i).compile(dialect=dialect)) for t in Base.metadata.sorted_tables
                  for i in t.indexes)
    ddl += sorted(f"{name}: {trigger.ddl(name)} {trigger.source}"
                  for name, trigger in schema.PG_TRIGGERS.items())
    text = "\n".join([generate.fingerprint(spec), str(VERSION), *ddl])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def copy_from_sqlite(source: Path, url: str) -> dict[str, int]:
    """Fill the empty PostgreSQL database at `url` with every row of the SQLite file
    `source` (module docstring); rows copied per table."""
    engine = create_engine(url)
    database.configure_engine(engine)
    try:
        schema.install(engine, Base.metadata)
    finally:
        engine.dispose()
    copied: dict[str, int] = {}
    with sqlite3.connect(source) as lite, psycopg.connect(pg_conninfo(url), autocommit=True) as pg:
        pg.execute("SET session_replication_role = replica")  # no triggers, no FK checks while loading
        indexes = _drop_plain_indexes(pg, BIG)
        for table in Base.metadata.sorted_tables:
            filled = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table.name))
            if table.name in DERIVED or pg.execute(filled).fetchone()[0]:
                continue  # a table install filled keeps its rows
            copied[table.name] = _copy_table(lite, pg, table.name, [c.name for c in table.columns])
        for ddl in indexes:
            pg.execute(ddl)
        _advance_sequences(pg)
        pg.execute("SET session_replication_role = origin")
        pg.execute("ANALYZE")  # VACUUM cannot run in this transaction: restore() runs it
    engine = create_engine(url)
    try:
        with engine.begin() as conn:  # what the triggers would have kept, from the copied rows
            schema.recount(conn)
            schema.rebuild_summary(conn)
    finally:
        engine.dispose()
    return copied


def _drop_plain_indexes(pg: psycopg.Connection, tables: tuple[str, ...]) -> list[str]:
    """Drop the tables' indexes that back no constraint; their CREATE INDEX statements."""
    rows = pg.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' "
        "AND i.tablename = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
        (list(tables),)).fetchall()
    for name, _ddl in rows:
        pg.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return [ddl for _name, ddl in rows]


def _copy_table(lite: sqlite3.Connection, pg: psycopg.Connection, table: str, columns: list[str]) -> int:
    have = {row[1] for row in lite.execute(f'PRAGMA table_info("{table}")')}
    columns = [c for c in columns if c in have]
    select = f'SELECT {", ".join(f"{chr(34)}{c}{chr(34)}" for c in columns)} FROM "{table}"'
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    rows = 0
    with pg.cursor() as cursor, cursor.copy(copy) as out:
        for row in lite.execute(select):
            out.write_row(row)
            rows += 1
    return rows


def _advance_sequences(pg: psycopg.Connection) -> None:
    """Every id sequence past its table's largest id (COPY wrote the ids themselves)."""
    for table, column, sequence in pg.execute(
            "SELECT table_name, column_name, pg_get_serial_sequence(quote_ident(table_name), column_name) "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "AND pg_get_serial_sequence(quote_ident(table_name), column_name) IS NOT NULL").fetchall():
        query = sql.SQL("SELECT setval(%s, coalesce(max({}), 0) + 1, false) FROM {}").format(
            sql.Identifier(column), sql.Identifier(table))
        pg.execute(query, (sequence,))


def dump(cluster, name: str, path: Path) -> None:
    """`pg_dump -Fc` of database `name` into `path` (light compression: it is a cache)."""
    tmp = path.with_suffix(".tmp")
    subprocess.run([cluster.bin / "pg_dump", "-Fc", "-Z", "1", "-h", str(cluster.dir), "-p", "5432",
                    "-U", "postgres", "-d", name, "-f", str(tmp)], check=True, capture_output=True)
    tmp.rename(path)


def restore(cluster, name: str, path: Path) -> str:
    """A new database `name` from a dump file (data first, then indexes, 2 jobs); its URL."""
    url = recreate(cluster, name)
    subprocess.run([cluster.bin / "pg_restore", "-j", "2", "--no-owner", "-h", str(cluster.dir), "-p", "5432",
                    "-U", "postgres", "-d", name, str(path)], check=True, capture_output=True)
    # VACUUM too: a database in use has its visibility map kept by autovacuum, so the pages'
    # index-only scans read no table pages; a fresh restore has none yet.
    cluster.psql("VACUUM ANALYZE", name)
    return url


def cached(cluster, name: str, source: Path, spec: generate.Spec, results: Path, fresh: bool,
           log=print) -> str:
    """Database `name` holding `source`'s rows: restored from its dump in `results` when one
    matches (fingerprint), else copied from `source` and dumped for next time; its URL."""
    path = results / f"{name}-pg-{fingerprint(spec)}.dump"
    if path.exists() and not fresh:
        began = time.perf_counter()
        url = restore(cluster, name, path)
        log(f"postgres: {name} restored from {path.name} in {time.perf_counter() - began:.0f} s")
        return url
    for old in results.glob(f"{name}-pg-*.dump"):
        old.unlink()
    began = time.perf_counter()
    url = recreate(cluster, name)
    copied = copy_from_sqlite(source, url)
    log(f"postgres: {name} copied from {source.name} in {time.perf_counter() - began:.0f} s "
        f"({sum(copied.values()):,} rows)")
    dump(cluster, name, path)
    cluster.psql("VACUUM ANALYZE", name)  # as restore() leaves it
    return url
