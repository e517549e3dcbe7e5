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

from sqlalchemy import Engine, MetaData, bindparam, text
from sqlalchemy.engine import Connection

from storage.database import immediate
from storage.revision import stamp

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


def install(engine: Engine, metadata: MetaData) -> None:
    """Create missing tables and install the triggers (with a backfill when they were not
    there): one BEGIN IMMEDIATE transaction. Safe to run at any time, any number of times.
    A new database is stamped with this code's schema revision (install_triggers); an
    existing one keeps its own (upgrading it is the migrations' job: init-db, `db upgrade`)."""
    with immediate(engine) as conn:
        metadata.create_all(conn)  # fires install_triggers below, on this connection


def install_triggers(metadata: MetaData, conn: Connection, tables=(), **_kw) -> None:
    """The create_all hook: (re)create each trigger set if any of it is missing or differs,
    then recompute what it maintains, in the caller's transaction. Does nothing when all
    are in place. A create_all that made every table made a new database: it is stamped
    with this code's schema revision (Alembic's recipe: create_all, then stamp the head)."""
    if {t.name for t in tables} == set(metadata.tables):
        stamp(conn)
    if conn.dialect.name == "postgresql":  # TEMPORARY (#19): plpgsql triggers come next
        return
    if sync_triggers(conn, f"{COUNTS}_", TRIGGERS):
        recount(conn)
    if SUMMARY in metadata.tables:
        install_summary_on(conn, metadata)


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


# --- The timeline's hourly summary (table timeline_hour, declared in models.py) ---
#
# `timeline_hour` holds, per (campaign, UTC hour of claimed_at, trigger), how many send_log
# rows count as sends (status `sent` or `unknown`, see SENT). Triggers on send_log keep it
# inside the writer's own transaction and statement, so every writer (engine processes,
# CLI, scheduler, a person with the sqlite3 shell) keeps it exact without knowing about
# it, and a rollback rolls both back. The timeline page then sums a few thousand summary
# rows instead of grouping a million send_log rows (timeline/live.py).
#
# The triggers are the claim's hot-path cost, so each is one statement behind a WHEN
# clause: the claim INSERTs a `sending` row (the WHEN skips it) and UPDATEs it to `sent`
# (one upsert here); an outcome's other columns, `sending` -> `retry` and the like cost
# only the WHEN test. Measured (10,000 INSERT + UPDATE pairs on send_log's real schema):
# about +50 µs of CPU per pair, most of it SQLite's fixed cost of a statement that can
# fire a trigger at all on a table with two UNIQUE constraints (a no-op trigger costs
# nearly as much); lost in the noise of a whole message (2-3 ms, commit included).
#
# Not covered: INSERT OR REPLACE deleting a send_log row fires delete triggers only with
# PRAGMA recursive_triggers on. Nothing writes send_log that way (a retry updates its row).
#
# Installing: install_triggers (the create_all hook models.py wires) also runs
# install_summary_on, so every create_all -- init-db, first-run, install, the tests, bench
# and chaos set-ups -- creates the table, creates any missing or outdated trigger and then
# rebuilds the summary from send_log in that same transaction: the backfill of an older
# database, and the repair of one whose triggers were dropped. While the triggers stay in
# place the summary needs no help, and create_all leaves it alone. install_summary() does
# all of it on its own in one BEGIN IMMEDIATE transaction.

# A send_log row counts as a send when it went out or may have (SMTP started).
SENT = ("sent", "unknown")  # SendStatus.SENT, SendStatus.UNKNOWN (storage sits below models)
# The bucket label, naive UTC; the same strftime the live GROUP BY uses, so both put a
# row in the same hour whatever datetime text SQLite was given.
HOUR_FORMAT = "%Y-%m-%d %H:00"
SUMMARY = "timeline_hour"


_COUNTED = ", ".join(f"'{s}'" for s in SENT)
_HOUR = "strftime('" + HOUR_FORMAT + "', {row}.claimed_at)"
_ADD_NEW = (f'INSERT INTO {SUMMARY} (campaign_id, hour, "trigger", sends) '
            f'SELECT NEW.campaign_id, {_HOUR.format(row="NEW")}, NEW."trigger", 1 '
            f"WHERE NEW.status IN ({_COUNTED}) "
            'ON CONFLICT (campaign_id, hour, "trigger") DO UPDATE SET sends = sends + 1;')
