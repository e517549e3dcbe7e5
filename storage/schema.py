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

PostgreSQL (#19): the same triggers as plpgsql functions (PgTrigger below), one per
trigger and named after it, run FOR EACH ROW with the same WHEN clauses; the same tables,
the same counts, the same hour labels (hour_sql). PostgreSQL rewrites a trigger's DDL
(pg_get_triggerdef), so an installed set is told from a missing or outdated one by what
we wrote ourselves: the function's source (pg_proc.prosrc), the trigger's table, function
and enabled flag, and its comment, which holds the CREATE TRIGGER we ran (a trigger
dropped and re-created by anyone else has no such comment). installed_triggers and
wanted_triggers give both dialects' views; the rest of the module reads the same on both.

One caveat, by SQLite's rules: a REPLACE conflict resolution that deletes a campaign_lead
row fires delete triggers only with PRAGMA recursive_triggers on. Nothing in SendOnce
writes campaign_lead with INSERT OR REPLACE (enrollment is ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, MetaData, bindparam, text
from sqlalchemy.engine import Connection

from storage.database import immediate, is_postgres
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
    if sync_triggers(conn, COUNTS):
        recount(conn)
    if SUMMARY in metadata.tables:
        install_summary_on(conn, metadata)


def sync_triggers(conn: Connection, derived: str, force: bool = False) -> bool:
    """Make the triggers that keep table `derived` (COUNTS or SUMMARY) exactly this code's,
    in the caller's transaction; whether it had to.

    Any trigger of the set missing or differing (installed_triggers vs wanted_triggers)
    re-creates the whole set. A caller whose triggers changed recounts what they
    maintain: rows written meanwhile were not counted.
    """
    prefix = f"{derived}_"
    installed = installed_triggers(conn, prefix)
    if installed == wanted_triggers(conn, derived) and not force:
        return False
    if is_postgres(conn):
        _create_pg(conn, installed, _PG_SETS[derived])
        return True
    for name in installed:
        conn.exec_driver_sql(f"DROP TRIGGER {name}")
    for ddl in _SQLITE_SETS[derived].values():
        conn.exec_driver_sql(ddl)
    return True


def installed_triggers(conn: Connection, prefix: str) -> dict[str, Any]:
    """The installed triggers named `prefix*`, each as wanted_triggers describes one.

    SQLite: its DDL text as sqlite_master keeps it. PostgreSQL: (table, function, the
    function's source, enabled flag, the trigger's comment) -- what we wrote ourselves.
    """
    if not is_postgres(conn):
        rows = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").all()
        return {name: sql for name, sql in rows if name.startswith(prefix)}
    rows = conn.execute(_PG_INSTALLED, {"prefix": prefix}).all()
    return {name: tuple(rest) for name, *rest in rows if name.startswith(prefix)}


def wanted_triggers(conn: Connection, derived: str) -> dict[str, Any]:
    """This code's triggers for table `derived`, as installed_triggers reads installed ones."""
    if not is_postgres(conn):
        return dict(_SQLITE_SETS[derived])
    return {name: trigger.fingerprint(name) for name, trigger in _PG_SETS[derived].items()}


def stale_triggers(conn: Connection) -> list[str]:
    """Names of derived-table triggers (both sets) absent or differing from this code's."""
    return sorted(_stale(conn, COUNTS) + _stale(conn, SUMMARY))


def _stale(conn: Connection, derived: str) -> list[str]:
    installed = installed_triggers(conn, f"{derived}_")
    return [name for name, want in wanted_triggers(conn, derived).items() if installed.get(name) != want]


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


# PostgreSQL's to_char pattern for HOUR_FORMAT: the very same text.
_PG_HOUR_FORMAT = "YYYY-MM-DD HH24:00"


def _hour(column: str, postgres: bool) -> str:
    if postgres:
        return f"to_char({column}, '{_PG_HOUR_FORMAT}')"
    return f"strftime('{HOUR_FORMAT}', {column})"


def hour_sql(column: str, bind: Any) -> str:
    """SQL text for a datetime column's summary hour label (HOUR_FORMAT's text, "2026-03-02
    08:00"), in the dialect of `bind`: the triggers, the rebuild and the backup check agree.
    A bare sqlite3 connection (a backup file's) is SQLite."""
    return _hour(column, hasattr(bind, "dialect") and is_postgres(bind))


_COUNTED = ", ".join(f"'{s}'" for s in SENT)


def _add_new(postgres: bool) -> str:
    # PostgreSQL: a bare `sends` in DO UPDATE would be ambiguous (the row or EXCLUDED's).
    sends = f"{SUMMARY}.sends" if postgres else "sends"
    return (f'INSERT INTO {SUMMARY} (campaign_id, hour, "trigger", sends) '
            f'SELECT NEW.campaign_id, {_hour("NEW.claimed_at", postgres)}, NEW."trigger", 1 '
            f"WHERE NEW.status IN ({_COUNTED}) "
            f'ON CONFLICT (campaign_id, hour, "trigger") DO UPDATE SET sends = {sends} + 1;')


def _remove_old(postgres: bool) -> str:
    return (f"UPDATE {SUMMARY} SET sends = sends - 1 WHERE campaign_id = OLD.campaign_id "
            f'AND hour = {_hour("OLD.claimed_at", postgres)} AND "trigger" = OLD."trigger" '
            f"AND OLD.status IN ({_COUNTED});")


_ADD_NEW, _REMOVE_OLD = _add_new(False), _remove_old(False)

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


def summary_query(bind: Any) -> str:
    """What the summary holds when exact: a live GROUP BY of send_log (also the backup
    check's), in the dialect of `bind`."""
    return (f'SELECT campaign_id, {hour_sql("send_log.claimed_at", bind)}, "trigger", count(*) '
            f"FROM send_log WHERE status IN ({_COUNTED}) GROUP BY 1, 2, 3")


def rebuild_summary(conn: Connection) -> None:
    """Set the summary to a live GROUP BY of send_log (inside a write transaction)."""
    conn.exec_driver_sql(f"DELETE FROM {SUMMARY}")
    conn.exec_driver_sql(f'INSERT INTO {SUMMARY} (campaign_id, hour, "trigger", sends) {summary_query(conn)}')


def install_summary_on(conn: Connection, metadata: MetaData) -> bool:
    """Table, triggers and (when a trigger was missing or outdated) the rebuild, in the
    caller's write transaction. Returns whether it had anything to do."""
    new_table = not conn.dialect.has_table(conn, SUMMARY)
    metadata.tables[SUMMARY].create(conn, checkfirst=True)
    if not sync_triggers(conn, SUMMARY, force=new_table):
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
    if not is_postgres(conn):
        return bool(conn.execute(_USABLE).scalar())
    return not _stale(conn, SUMMARY) and bool(conn.execute(_PG_UNIQUE).scalar())


# PostgreSQL: the same unique index test through pg_index (no partial, no expression index).
_PG_UNIQUE = text(
    "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass('send_log') "
    "AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey::int2[]) AS k(attnum) "
    "LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
    "WHERE a.attname IS NULL OR a.attname NOT IN ('campaign_id', 'lead_id', 'step')))")


# --- PostgreSQL: the same triggers as plpgsql functions ---

@dataclass(frozen=True)
class PgTrigger:
    """One PostgreSQL trigger and its plpgsql function, both named after the trigger."""

    table: str
    events: str  # "AFTER INSERT", "AFTER UPDATE OF state", ...
    body: str  # the statements, as in the SQLite trigger (with PostgreSQL's spelling)
    when: str = ""  # the trigger's WHEN condition: a no-op write skips the function call

    @property
    def source(self) -> str:
        """The function's body, exactly as pg_proc.prosrc keeps it."""
        return f" BEGIN {self.body} RETURN NULL; END "

    def ddl(self, name: str) -> str:
        when = f" WHEN ({self.when})" if self.when else ""
        return (f"CREATE TRIGGER {name} {self.events} ON {self.table} FOR EACH ROW{when} "
                f"EXECUTE FUNCTION {name}()")

    def fingerprint(self, name: str) -> tuple:
        """What _PG_INSTALLED reads of this trigger once installed as created here."""
        return (self.table, name, self.source, "O", self.ddl(name))


_PG_BUMP = (f"INSERT INTO {COUNTS} (campaign_id, state, n) VALUES (NEW.campaign_id, NEW.state, 1) "
            f"ON CONFLICT (campaign_id, state) DO UPDATE SET n = {COUNTS}.n + 1;")
_PG_COUNTED = f"NEW.status IN ({_COUNTED})"

PG_TRIGGERS = {
    f"{COUNTS}_insert": PgTrigger("campaign_lead", "AFTER INSERT", _PG_BUMP),
    f"{COUNTS}_delete": PgTrigger("campaign_lead", "AFTER DELETE", _DROP),
    f"{COUNTS}_update": PgTrigger(
        "campaign_lead", "AFTER UPDATE OF campaign_id, state", f"{_DROP} {_PG_BUMP}",
        "OLD.campaign_id IS DISTINCT FROM NEW.campaign_id OR OLD.state IS DISTINCT FROM NEW.state"),
}

PG_SUMMARY_TRIGGERS = {
    f"{SUMMARY}_insert": PgTrigger("send_log", "AFTER INSERT", _add_new(True), _PG_COUNTED),
    f"{SUMMARY}_update": PgTrigger(
        "send_log", 'AFTER UPDATE OF status, claimed_at, campaign_id, "trigger"',
        f"{_remove_old(True)} {_add_new(True)}",
        f"(OLD.status IN ({_COUNTED})) <> ({_PG_COUNTED}) OR ({_PG_COUNTED} AND "
        "(OLD.claimed_at IS DISTINCT FROM NEW.claimed_at OR OLD.campaign_id IS DISTINCT FROM NEW.campaign_id "
        'OR OLD."trigger" IS DISTINCT FROM NEW."trigger"))'),
    f"{SUMMARY}_delete": PgTrigger("send_log", "AFTER DELETE", _remove_old(True),
                                   f"OLD.status IN ({_COUNTED})"),
}

_SQLITE_SETS = {COUNTS: TRIGGERS, SUMMARY: SUMMARY_TRIGGERS}
_PG_SETS = {COUNTS: PG_TRIGGERS, SUMMARY: PG_SUMMARY_TRIGGERS}

# Our triggers as installed, in the search path's schema (internal ones, e.g. foreign keys', left out).
_PG_INSTALLED = text(
    "SELECT t.tgname, c.relname, p.proname, p.prosrc, t.tgenabled::text, "
    "obj_description(t.oid, 'pg_trigger') "
    "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
    "WHERE NOT t.tgisinternal AND pg_table_is_visible(c.oid) AND starts_with(t.tgname, :prefix)")


def _create_pg(conn: Connection, installed: dict[str, Any], triggers: dict[str, PgTrigger]) -> None:
    """Drop the installed triggers of a set, then create its functions, triggers and comments."""
    for name, (table, *_rest) in installed.items():
        conn.exec_driver_sql(f'DROP TRIGGER {name} ON "{table}"')
    for name, trigger in triggers.items():
        conn.exec_driver_sql(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
                             f"AS $${trigger.source}$$")
        conn.exec_driver_sql(trigger.ddl(name))
        conn.exec_driver_sql(f"COMMENT ON TRIGGER {name} ON {trigger.table} IS "
                             f"'{trigger.ddl(name).replace(chr(39), chr(39) * 2)}'")
