"""Schema migrations: the baseline is what 3a618c4 made, old databases upgrade in place losing
nothing, the derived-table triggers survive every migration, and a claim refuses to run
against a schema revision its code does not know.

On PostgreSQL (the `postgres` run) too, except what is about SQLite files by nature (the
3a618c4 fixture is an SQLite file; sqlite_master's DDL): there, the migrations build an
empty database, autogenerate finds nothing to change, the triggers come back after every
migration, the claim's gate refuses, and every id column has its sequence."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from app import MIGRATIONS, create_app
from conftest import ON_POSTGRES, app_config, database_url, env_for
from core import campaigns
from helpers import log_in, make_campaign, serve_requests
from models import DelayUnit, SchedulerLease, Trigger, db
from procs import reap, spawn_workers, wait_for
from sender import Refusal, claim_next
from storage import backup, migrate, schema
from storage.database import immediate, next_id, next_ids
from storage.revision import BASELINE, HEAD, REVISIONS, current_revision, stamp
from storage.timeutil import utcnow
from test_sequences import NOW, at, make_sequence, send_at
from test_web import csrf_token

pytestmark = pytest.mark.postgres
SQLITE_FILES = pytest.mark.skipif(ON_POSTGRES,
                                  reason="the 3a618c4 database is an SQLite file (sqlite_master)")

FIXTURE = Path(__file__).with_name("data") / "db_3a618c4.sql"
NEW_TABLES = {"alembic_version", "app_meta", "claim_heartbeat", "legacy_log", "legacy_event", "mailbox",
              "campaign_mailbox", "send_request", "alert", "campaign_step", "mailbox_folder_state",
              "inbound_message"}


def load_fixture(path: Path) -> Path:
    """A real file holding the database 3a618c4's code made (tests/data/make_db_3a618c4.py)."""
    conn = sqlite3.connect(path)
    conn.executescript(FIXTURE.read_text(encoding="utf-8"))
    conn.close()
    return path


def schema_of(path: Path, skip=NEW_TABLES) -> dict[tuple[str, str], str]:
    """Every table, index and trigger with its DDL (whitespace folded), as sqlite_master has it."""
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    conn.close()
    return {(kind, name): re.sub(r"\s+", " ", sql or "")
            for kind, name, table, sql in rows if table not in skip}


# The derived tables are recomputed by a migration: a count that fell to 0 may lose its row.
DERIVED = {"campaign_state_count": "n <> 0", "timeline_hour": "sends <> 0"}