_REMOVE_OLD = (f"UPDATE {SUMMARY} SET sends = sends - 1 WHERE campaign_id = OLD.campaign_id "
               f'AND hour = {_HOUR.format(row="OLD")} AND "trigger" = OLD."trigger" '
               f"AND OLD.status IN ({_COUNTED});")

# Name -> exact DDL, as SQLite keeps it in sqlite_master: comparing the text tells an
# installed trigger from a missing or outdated one.
SUMMARY_TRIGGERS = {
    f"{SUMMARY}_insert": (f"CREATE TRIGGER {SUMMARY}_insert AFTER INSERT ON send_log "
                        f"WHEN NEW.status IN ({_COUNTED}) BEGIN {_ADD_NEW} END"),
    # Only when the row starts or stops counting, or a counted row changes bucket.
    f"{SUMMARY}_update": (f"CREATE TRIGGER {SUMMARY}_update "
                        'AFTER UPDATE OF status, claimed_at, campaign_id, "trigger" '
                        f"ON send_log WHEN (OLD.status IN ({_COUNTED})) <> (NEW.status IN ({_COUNTED})) "
                        f"OR (NEW.status IN ({_COUNTED}) AND (OLD.claimed_at IS NOT NEW.claimed_at "
                        'OR OLD.campaign_id IS NOT NEW.campaign_id OR OLD."trigger" IS NOT NEW."trigger")) '
                        f"BEGIN {_REMOVE_OLD} {_ADD_NEW} END"),
    f"{SUMMARY}_delete": (f"CREATE TRIGGER {SUMMARY}_delete AFTER DELETE ON send_log "
                        f"WHEN OLD.status IN ({_COUNTED}) BEGIN {_REMOVE_OLD} END"),
}


# What the summary holds when exact: a live GROUP BY of send_log (also the backup check's).
SUMMARY_QUERY = (f'SELECT campaign_id, {_HOUR.format(row="send_log")}, "trigger", count(*) '
                 f"FROM send_log WHERE status IN ({_COUNTED}) GROUP BY 1, 2, 3")


def rebuild_summary(conn: Connection) -> None:
    """Set the summary to a live GROUP BY of send_log (inside a write transaction)."""
    conn.exec_driver_sql(f"DELETE FROM {SUMMARY}")
    conn.exec_driver_sql(f'INSERT INTO {SUMMARY} (campaign_id, hour, "trigger", sends) {SUMMARY_QUERY}')


def install_summary_on(conn: Connection, metadata: MetaData) -> bool:
    """Table, triggers and (when a trigger was missing or outdated) the rebuild, in the
    caller's write transaction. Returns whether it had anything to do."""
    new_table = not conn.dialect.has_table(conn, SUMMARY)
    metadata.tables[SUMMARY].create(conn, checkfirst=True)
    if not sync_triggers(conn, f"{SUMMARY}_", SUMMARY_TRIGGERS, force=new_table):
        return False
    # Sends written while a trigger (or the table) was missing are unaccounted for:
    # count them all again.
    rebuild_summary(conn)
    return True


def install_summary(engine: Engine, metadata: MetaData) -> bool:
    """install_summary_on in one BEGIN IMMEDIATE transaction: writers wait (busy_timeout) while the
    rebuild runs, so no send slips in between the rebuild and the triggers. Idempotent."""
    with immediate(engine) as conn:
        return install_summary_on(conn, metadata)


# One statement: our triggers as install_on writes them, and a unique index on columns
# within (campaign_id, lead_id, step) without a WHERE clause. That index means no key and
# no (campaign, lead, step) appears twice in any part of send_log: the distinct counts
# equal the number of sends and there are no duplicate groups to look for.
_USABLE = text(
    "SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND sql IN :ddl) = :n "
    "AND EXISTS (SELECT 1 FROM pragma_index_list('send_log') AS il WHERE il.\"unique\" AND NOT il.partial "
    "AND NOT EXISTS (SELECT 1 FROM pragma_index_info(il.name) AS ii "
    "WHERE ii.name IS NULL OR ii.name NOT IN ('campaign_id', 'lead_id', 'step')))"
).bindparams(bindparam("ddl", list(SUMMARY_TRIGGERS.values()), expanding=True), n=len(SUMMARY_TRIGGERS))


def summary_usable(conn: Connection) -> bool:
    """Whether the summary may stand in for send_log: kept by our triggers, duplicates impossible."""
    if conn.dialect.name == "postgresql":  # TEMPORARY (#19): no plpgsql triggers yet, so never
        return False
    return bool(conn.execute(_USABLE).scalar())
