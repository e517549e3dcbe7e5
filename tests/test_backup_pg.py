"""Backup, restore and /healthz on PostgreSQL: pg_dump archives, pg_restore in one transaction,
the same rules as SQLite's restore (maintenance flag, sends in flight, campaigns paused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select, text

from app import create_app
from conftest import ON_POSTGRES
from helpers import make_campaign
from models import Campaign, Trigger
from sender import claim_next
from storage import pgdump
from storage.revision import HEAD
from storage.timeutil import utcnow

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not ON_POSTGRES, reason="pg_dump/pg_restore: the PostgreSQL run only")]


@pytest.fixture
def config(config, tmp_path):
    return {**config, "BACKUP_DIR": str(tmp_path / "backups"), "SECRET_KEY": None,
            "SECRET_KEY_FILE": str(tmp_path / "secret_key")}


def run(app, *args, code: int = 0) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == code, result.output
    return result.output


def count(engine, sql: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def test_backup_is_a_checked_pg_dump_archive_kept_n_with_its_manifest(app, engine, config, smtp):
    make_campaign(engine, 5, batch_size=3)
    run(app, "send-due")
    for _ in range(3):
        out = run(app, "backup", "--keep", "2")
        assert f"verified (pg_dump snapshot; counts equal recounts; pg_restore reads it), revision {HEAD}, " \
               "3 sends" in out
    kept = sorted(Path(config["BACKUP_DIR"]).glob("sendonce-*.dump"))
    assert len(kept) == 2
    newest = kept[-1]
    manifest = json.loads(newest.with_name(newest.name + ".json").read_text())
    assert manifest["rows"]["send_log"] == 3 and manifest["revision"] == HEAD
    assert "password" not in manifest["database"]
    for path in (newest, *(newest.with_name(newest.name + suffix) for suffix in (".secret_key", ".json"))):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert pgdump.archive_revision(newest) == HEAD
    health = app.test_client().get("/healthz").get_json()
    assert health["database"] == "ok" and health["schema"] == HEAD
    assert health["last_backup_at"] == manifest["taken_at"] and 0 <= health["last_backup_age_seconds"] < 600


def test_restore_puts_the_archive_back_paused_and_keeps_the_previous_content(app, engine, config, smtp,
                                                                             tmp_path):
    cid = make_campaign(engine, 6, batch_size=2)
    run(app, "send-due")
    run(app, "backup", str(tmp_path / "two.dump"))
    run(app, "send-due")
    assert count(engine, "SELECT count(*) FROM send_log") == 4
    out = run(app, "restore", str(tmp_path / "two.dump"), "--yes")
    assert "into postgresql+psycopg://" in out and f"paused campaigns {cid}" in out
    assert count(engine, "SELECT count(*) FROM send_log") == 2
    assert count(engine, "SELECT count(*) FROM app_meta WHERE key = 'maintenance'") == 0
    with engine.connect() as conn:
        status, reason = conn.execute(select(Campaign.status, Campaign.pause_reason)).one()
    assert status == "paused" and "restored from a backup of" in reason
    aside = list(Path(config["BACKUP_DIR"]).glob("before-restore-*.dump"))
    assert len(aside) == 1 and pgdump.archive_revision(aside[0]) == HEAD
    # The sequences came back with the rows: the next claims take new ids, sends continue.
    run(app, "campaign", "resume", str(cid))
    run(app, "send-due")
    assert count(engine, "SELECT count(*) FROM send_log") == 4
    assert count(engine, "SELECT count(DISTINCT lead_id) FROM send_log") == 4


def test_restore_refuses_what_is_not_an_archive_of_this_revision_and_changes_nothing(app, engine, smtp,
                                                                                     tmp_path):
    make_campaign(engine, 3)
    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"not an archive" * 100)
    out = run(app, "restore", str(junk), "--yes", code=1)
    assert "not restored:" in out and "not a pg_dump archive" in out and "copy-to" in out
    run(app, "backup", str(tmp_path / "old.dump"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    run(app, "backup", str(tmp_path / "older.dump"))
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE alembic_version SET version_num = '{HEAD}'"))
    out = run(app, "restore", str(tmp_path / "older.dump"), "--yes", code=1)
    assert f"is at schema revision 0001, this code at {HEAD}" in out
    assert count(engine, "SELECT count(*) FROM app_meta WHERE key = 'maintenance'") == 0


def test_restore_waits_for_sends_in_flight_and_gives_up_cleanly(app, engine, settings, tmp_path, smtp):
    cid = make_campaign(engine, 3)
    run(app, "backup", str(tmp_path / "b.dump"))
    claim_next(engine, settings, cid, Trigger.CLI, utcnow())  # a send in flight (status sending)
    out = run(app, "restore", str(tmp_path / "b.dump"), "--yes", "--wait", "0", code=1)
    assert "1 sends are still in flight" in out
    assert count(engine, "SELECT count(*) FROM send_log") == 1
    assert count(engine, "SELECT count(*) FROM app_meta WHERE key = 'maintenance'") == 0


def test_healthz_is_503_when_the_server_is_unreachable(config, tmp_path):
    url = f"postgresql+psycopg://postgres@/nothing?host={tmp_path / 'no-server'}&port=5432"
    app = create_app({**config, "SQLALCHEMY_DATABASE_URI": url})
    assert app.test_client().get("/healthz").status_code == 503