def rows_of(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table (the derived ones' non-zero rows), in a stable order."""
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    found = {t: sorted(conn.execute(f'SELECT * FROM "{t}" WHERE {DERIVED.get(t, "1")}').fetchall(), key=repr)
             for t in tables}
    conn.close()
    return found


@pytest.fixture
def old_app(tmp_path, smtp):
    """An app on a copy of the 3a618c4 database (nothing run on it yet)."""
    path = load_fixture(tmp_path / "sendonce.db")
    app = create_app(app_config(path, smtp.port))
    yield app, path
    with app.app_context():
        db.engine.dispose()


def invoke(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


def test_the_revision_list_the_code_checks_is_alembics():
    walked = [s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions()]
    assert tuple(reversed(walked)) == REVISIONS and BASELINE == "0001"


@SQLITE_FILES
def test_the_baseline_revision_is_exactly_the_schema_3a618c4_made(tmp_path, smtp):
    app = create_app(app_config(tmp_path / "fresh.db", smtp.port))
    result = invoke(app, "db", "upgrade", BASELINE)
    assert result.exit_code == 0, result.output
    made = schema_of(tmp_path / "fresh.db")
    old = schema_of(load_fixture(tmp_path / "old.db"))
    assert made == old  # tables, unnamed UNIQUEs (autoindexes), indexes and triggers alike
    assert ("index", "sqlite_autoindex_lead_1") in made and ("trigger", "timeline_hour_insert") in made


@SQLITE_FILES
def test_a_3a618c4_database_upgrades_in_place_losing_nothing(old_app, smtp):
    app, path = old_app
    before = rows_of(path)
    with app.app_context(), db.engine.connect() as conn:
        assert current_revision(conn) is None  # made before migrations existed
    result = invoke(app, "init-db")
    assert result.exit_code == 0, result.output
    assert f"0001 (stamped) -> {HEAD}" in result.output
    after = rows_of(path)
    # Every row of every table, counts included; columns added since (the accounts' two on
    # user, revision 0004) come after the old ones, with their defaults.
    assert {t: [r[:len(before[t][0])] if before[t] else r for r in after[t]] for t in before} == before
    assert {r[-2:] for r in after["user"]} == {(0, 0)}  # session generation 0, not disabled
    assert after["alembic_version"] == [(HEAD,)] and set(after) - set(before) == NEW_TABLES
    # Revision 0007: one mailbox per distinct sender address, every campaign linked to its
    # sender's, every row sent before pinned to it (so nothing changes for these campaigns).
    senders = {r[3].strip().lower() for r in before["campaign"]}
    assert sorted(r[2] for r in after["mailbox"]) == sorted(senders)
    assert len(after["campaign_mailbox"]) == len(before["campaign"])
    assert all(r[-2] is not None for r in after["send_log"])  # mailbox_id (step comes after it)
    # Revision 0008: every campaign a one-step sequence; every row and enrollment is step 1.
    assert sorted(r[1:5] for r in after["campaign_step"]) == sorted(
        (r[0], 1, 0, "days") for r in before["campaign"])
    assert {r[-1] for r in after["send_log"]} == {1} and {r[-1] for r in after["variant"]} == {1}
    assert backup.verify(path).revision == HEAD  # integrity, foreign keys, counts = recounts
    # New sends on the upgraded file: nobody sent (or maybe sent) before gets mail again,
    # and the trigger-kept counts still equal a recount afterwards.
    result = invoke(app, "send-due")
    assert result.exit_code == 0, result.output
    done_before = [r for r in before["send_log"] if r[4] in ("sent", "unknown")]
    width = len(before["send_log"][0])  # the rows as they were, without the columns added since
    log_after = rows_of(path)["send_log"]
    assert set(done_before) <= {r[:width] for r in log_after}  # not one of them claimed again
    sent_now = sum(r[4] == "sent" for r in log_after) - sum(r[4] == "sent" for r in before["send_log"])
    admins = {r[1] for r in before["user"]}  # the old file's `unknown` sends: an alert mail to each admin
    assert {a: smtp.recorder.received[a] for a in admins} == {a: 1 for a in admins}
    assert sum(n for rcpt, n in smtp.recorder.received.items() if rcpt not in admins) == sent_now >= 10
    assert backup.verify(path).counts["send_log"] > len(before["send_log"])
    with app.app_context(), db.engine.connect() as conn:
        counts = conn.execute(text("SELECT campaign_id, state, n FROM campaign_state_count WHERE n > 0"))
        recount = conn.execute(text(schema.RECOUNT))
        counts, recount = counts.all(), recount.all()
    assert sorted(counts) == sorted(recount)
    assert f"{HEAD} -> {HEAD}" in invoke(app, "init-db").output  # again: nothing to do, nothing lost


def test_a_database_of_todays_code_before_migrations_upgrades_too(app, engine, config):
    # Made by the code of #10 with create_all: claim_heartbeat and app_meta exist, no version.
    make_campaign(engine, 3)
    with immediate(engine) as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        assert current_revision(conn) == HEAD
        assert conn.execute(text("SELECT count(*) FROM campaign_lead")).scalar() == 3


@pytest.mark.parametrize("made_by", [pytest.param("3a618c4 upgraded", marks=SQLITE_FILES),
                                     "migrations from empty", "create_all"])
def test_autogenerate_finds_no_difference_between_models_and_database(made_by, tmp_path, smtp, app):
    if made_by == "3a618c4 upgraded":
        path = load_fixture(tmp_path / "old.db")
    else:
        path = tmp_path / "other.db"
    target = app if made_by == "create_all" else create_app(app_config(path, smtp.port))
    if made_by != "create_all":
        assert invoke(target, "init-db").exit_code == 0
    with target.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "include_object": migrate.include_object_for(conn)})
        assert compare_metadata(context, db.metadata) == []
    result = invoke(target, "db", "check")
    assert result.exit_code == 0  # `flask db check` exits 1 when the models and the file differ
    if target is not app:
        with target.app_context():
            db.engine.dispose()


def recounted(engine) -> bool:
    with engine.connect() as conn:
        return all(conn.execute(text(sql)).scalar() == 0 for sql in backup.checks(conn).values())


def test_a_batch_move_and_copy_drops_the_triggers_and_every_migration_puts_them_back(app, engine, settings):
    cid = make_campaign(engine, 6)
    with immediate(engine) as conn:  # what a migration altering campaign_lead in batch mode does
        if ON_POSTGRES:  # batch operations are plain ALTERs there: a migration that re-creates a table
            for name in ("campaign_state_count_delete", "campaign_state_count_insert",
                         "campaign_state_count_update"):
                conn.execute(text(f"DROP TRIGGER {name} ON campaign_lead"))
        else:
            with Operations(MigrationContext.configure(conn)).batch_alter_table(
                    "campaign_lead", recreate="always") as batch:
                batch.alter_column("variant_letter", existing_type=db.String(2), nullable=False)
        assert migrate.missing_triggers(conn) == [
            "campaign_state_count_delete", "campaign_state_count_insert", "campaign_state_count_update"]
    campaigns.pause(engine, cid)
    with immediate(engine) as conn:  # a write the dropped triggers do not count
        conn.execute(text("UPDATE campaign_lead SET state = 'skipped' WHERE id = 1"))
    assert not recounted(engine)
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        assert migrate.missing_triggers(conn) == []
    assert recounted(engine)
    campaigns.resume(engine, cid)  # new sends after the migration keep the counts exact
    assert app.test_cli_runner().invoke(args=["send-due"]).exit_code == 0
    assert recounted(engine)


def test_upgrading_from_0009_counts_the_leads_waiting_for_a_later_step_apart(app, engine, settings, smtp):
    cid = make_sequence(engine, 3, steps=((2, DelayUnit.DAYS),))
    assert send_at(app, engine, settings, cid, NOW, limit=2).sent == 2  # two wait for step 2, one new
    with immediate(engine) as conn:  # a database at 0009: its counts by plain state
        stamp(conn, "0009")
        conn.execute(text(f"DELETE FROM {schema.COUNTS}"))
        conn.execute(text(f"INSERT INTO {schema.COUNTS} (campaign_id, state, n) "
                          f"{schema.recount_for('0009')}"))
    assert kept_counts(engine) == {(cid, "pending"): 3}
    assert recounted(engine)  # a backup taken before upgrading verifies by its own revision's counts
    result = invoke(app, "db", "upgrade")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        assert current_revision(conn) == HEAD and migrate.missing_triggers(conn) == []
        live = {(c, s): n for c, s, n in conn.execute(text(schema.RECOUNT))}
    assert kept_counts(engine) == live == {(cid, "waiting"): 2, (cid, "pending"): 1}
    assert recounted(engine)
    assert send_at(app, engine, settings, cid, at(days=2)).sent == 3  # step 1 to the third, step 2 to two
    assert kept_counts(engine) == {(cid, "sent"): 2, (cid, "waiting"): 1} and recounted(engine)


def kept_counts(engine) -> dict[tuple[int, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT campaign_id, state, n FROM {schema.COUNTS} WHERE n <> 0"))
        return {(c, s): n for c, s, n in rows}


def set_revision(engine, revision: str | None) -> None:
    with immediate(engine) as conn:
        if revision is None:
            conn.execute(text("DROP TABLE alembic_version"))
        else:
            stamp(conn, revision)


@pytest.mark.parametrize("revision, says", [
    ("0001", f"this code needs {HEAD}: run `flask --app app db upgrade`"),  # the code is newer
    ("0099", f"which this code (revision {HEAD}) does not know: it is newer; stop this process"),  # older
    (None, "no schema version this code knows; run `flask --app app db upgrade`"),  # never migrated
])
def test_every_trigger_refuses_to_claim_on_a_schema_revision_it_does_not_know(
        revision, says, app, engine, settings, client, smtp):
    cid = make_campaign(engine, 4, interval=0, batch_size=2)
    set_revision(engine, revision)
    for trigger in Trigger:
        refusal = claim_next(engine, settings, cid, trigger, utcnow())
        assert isinstance(refusal, Refusal) and refusal.code == "schema_mismatch", trigger
        assert says in refusal.detail
    result = app.test_cli_runner().invoke(args=["send-due"])
    assert result.exit_code == 1 and says in result.output
    page = _press_send(app, client, engine, cid)
    assert "Nic do wysłania: wersja programu nie zgadza się ze schematem bazy danych" in page and says in page
    assert smtp.recorder.messages == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM send_log")).scalar() == 0


def _press_send(app, client, engine, cid: int) -> str:
    log_in(app, client)
    page = client.get(f"/campaigns/{cid}").data
    form = {"csrf_token": csrf_token(page),
            "key": re.search(rb'name="key" type="hidden" value="([0-9a-f]+)"', page).group(1).decode()}
    sent = client.post(f"/campaigns/{cid}/send", data=form)
    serve_requests(app)  # the sending process carries the click out and says why nothing went
    return client.get(sent.location).get_data(as_text=True)


def test_the_gate_is_read_at_every_claim_nothing_is_cached(engine, settings, smtp):
    cid = make_campaign(engine, 4)
    first = claim_next(engine, settings, cid, Trigger.CLI, utcnow())
    assert not isinstance(first, Refusal)
    set_revision(engine, "0099")  # another process upgraded the file meanwhile
    assert claim_next(engine, settings, cid, Trigger.CLI, utcnow()).code == "schema_mismatch"
    set_revision(engine, HEAD)
    with immediate(engine) as conn:
        conn.execute(text("INSERT INTO app_meta (key, value) VALUES ('maintenance', 'restore of x')"))
    refusal = claim_next(engine, settings, cid, Trigger.SCHEDULER, utcnow())
    assert refusal.code == "maintenance" and "restore of x" in refusal.detail
    with immediate(engine) as conn:
        conn.execute(text("DELETE FROM app_meta WHERE key = 'maintenance'"))
    assert not isinstance(claim_next(engine, settings, cid, Trigger.CLI, utcnow()), Refusal)
    with engine.connect() as conn:
        assert Counter(conn.execute(select(text("status")).select_from(text("send_log"))).scalars()) == {
            "sending": 2}


def test_first_run_on_an_empty_file_builds_the_schema_by_the_migrations(tmp_path, smtp):
    app = create_app(app_config(tmp_path / "new.db", smtp.port))
    result = invoke(app, "first-run")
    assert result.exit_code == 0, result.output
    assert f"an empty database -> {HEAD}" in result.output
    with app.app_context():
        with db.engine.connect() as conn:
            assert current_revision(conn) == HEAD and migrate.missing_triggers(conn) == []
        db.engine.dispose()
    if ON_POSTGRES:
        return  # the rest compares SQLite files' DDL
    made = schema_of(tmp_path / "new.db", skip=set())
    old = schema_of(load_fixture(tmp_path / "old.db"))
    # Revisions 0004, 0005, 0007 and 0008 added columns (0008 also re-keyed variant's UNIQUE).
    # Revision 0010 re-keyed the count triggers by counted state (`waiting`).
    altered = {("table", "user"), ("table", "lead"), ("table", "send_log"), ("table", "campaign_lead"),
               ("table", "campaign"), ("table", "variant"), *(("trigger", name) for name in schema.TRIGGERS)}
    assert {k: v for k, v in made.items() if k in old and k not in altered} == {
        k: v for k, v in old.items() if k not in altered}  # the same tables as an upgraded file
    assert "session_generation" in made[("table", "user")] and "disabled" in made[("table", "user")]




@pytest.mark.slow
def test_an_old_worker_left_running_claims_nothing_once_the_schema_is_newer(engine, config, smtp):
    cid = make_campaign(engine, 300, interval=0, batch_size=1)
    worker = spawn_workers(["tick"], cid, env_for(config))[0]
    try:
        wait_for(lambda: len(smtp.recorder.messages) >= 3, timeout=60)
        set_revision(engine, "0099")  # newer code upgraded the file; this process is now old code
        with engine.connect() as conn:
            claimed = conn.execute(text("SELECT count(*) FROM send_log")).scalar()
        # Two whole ticks of the old process after the upgrade (each renews its lease first).
        upgraded_at = utcnow()
        after = wait_for(lambda: _heartbeat(engine, later_than=upgraded_at), timeout=60)
        wait_for(lambda: _heartbeat(engine, later_than=after), timeout=60)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM send_log")).scalar() == claimed
            assert conn.execute(text("SELECT count(*) FROM send_log WHERE status = 'sending'")).scalar() == 0
    finally:
        worker.terminate()
        reap(worker)
    assert len(smtp.recorder.messages) == claimed < 300


def _heartbeat(engine, later_than):
    with engine.connect() as conn:
        beat = conn.execute(select(SchedulerLease.heartbeat_at)).scalar()
    return beat if beat is not None and beat > later_than else None


def test_a_plain_create_all_stamps_a_new_file_and_leaves_an_old_one_unversioned(config, tmp_path, smtp):
    made = [(tmp_path / "new.db", HEAD)]
    if not ON_POSTGRES:  # (an old database is an SQLite file)
        made.append((load_fixture(tmp_path / "old.db"), None))
    for path, expected in made:
        app = create_app({**config, "SQLALCHEMY_DATABASE_URI": database_url(path)})
        with app.app_context():
            db.create_all()  # scripts and older tests make databases this way
            with db.engine.connect() as conn:
                assert current_revision(conn) == expected, path.name
            db.engine.dispose()


def test_init_db_never_touches_a_database_newer_code_has_upgraded(app, engine):
    set_revision(engine, "0099")
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 1
    assert f"revision 0099, which this code (revision {HEAD}) does not know" in result.output
    with engine.connect() as conn:
        assert current_revision(conn) == "0099"


# Every table whose rows get ids from storage.database.next_id / next_ids (and every other
# table with an integer id): on PostgreSQL that is the column's own sequence.
ID_TABLES = {"campaign", "lead", "suppression", "user", "campaign_lead", "send_log", "variant", "legacy_log",
             "mailbox", "send_request", "alert", "campaign_step", "inbound_message"}


@pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL's sequences (SQLite: max(id) + 1)")
@pytest.mark.parametrize("made_by", ["migrations from empty", "create_all"])
def test_every_id_column_has_its_sequence_on_postgres(made_by, tmp_path, smtp, app):
    target = app if made_by == "create_all" else create_app(app_config(tmp_path / "other.db", smtp.port))
    if made_by != "create_all":
        assert invoke(target, "init-db").exit_code == 0
    with target.app_context(), db.engine.connect() as conn:
        with_id = {t for t in inspect(conn).get_table_names()
                   if "id" in {c["name"] for c in inspect(conn).get_columns(t)}}
        assert with_id == ID_TABLES
        for table in sorted(with_id):  # next_id asks pg_get_serial_sequence(table, 'id')
            first = next_id(conn, table)
            assert next_ids(conn, table, 3) == [first + 1, first + 2, first + 3], table
    if target is not app:
        with target.app_context():
            db.engine.dispose()  # psycopg warns about a connection left to the garbage collector
