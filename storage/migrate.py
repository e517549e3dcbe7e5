"""Schema revisions as the code knows them, the claim's version gate, and the end of every migration.

The migrations themselves live in migrations/ (Flask-Migrate's convention; Alembic runs
them). This module is what the rest of the code needs to know about them without
importing Alembic: which revision this code was written for, how to tell a database
made before migrations existed, how a claim refuses to run against a schema it does not
know (behind *or* ahead), and how a migration ends (re-installing the derived-table
triggers, which a batch "move and copy" of their table silently drops).
"""

from __future__ import annotations

from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from storage import schema
from storage.database import is_postgres, run_sql
from storage.revision import HEAD, REVISIONS

MAINTENANCE_KEY = "maintenance"  # app_meta key: while set, every claim refuses
UPGRADE_HINT = "run `flask --app app db upgrade` (or init-db)"

# One read per claim: the schema revision and the maintenance flag (both tiny tables).
_GATE = ("SELECT (SELECT {versions} FROM alembic_version), "
         f"(SELECT value FROM app_meta WHERE key = '{MAINTENANCE_KEY}')")
_GATE_SQLITE = _GATE.format(versions="group_concat(version_num)")
_GATE_PG = _GATE.format(versions="string_agg(version_num, ',')")
# PostgreSQL: whether both tables exist. A missing one would abort the claim's whole
# transaction there (the outcome it stores first included), so it is asked first.
_GATE_TABLES_PG = "SELECT to_regclass('alembic_version') IS NOT NULL AND to_regclass('app_meta') IS NOT NULL"
_GATE_TABLES_SEEN = "sendonce_gate_tables"  # the flag in a pooled connection's info
_NO_VERSION = f"the database has no schema version this code knows; {UPGRADE_HINT}"


def has_tables(conn: Connection) -> bool:
    """Whether the database holds SendOnce's tables (without alembic_version: 3a618c4's)."""
    return inspect(conn).has_table("campaign")


def claim_gate(conn: Connection) -> tuple[str, str] | None:
    """Why no claim may run on this database now, as (code, detail), or None when it may.

    Read inside the claim's own transaction on every claim (nothing cached: a restore or
    an upgrade by another process changes the answer between two claims). Codes:
    `schema_mismatch` (the database's revision is not this code's, behind or ahead) and
    `maintenance` (a restore is running).
    """
    revision, maintenance = _read_gate(conn)
    if revision is _MISSING:  # a table missing: a database older than revision 0002
        return "schema_mismatch", _NO_VERSION
    if revision != HEAD:
        return "schema_mismatch", mismatch_detail(revision)
    if maintenance:
        return "maintenance", f"maintenance in progress ({maintenance}); claims resume when it ends"
    return None


_MISSING = object()


def _read_gate(conn: Connection) -> tuple:
    """The schema revision and the maintenance flag; (_MISSING, None) when a table is missing."""
    if is_postgres(conn):
        # Asked once a connection: only a DROP makes the tables go again, and a claim then
        # fails on the gate's read, loudly (a restore's pg_restore re-creates them in one
        # transaction, which a claim waiting on their locks finds by name afterwards).
        seen = conn.connection.info
        if not seen.get(_GATE_TABLES_SEEN):
            if not run_sql(conn, _GATE_TABLES_PG).fetchone()[0]:
                return _MISSING, None
            seen[_GATE_TABLES_SEEN] = True
        return run_sql(conn, _GATE_PG).fetchone()
    try:
        return run_sql(conn, _GATE_SQLITE).fetchone()
    except OperationalError as exc:
        if "no such table" not in str(exc.orig):
            raise
        return _MISSING, None


def mismatch_detail(revision: str | None) -> str:
    """What to do when the database is at `revision` and this code at HEAD."""
    if revision in REVISIONS:
        return f"the database schema is at revision {revision}, this code needs {HEAD}: {UPGRADE_HINT}"
    return (f"the database schema is at revision {revision or 'none'}, which this code (revision {HEAD}) "
            "does not know: it is newer; stop this process and run the code that upgraded it")


def finish_migration(conn: Connection, metadata: MetaData) -> None:
    """The end of every migration run: re-install both derived-table trigger sets, recount
    what they maintain, and check they are in place (inside the migration's transaction).

    A batch "move and copy" drops and re-creates a table, and SQLite drops the table's
    triggers with it: without this the counters and the timeline summary would silently
    stop. Forcing the re-install also recounts, so counts written meanwhile are exact.
    """
    schema.sync_triggers(conn, schema.COUNTS, force=True)
    schema.recount(conn)
    schema.sync_triggers(conn, schema.SUMMARY, force=True)
    schema.rebuild_summary(conn)
    missing = missing_triggers(conn)
    if missing:
        raise RuntimeError(f"triggers missing after the migration: {', '.join(missing)}")


def missing_triggers(conn: Connection) -> list[str]:
    """Names of derived-table triggers that are absent or differ from this code's DDL."""
    return schema.stale_triggers(conn)


def include_object_for(conn: Connection):
    """Alembic's include_object hook for autogenerate: a UNIQUE the models name by convention
    is the same constraint as an unnamed one on the same columns in the database.

    3a618c4 left four UNIQUEs unnamed (lead.email, suppression.email, user.email,
    variant(campaign_id, letter)); renaming them would rebuild those tables for nothing.
    A migration that must alter one reflects it under a name with batch_alter_table's
    naming_convention argument.
    """
    def include(obj, name, type_, reflected, compare_to) -> bool:
        if type_ != "unique_constraint" or reflected or compare_to is not None:
            return True
        columns = [c.name for c in obj.columns]
        return not any(uq["name"] is None and uq["column_names"] == columns
                       for uq in inspect(conn).get_unique_constraints(obj.table.name))
    return include


def foreign_keys(conn: Connection, on: bool) -> None:
    """Switch foreign key enforcement on this connection (only possible outside a transaction):
    off while migrating, so a batch "move and copy" can drop a referenced table.

    PostgreSQL: nothing to switch. Foreign keys stay enforced during a migration; batch
    operations are plain ALTER TABLEs there, which never drop a referenced table.
    """
    if is_postgres(conn):
        return
    conn.connection.driver_connection.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def foreign_key_problems(conn: Connection) -> list[tuple]:
    """Rows that break a foreign key (PRAGMA foreign_key_check); empty when all is well.
    PostgreSQL checks every foreign key at each write: it cannot hold a broken one."""
    if is_postgres(conn):
        return []
    return [tuple(r) for r in run_sql(conn, "PRAGMA foreign_key_check").fetchall()]


