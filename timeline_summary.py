"""The timeline's hourly summary of send_log, kept exact by SQLite triggers.

`timeline_hour` holds, per (campaign, UTC hour of claimed_at, trigger), how many send_log
rows count as sends (status `sent` or `unknown`, see SENT). Triggers on send_log keep it
inside the writer's own transaction and statement, so every writer (engine processes,
CLI, scheduler, a person with the sqlite3 shell) keeps it exact without knowing about
it, and a rollback rolls both back. The timeline page then sums a few thousand summary
rows instead of grouping a million send_log rows (timeline_rollup).

The triggers are the claim's hot-path cost, so each is one statement behind a WHEN
clause: the claim INSERTs a `sending` row (the WHEN skips it) and UPDATEs it to `sent`
(one upsert here); an outcome's other columns, `sending` -> `retry` and the like cost
only the WHEN test. Measured (10,000 INSERT + UPDATE pairs on send_log's real schema):
about +50 µs of CPU per pair, most of it SQLite's fixed cost of a statement that can
fire a trigger at all on a table with two UNIQUE constraints (a no-op trigger costs
nearly as much); lost in the noise of a whole message (2-3 ms, commit included).

Not covered: INSERT OR REPLACE deleting a send_log row fires delete triggers only with
PRAGMA recursive_triggers on. Nothing writes send_log that way (a retry updates its row).

Installing: importing this module hooks create_all (as schema.py does for its counts),
so every create_all -- init-db, first-run, schema.install, the tests, bench and chaos
set-ups -- creates the table, creates any missing or outdated trigger and then rebuilds
the summary from send_log in that same transaction: the backfill of an older database,
and the repair of one whose triggers were dropped. While the triggers stay in place the
summary needs no help, and create_all leaves it alone. install() does all of it on its
own in one BEGIN IMMEDIATE transaction.
"""

from __future__ import annotations

from sqlalchemy import Column, Engine, Integer, String, Table, bindparam, event, text
from sqlalchemy.engine import Connection

import schema
from database import immediate
from models import SendStatus, db

# A send_log row counts as a send when it went out or may have (SMTP started).
SENT = (SendStatus.SENT, SendStatus.UNKNOWN)
# The bucket label, naive UTC; the same strftime the live GROUP BY uses, so both put a
# row in the same hour whatever datetime text SQLite was given.
HOUR_FORMAT = "%Y-%m-%d %H:00"
TABLE = "timeline_hour"

timeline_hour = Table(
    TABLE, db.metadata,
    Column("campaign_id", Integer, primary_key=True, autoincrement=False),
    Column("hour", String(16), primary_key=True),
    Column("trigger", String(16), primary_key=True),
    # Can fall to 0 (a send deleted or re-queued); readers skip such rows.
    Column("sends", Integer, nullable=False),
    sqlite_with_rowid=False,  # a few rows an hour, always read by key: one B-tree, not two
)

_COUNTED = ", ".join(f"'{s}'" for s in SENT)
_HOUR = "strftime('" + HOUR_FORMAT + "', {row}.claimed_at)"
_ADD_NEW = (f'INSERT INTO {TABLE} (campaign_id, hour, "trigger", sends) '
            f'SELECT NEW.campaign_id, {_HOUR.format(row="NEW")}, NEW."trigger", 1 '
            f"WHERE NEW.status IN ({_COUNTED}) "
            'ON CONFLICT (campaign_id, hour, "trigger") DO UPDATE SET sends = sends + 1;')
_REMOVE_OLD = (f"UPDATE {TABLE} SET sends = sends - 1 WHERE campaign_id = OLD.campaign_id "
               f'AND hour = {_HOUR.format(row="OLD")} AND "trigger" = OLD."trigger" '
               f"AND OLD.status IN ({_COUNTED});")

# Name -> exact DDL, as SQLite keeps it in sqlite_master: comparing the text tells an
# installed trigger from a missing or outdated one.
TRIGGERS = {
    f"{TABLE}_insert": (f"CREATE TRIGGER {TABLE}_insert AFTER INSERT ON send_log "
                        f"WHEN NEW.status IN ({_COUNTED}) BEGIN {_ADD_NEW} END"),
    # Only when the row starts or stops counting, or a counted row changes bucket.
    f"{TABLE}_update": (f"CREATE TRIGGER {TABLE}_update "
                        'AFTER UPDATE OF status, claimed_at, campaign_id, "trigger" '
                        f"ON send_log WHEN (OLD.status IN ({_COUNTED})) <> (NEW.status IN ({_COUNTED})) "
                        f"OR (NEW.status IN ({_COUNTED}) AND (OLD.claimed_at IS NOT NEW.claimed_at "
                        'OR OLD.campaign_id IS NOT NEW.campaign_id OR OLD."trigger" IS NOT NEW."trigger")) '
                        f"BEGIN {_REMOVE_OLD} {_ADD_NEW} END"),
    f"{TABLE}_delete": (f"CREATE TRIGGER {TABLE}_delete AFTER DELETE ON send_log "
                        f"WHEN OLD.status IN ({_COUNTED}) BEGIN {_REMOVE_OLD} END"),
}


def rebuild(conn: Connection) -> None:
    """Set the summary to a live GROUP BY of send_log (inside a write transaction)."""
    conn.exec_driver_sql(f"DELETE FROM {TABLE}")
    conn.exec_driver_sql(f'INSERT INTO {TABLE} (campaign_id, hour, "trigger", sends) '
                         f'SELECT campaign_id, {_HOUR.format(row="send_log")}, "trigger", count(*) '
                         f"FROM send_log WHERE status IN ({_COUNTED}) GROUP BY 1, 2, 3")


def install_on(conn: Connection) -> bool:
    """Table, triggers and (when a trigger was missing or outdated) the rebuild, in the
    caller's write transaction. Returns whether it had anything to do."""
    new_table = not conn.dialect.has_table(conn, TABLE)
    timeline_hour.create(conn, checkfirst=True)
    if not schema.sync_triggers(conn, f"{TABLE}_", TRIGGERS, force=new_table):
        return False
    # Sends written while a trigger (or the table) was missing are unaccounted for:
    # count them all again.
    rebuild(conn)
    return True


def install(engine: Engine) -> bool:
    """install_on in one BEGIN IMMEDIATE transaction: writers wait (busy_timeout) while the
    rebuild runs, so no send slips in between the rebuild and the triggers. Idempotent."""
    with immediate(engine) as conn:
        return install_on(conn)


def _after_create_all(_metadata, conn: Connection, **_kw) -> None:
    install_on(conn)


event.listen(db.metadata, "after_create", _after_create_all)


# One statement: our triggers as install_on writes them, and a unique index on columns
# within (campaign_id, lead_id) without a WHERE clause. That index means no key and no
# (campaign, lead) appears twice in any part of send_log: the distinct counts equal the
# number of sends and there are no duplicate groups to look for.
_USABLE = text(
    "SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND sql IN :ddl) = :n "
    "AND EXISTS (SELECT 1 FROM pragma_index_list('send_log') AS il WHERE il.\"unique\" AND NOT il.partial "
    "AND NOT EXISTS (SELECT 1 FROM pragma_index_info(il.name) AS ii "
    "WHERE ii.name IS NULL OR ii.name NOT IN ('campaign_id', 'lead_id')))"
).bindparams(bindparam("ddl", list(TRIGGERS.values()), expanding=True), n=len(TRIGGERS))


def usable(conn: Connection) -> bool:
    """Whether the summary may stand in for send_log: kept by our triggers, duplicates impossible."""
    return bool(conn.execute(_USABLE).scalar())
