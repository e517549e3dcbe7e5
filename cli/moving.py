"""Moving a deployment from its SQLite file to PostgreSQL: `flask --app app copy-to URL` (#19).

One transaction on each side: the SQLite file under BEGIN IMMEDIATE (no process can write
while the copy runs, so nothing written after the copy is lost in the old file), and the
PostgreSQL database, whose schema, rows, sequences and derived counts either all arrive,
verified, or none does (PostgreSQL's DDL is transactional): a failed copy can be re-run.
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import Connection, MetaData, String, create_engine, func, inspect, literal_column, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, ProgrammingError

from cli.terminal import echo
from delivery.lease import is_dead_here
from models import CampaignLead, SchedulerLease, SendLog, db, timeline_hour
from storage import schema, transfer
from storage.database import configure_engine, immediate, is_postgres
from storage.revision import HEAD, current_revision
from storage.schema import HOUR_FORMAT, SENT
from storage.sqlfunc import time_label
from storage.timeutil import utcnow

DERIVED = (schema.COUNTS, schema.SUMMARY)  # rebuilt from the rows they count, then verified


class CopyRefused(click.ClickException):
    """copy-to will not start (or not finish): nothing was written to the target."""


@click.command("copy-to")
@click.argument("url")
@with_appcontext
def copy_to_command(url: str) -> None:
    """Copy this SQLite database into an EMPTY PostgreSQL one (postgresql+psycopg://…), verified.

    Stop every SendOnce process first (web, scheduler, cron): it refuses while the scheduler
    lease is held. Prints what to change in the configuration afterwards.
    """
    if is_postgres(db.engine):
        raise CopyRefused("this database is PostgreSQL already: flask backup and restore "
                          "(pg_dump/pg_restore) move it")
    target = _target_engine(url)
    try:
        with immediate(db.engine) as source:  # writers wait (and fail busy) until the copy ends
            _check_source(source)
            with immediate(target) as conn:
                _check_empty(conn)
                counts = _copy(source, conn)
    except (IntegrityError, DataError, ProgrammingError) as exc:  # a row PostgreSQL refuses
        reason = (str(exc.orig).strip().splitlines() or [""])[0]
        raise CopyRefused(f"the copy failed ({reason}); nothing was kept in the target") from exc
    finally:
        target.dispose()
    label = target.url.render_as_string(hide_password=True)
    echo(f"copied {sum(counts.values())} rows in {len(counts)} tables into {label}; verified: every "
         "table's row count equals the source's, derived counts equal recounts")
    echo(_next_steps(label))


def _target_engine(url: str):
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CopyRefused(f"not a database URL: {url!r}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise CopyRefused(f"copy-to copies into PostgreSQL (postgresql+psycopg://user:password@host/db), "
                          f"not {parsed.get_backend_name()}")
    if parsed.get_driver_name() != "psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the one driver SendOnce pins
    engine = create_engine(parsed)
    configure_engine(engine)
    return engine


def _check_source(conn: Connection) -> None:
    """Refuse while a process holds the scheduler lease, or when the schema is not this code's."""
    revision = current_revision(conn)
    if revision != HEAD:
        raise CopyRefused(f"the database is at schema revision {revision}, this code at {HEAD}: "
                          "run `flask --app app init-db` first")
    lease = conn.execute(select(SchedulerLease.holder, SchedulerLease.expires_at)).first()
    # As lease.acquire judges it: a holder whose process is gone on this host holds nothing.
    if lease is not None and lease.holder and lease.expires_at and lease.expires_at > utcnow() \
            and not is_dead_here(lease.holder):
        raise CopyRefused(f"the scheduler lease is held by {lease.holder} until {lease.expires_at:%H:%M:%S} "
                          "UTC: stop every SendOnce process (web, scheduler, cron) and try again")


def _check_empty(conn: Connection) -> None:
    tables = inspect(conn).get_table_names()
    if tables:
        shown = ", ".join(sorted(tables)[:5]) + (", …" if len(tables) > 5 else "")
        raise CopyRefused(f"the target database is not empty ({len(tables)} tables: {shown}); "
                          "copy-to only writes into a new, empty database")


def _copy(source: Connection, target: Connection) -> dict[str, int]:
    """Schema (create_all + stamp + triggers, as init-db's install makes it), rows, sequences,
    derived tables; verified before the caller commits."""
    metadata: MetaData = db.metadata
    metadata.create_all(target)  # fires schema.install_triggers: the revision stamp and the triggers
    tables = [t for t in metadata.sorted_tables if t.name not in DERIVED]
    counts = {}
    for table in tables:
        counts[table.name] = transfer.copy_table(source, target, table)
        expected = transfer.count_rows(source, table)
        if counts[table.name] != expected or transfer.count_rows(target, table) != expected:
            raise CopyRefused(f"table {table.name}: {expected} rows in the source, "
                              f"{transfer.count_rows(target, table)} copied; nothing was kept")
    transfer.advance_sequences(target, tables)
    # The derived tables are recomputed from the rows just copied (whatever the triggers
    # did meanwhile), then checked against recounts written here, independently.
    schema.recount(target)
    schema.rebuild_summary(target)
    for name, bad in _derived_differences(target).items():
        if bad:
            raise CopyRefused(f"{name}: {bad} rows differ from a recount; nothing was kept")
    counts.update({t: transfer.count_rows(target, metadata.tables[t]) for t in DERIVED})
    return counts


def _derived_differences(conn: Connection) -> dict[str, int]:
    """Rows of each derived table that differ from a recount (both ways)."""
    counts = db.metadata.tables[schema.COUNTS]
    state = literal_column(schema.counted_state(CampaignLead.__tablename__), String)
    recount = select(CampaignLead.campaign_id, state, func.count()).group_by(CampaignLead.campaign_id, state)
    stored = select(counts.c.campaign_id, counts.c.state, counts.c.n).where(counts.c.n != 0)
    hour = time_label(SendLog.claimed_at, HOUR_FORMAT)
    rebuilt = (select(SendLog.campaign_id, hour, SendLog.trigger, func.count())
               .where(SendLog.status.in_(SENT)).group_by(SendLog.campaign_id, hour, SendLog.trigger))
    summary = (select(timeline_hour.c.campaign_id, timeline_hour.c.hour, timeline_hour.c.trigger,
                      timeline_hour.c.sends).where(timeline_hour.c.sends != 0))
    return {schema.COUNTS: _both_ways(conn, stored, recount),
            schema.SUMMARY: _both_ways(conn, summary, rebuilt)}


def _both_ways(conn: Connection, one, other) -> int:
    missing = conn.execute(select(func.count()).select_from(one.except_(other).subquery())).scalar_one()
    extra = conn.execute(select(func.count()).select_from(other.except_(one).subquery())).scalar_one()
    return missing + extra


def _next_steps(label: str) -> str:
    keys = current_app.config["MAILBOX_KEY_FILE"]
    return f"""
Next, on every host that runs SendOnce:
  1. keep every SendOnce process stopped until it points at PostgreSQL;
  2. set the database in instance/config.py (or the environment):
       SQLALCHEMY_DATABASE_URI = "{label}"   (with its password; or FLASK_SQLALCHEMY_DATABASE_URI=...)
  3. keep these the same on every host, copied from this one:
       SECRET_KEY (or the file SECRET_KEY_FILE, {current_app.config.get("SECRET_KEY_FILE")}): logins
         and every unsubscribe link already sent depend on it;
       MAILBOX_KEY_FILE ({keys}): the stored mailbox passwords are unreadable without it;
  4. everything else stays: the CLI, cron lines (send-due, alerts check, backup), the scheduler;
     `flask --app app backup` now writes pg_dump archives (sendonce-*.dump) into BACKUP_DIR;
  5. keep the SQLite file ({db.engine.url.database}) unchanged until the new setup has run a while.
"""
