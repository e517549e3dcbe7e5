"""Online backup, restore and reconcile, with real files, real processes and a real SMTP server."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select, text

from app import create_app
from conftest import ROOT, env_for
from helpers import logged_in_client, make_campaign
from models import Campaign, CampaignLead, SendLog, Trigger, db
from procs import spawn_workers, wait_all, wait_for
from sender import claim_next
from storage import backup
from storage.revision import HEAD
from storage.timeutil import utcnow


@pytest.fixture
def config(config, tmp_path):
    """The tests' configuration with backups in the test's folder and the secret key in a file."""
    return {**config, "BACKUP_DIR": str(tmp_path / "backups"), "SECRET_KEY": None,
            "SECRET_KEY_FILE": str(tmp_path / "secret_key")}


def run(app, *args, code: int = 0) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == code, result.output
    return result.output


def live_path(config) -> Path:
    return Path(config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))


def sent_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM send_log WHERE status = 'sent'")).scalar()


def test_backup_verifies_keeps_the_last_n_with_the_secret_key_private(app, engine, config, smtp):
    make_campaign(engine, 5, batch_size=3)
    run(app, "send-due")
    for _ in range(3):
        out = run(app, "backup", "--keep", "2")
        assert f"verified (integrity_check ok, counts equal recounts), revision {HEAD}, 3 sends" in out
    kept = sorted(Path(config["BACKUP_DIR"]).glob("sendonce-*.db"))
    assert len(kept) == 2  # the oldest went, with its key and manifest files
    assert len(list(Path(config["BACKUP_DIR"]).iterdir())) == 6
    newest = kept[-1]
    key = newest.with_name(newest.name + ".secret_key")
    assert key.read_text() == Path(config["SECRET_KEY_FILE"]).read_text()
    for path in (newest, key, newest.with_name(newest.name + ".json")):
        assert path.stat().st_mode & 0o777 == 0o600, path
    manifest = json.loads(newest.with_name(newest.name + ".json").read_text())
    assert manifest["rows"]["send_log"] == 3 and manifest["revision"] == HEAD
    assert backup.verify(newest).meta["backup_taken_at"] == manifest["taken_at"]
    health = app.test_client().get("/healthz").get_json()
    assert health["schema"] == health["schema_expected"] == HEAD
    assert health["last_backup_at"] == manifest["taken_at"] and 0 <= health["last_backup_age_seconds"] < 600


def test_a_backup_without_the_key_file_warns_loudly(app, engine, config, tmp_path, smtp):
    other = create_app({**config, "SECRET_KEY": "from-the-environment"})
    out = run(other, "backup", str(tmp_path / "mine.db"))
    assert "WARNING: SECRET_KEY is set in the configuration or environment" in out
    assert "it is NOT in this backup" in out
    assert backup.verify(tmp_path / "mine.db").revision == HEAD
    assert not (tmp_path / "mine.db.secret_key").exists()


def test_restore_refuses_what_is_not_a_sound_backup_and_changes_nothing(app, engine, config, tmp_path, smtp):
    make_campaign(engine, 3)
    before = live_path(config).read_bytes()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    assert "not restored:" in run(app, "restore", str(junk), "--yes", code=1)
    run(app, "backup", str(tmp_path / "old.db"))
    conn = sqlite3.connect(tmp_path / "old.db")  # made a backup of another schema revision
    conn.execute("UPDATE alembic_version SET version_num = '0001'")
    conn.commit()
    conn.close()
    out = run(app, "restore", str(tmp_path / "old.db"), "--yes", code=1)
    assert f"is at schema revision 0001, this code at {HEAD}" in out
    assert live_path(config).read_bytes() == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM app_meta WHERE key = 'maintenance'")).scalar() == 0


def test_restore_waits_for_sends_in_flight_and_gives_up_cleanly(app, engine, config, settings, tmp_path,
                                                                smtp):
    cid = make_campaign(engine, 3)
    run(app, "backup", str(tmp_path / "b.db"))
    claim_next(engine, settings, cid, Trigger.CLI, utcnow())  # a send in flight (status sending)
    out = run(app, "restore", str(tmp_path / "b.db"), "--yes", "--wait", "0", code=1)
    assert "1 sends are still in flight" in out
    with engine.connect() as conn:  # nothing restored, and claims are allowed again
        assert conn.execute(text("SELECT count(*) FROM send_log")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM app_meta WHERE key = 'maintenance'")).scalar() == 0


@pytest.mark.slow
def test_a_backup_taken_while_real_processes_send_restores_to_a_consistent_file(app, engine, config, tmp_path,
                                                                                 smtp):
    cid = make_campaign(engine, 400, interval=0, batch_size=5)
    # From lead 100 on the server holds each message until the backup is taken: the senders
    # are mid-campaign (each inside SMTP with a claimed row) however fast this machine is;
    # a slow backup start cannot find the campaign already finished.
    arrived, release = threading.Event(), threading.Event()
    smtp.recorder.hold.update({f"lead{i:04d}@example.com": (arrived, release) for i in range(100, 400)})
    env = env_for({**config, "SMTP_TIMEOUT": 120})  # a held message must not time out meanwhile
    workers = spawn_workers(["tick", "send-due", "button", "button"], cid, env)
    try:
        assert arrived.wait(60), "no sender reached lead 100"
        wait_for(lambda: sent_count(engine) >= 20, timeout=60)
        target = tmp_path / "during.db"
        taken = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "backup", str(target)],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        release.set()
    assert taken.returncode == 0, taken.stderr
    wait_all(workers)
    assert smtp.recorder.received == Counter({f"lead{i:04d}@example.com": 1 for i in range(400)})
    found = backup.verify(target)  # every send_log row matches its enrollment, counts = recounts
    assert 20 <= found.counts["send_log"] < 400, "the backup was taken while the senders were sending"
    run(app, "restore", str(target), "--yes")
    restored = backup.verify(live_path(config))
    assert restored.counts["send_log"] == found.counts["send_log"]
    with engine.connect() as conn:
        status, reason = conn.execute(select(Campaign.status, Campaign.pause_reason)).one()
    assert status == "paused" and "restored from a backup of" in reason


def export_csv(config, database: Path) -> bytes:
    """SendOnce's own timeline CSV export, downloaded by a logged-in person from `database`."""
    app = create_app({**config, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}"})
    client = logged_in_client(app, "ops@example.com")
    response = client.get("/timeline/export.csv")
    assert response.status_code == 200
    data = response.get_data()
    with app.app_context():
        db.engine.dispose()
    return data


@pytest.mark.slow
def test_back_up_send_more_restore_reconcile_resume_every_lead_gets_exactly_one(app, engine, config, tmp_path,
                                                                                 smtp):
    cid = make_campaign(engine, 12, interval=1, batch_size=1)
    # One real sender process lives through all of it, keeping its connections to the file open.
    worker = spawn_workers(["tick"], cid, env_for(config))
    wait_for(lambda: sent_count(engine) >= 3, timeout=60)
    run(app, "backup", str(tmp_path / "t.db"))
    in_backup = backup.verify(tmp_path / "t.db").counts["send_log"]
    wait_for(lambda: sent_count(engine) >= in_backup + 4, timeout=60)
    out = run(app, "restore", str(tmp_path / "t.db"), "--yes", "--wait", "30")
    aside = Path(re.search(r"the previous content is kept in (\S+)", out).group(1))
    assert f"paused campaigns {cid}" in out
    with engine.connect() as conn:
        status, reason = conn.execute(select(Campaign.status, Campaign.pause_reason)).one()
        assert conn.execute(text("SELECT count(*) FROM send_log")).scalar() == in_backup
    assert status == "paused" and re.fullmatch(
        r"restored from a backup of \S+ \S+ UTC: sends after \S+ \S+ UTC are not in this database", reason)
    after_backup = backup.verify(aside).counts["send_log"] - in_backup
    assert after_backup >= 4  # these went out, and the restored file does not know it
    (tmp_path / "export.csv").write_bytes(export_csv(config, aside))
    out = run(app, "reconcile", str(tmp_path / "export.csv"))
    assert f"marked {after_backup} sent, 0 unknown, {in_backup} were sent already, 0 unmatched" in out
    run(app, "campaign", "resume", str(cid))
    wait_all(worker)  # the same process sends the rest, into the restored file
    assert smtp.recorder.received == Counter({f"lead{i:04d}@example.com": 1 for i in range(12)})
    with engine.connect() as conn:
        assert conn.execute(select(CampaignLead.state).distinct()).scalars().all() == ["sent"]
        sources = conn.execute(select(SendLog.decided_by).where(SendLog.decided_by.is_not(None))).scalars()
        assert Counter(sources) == {"reconcile:export.csv": after_backup}
    backup.verify(live_path(config))


def write_log(path: Path, rows: list[list[str]]) -> Path:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def test_reconcile_applies_delivered_rows_and_lists_the_rest_without_applying_them(app, engine, tmp_path,
                                                                                   smtp):
    cid = make_campaign(engine, 6, start=False)
    other = make_campaign(engine, 0, start=False, name="empty")
    log = write_log(tmp_path / "other-system.csv", [
        ["sentAt", "email", "campaignId", "status"],
        ["2026-11-20 10:00:00", "LEAD0000@example.com", str(cid), "delivered"],
        ["2026-11-20 10:01:00", "lead0001@example.com", str(cid), "bounced"],
        ["2026-11-20 10:02:00", "nobody@example.com", str(cid), "sent"],
        ["2026-11-20 10:03:00", "lead0002@example.com", str(other), "sent"],
        ["not a time", "lead0003@example.com", str(cid), "sent"],
        ["2026-11-20 10:04:00", "lead0004@example.com", str(cid), "sent"],
    ])
    dry = run(app, "reconcile", str(log), "--dry-run")
    assert "would mark 2 sent" in dry
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM send_log")).scalar() == 0
    out = run(app, "reconcile", str(log), "--source", "old-sender")
    assert "marked 2 sent, 0 unknown, 0 were sent already, 2 unmatched, 1 not delivered, 1 unreadable" in out
    assert "line 3: not applied: status 'bounced' is not a delivery" in out
    assert f"line 4: not applied: no enrollment of nobody@example.com in campaign {cid}" in out
    assert f"line 5: not applied: no enrollment of lead0002@example.com in campaign {other}" in out
    assert "line 6: unreadable, not applied" in out
    with engine.connect() as conn:
        rows = conn.execute(select(SendLog.lead_id, SendLog.status, SendLog.decided_by, SendLog.smtp_reply,
                                   SendLog.sent_at)).all()
        states = dict(conn.execute(select(CampaignLead.lead_id, CampaignLead.state)
                                   .where(CampaignLead.campaign_id == cid)).all())
    assert sorted((r.lead_id, r.status, r.decided_by) for r in rows) == [
        (1, "sent", "reconcile:old-sender"), (5, "sent", "reconcile:old-sender")]
    assert all("delivered per old-sender" in r.smtp_reply for r in rows)
    assert Counter(states.values()) == {"sent": 2, "pending": 4}
    assert "marked 0 sent, 0 unknown, 2 were sent already" in run(app, "reconcile", str(log))  # idempotent
    backup.verify(Path(str(engine.url.database)))
    # A reconciled lead is never mailed: start the campaign and send everything.
    run(app, "campaign", "start", str(cid))
    for _ in range(6):
        run(app, "send-due")
    assert set(smtp.recorder.received) == {"lead0001@example.com", "lead0002@example.com",
                                           "lead0003@example.com", "lead0005@example.com"}


def test_reconcile_of_a_legacy_log_without_status_marks_every_row_and_refuses_an_unreadable_file(
        app, engine, tmp_path, smtp):
    cid = make_campaign(engine, 3, start=False)
    log = write_log(tmp_path / "legacy.csv", [["createdAt", "leadId", "campaignId"],
                                              ["2026-11-20T10:00:00Z", "2", str(cid)]])
    assert "marked 1 sent" in run(app, "reconcile", str(log))
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    assert "the file is empty; nothing was changed" in run(app, "reconcile", str(empty), code=1)


def test_restore_then_reconcile_from_the_cli_export_of_the_file_kept_aside(app, engine, config, tmp_path,
                                                                          smtp):
    cid = make_campaign(engine, 5, batch_size=3)
    run(app, "backup", str(tmp_path / "t0.db"))
    run(app, "send-due")  # three go out after the backup
    out = run(app, "restore", str(tmp_path / "t0.db"), "--yes")
    aside = Path(re.search(r"the previous content is kept in (\S+)", out).group(1))
    newer = create_app({**config, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{aside}"})
    export = run(newer, "timeline", "--csv", "--tz", "Europe/Warsaw")
    with newer.app_context():
        db.engine.dispose()
    lines = export.strip().splitlines()
    assert lines[0] == "time,campaign,lead,variant,status,trigger,worker" and len(lines) == 4
    (tmp_path / "sends.csv").write_text(export, encoding="utf-8")
    out = run(app, "reconcile", str(tmp_path / "sends.csv"), "--tz", "Europe/Warsaw")
    assert "marked 3 sent, 0 unknown, 0 were sent already, 0 unmatched" in out
    run(app, "campaign", "resume", str(cid))
    run(app, "send-due")
    assert smtp.recorder.received == Counter({f"lead{i:04d}@example.com": 1 for i in range(5)})
    with engine.connect() as conn:  # the time came back in UTC: the Warsaw export was read as Warsaw time
        times = conn.execute(select(SendLog.sent_at).where(SendLog.decided_by.is_not(None))).scalars().all()
    with sqlite3.connect(aside) as old:
        sent = [r[0] for r in old.execute("SELECT claimed_at FROM send_log ORDER BY id")]
    assert sorted(t.strftime("%Y-%m-%d %H:%M:%S") for t in times) == sorted(s[:19] for s in sent)
    assert "unknown time zone" in run(app, "timeline", "--csv", "--tz", "Mars/Olympus", code=2)


def test_restore_into_a_file_that_is_not_a_sendonce_database_says_what_to_do(app, engine, config, tmp_path,
                                                                             smtp):
    run(app, "backup", str(tmp_path / "b.db"))
    other = create_app({**config, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'blank.db'}"})
    out = run(other, "restore", str(tmp_path / "b.db"), "--yes", code=1)
    assert "cannot be written" in out and "run `flask --app app init-db` to make a new one" in out
    run(other, "init-db")
    assert "restored" in run(other, "restore", str(tmp_path / "b.db"), "--yes")
    with other.app_context():
        db.engine.dispose()


def test_a_send_logged_unknown_becomes_unknown_here_for_a_person_never_mailed_again(app, engine, tmp_path,
                                                                                   smtp):
    cid = make_campaign(engine, 3, start=False)
    log = write_log(tmp_path / "export.csv", [
        ["time", "campaign", "lead", "variant", "status", "trigger", "worker"],
        ["2026-11-20 10:00:00", str(cid), "lead0000@example.com", "A", "unknown", "scheduler", "h:1:x"],
    ])
    out = run(app, "reconcile", str(log))
    assert "marked 0 sent, 1 unknown" in out and "decide it with `flask --app app resolve`" in out
    assert "campaign 1\tlead0000@example.com\treconciled: may have been delivered" in run(app, "resolve")
    run(app, "campaign", "start", str(cid))
    for _ in range(3):
        run(app, "send-due")
    assert set(smtp.recorder.received) == {"lead0001@example.com", "lead0002@example.com"}
    backup.verify(Path(str(engine.url.database)))
