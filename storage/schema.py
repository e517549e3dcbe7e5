"""What create_all cannot declare: triggers that keep derived tables exact, and their install.

campaign_state_count holds, per campaign and enrollment state, how many campaign_lead rows
are in that state, so the dashboard reads ~60 rows instead of grouping a million. SQLite
triggers maintain it, not application code: they run inside the very transaction (and
statement) that changes campaign_lead, whoever writes it (the engine, the importer, the
CLI, a person with the sqlite3 shell), so the counts are never ahead of or behind the rows.

Installing is idempotent and also migrates older databases: a hook on create_all (wired in
models.py, so every create_all in the code base runs it) creates any missing or outdated
trigger and then recomputes the counts from campaign_lead in the same transaction. That
recompute is the backfill of a database made by an earlier version, and the repair of one
whose triggers were dropped; while the triggers stay in place the counts need no help.
install() runs create_all and the hook in one BEGIN IMMEDIATE transaction, so no writer
can slip in between the backfill and the first trigger firing.

One caveat, by SQLite's rules: a REPLACE conflict resolution that deletes a campaign_lead
row fires delete triggers only with PRAGMA recursive_triggers on. Nothing in SendOnce
writes campaign_lead with INSERT OR REPLACE (enrollment is ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from database import immediate

COUNTS = "campaign_state_count"
_BUMP = (f"INSERT INTO {COUNTS} (campaign_id, state, n) VALUES (NEW.campaign_id, NEW.state, 1) "
         "ON CONFLICT (campaign_id, state) DO UPDATE SET n = n + 1;")
_DROP = f"UPDATE {COUNTS} SET n = n - 1 WHERE campaign_id = OLD.campaign_id AND state = OLD.state;"

# Name -> exact DDL. SQLite keeps this text in sqlite_master (without "IF NOT EXISTS"), so
# comparing it tells an installed trigger from a missing or older one.
TRIGGERS = {
    f"{COUNTS}_insert": f"CREATE TRIGGER {COUNTS}_insert AFTER INSERT ON campaign_lead "
                        f"BEGIN {_BUMP} END",
    f"{COUNTS}_delete": f"CREATE TRIGGER {COUNTS}_delete AFTER DELETE ON campaign_lead "
                        f"BEGIN {_DROP} END",
    # WHEN: an UPDATE that rewrites the same state (or touches other columns) costs nothing.
    f"{COUNTS}_update": f"CREATE TRIGGER {COUNTS}_update AFTER UPDATE OF campaign_id, state ON campaign_lead "
                        "WHEN OLD.campaign_id IS NOT NEW.campaign_id OR OLD.state IS NOT NEW.state "
                        f"BEGIN {_DROP} {_BUMP} END",
}


def install(engine: Engine) -> None:
    """Create missing tables and install the triggers (with a backfill when they were not
    there): one BEGIN IMMEDIATE transaction. Safe to run at any time, any number of times."""
    import timeline_summary  # noqa: F401 - registers timeline_hour and its create_all hook
    from models import Base  # models imports this module for its create_all hook

    with immediate(engine) as conn:
        Base.metadata.create_all(conn)  # fires install_triggers below, on this connection


def install_triggers(_metadata, conn: Connection, **_kw) -> None:
    """The create_all hook: (re)create our triggers if any is missing or differs, then
    recompute the counts, in the caller's transaction. Does nothing when all are in place."""
    if sync_triggers(conn, f"{COUNTS}_", TRIGGERS):
        recount(conn)


def sync_triggers(conn: Connection, prefix: str, triggers: dict[str, str], force: bool = False) -> bool:
    """Make the triggers named `prefix*` exactly `triggers` (name -> DDL); whether it had to.

    SQLite keeps each trigger's DDL text in sqlite_master, so comparing it tells an
    installed trigger from a missing or outdated one. A caller whose triggers changed
    recounts what they maintain: rows written meanwhile were not counted.
    """
    rows = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").all()
    installed = {name: sql for name, sql in rows if name.startswith(prefix)}
    if installed == triggers and not force:
        return False
    for name in installed:
        conn.exec_driver_sql(f"DROP TRIGGER {name}")
    for ddl in triggers.values():
        conn.exec_driver_sql(ddl)
    return True


def recount(conn: Connection) -> None:
    """Set the counts to a live GROUP BY of campaign_lead (run inside a write transaction)."""
    conn.exec_driver_sql(f"DELETE FROM {COUNTS}")
    conn.exec_driver_sql(f"INSERT INTO {COUNTS} (campaign_id, state, n) "
                         "SELECT campaign_id, state, count(*) FROM campaign_lead GROUP BY campaign_id, state")
