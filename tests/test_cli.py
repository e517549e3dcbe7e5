"""A whole campaign run from the `flask` CLI, as an admin with system cron would."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import select, update

from conftest import ROOT, env_for
from core import importer, leads
from models import SendLog, User
from storage.database import immediate


def invoke(runner, *args, input=None):
    result = runner.invoke(args=list(args), input=input)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_campaign_from_the_cli_end_to_end(runner, app, engine, smtp, tmp_path):
    csv = tmp_path / "leads.csv"
    csv.write_text("email;imię;firma\nANNA@Example.com ;Anna;ACME\nnot-an-address;X;Y\n"
                   "jan@example.com;Jan;Foo\nanna@example.com;;ACME 2\n", encoding="utf-8")
    out = invoke(runner, "campaign", "create", "--name", "Q4", "--from", "me@sendonce.test",
                 "--interval", "3600", "--batch-size", "5")
    cid = out.strip()
    invoke(runner, "campaign", "variant", cid, "A", "--subject", "Hi {{ first_name }}",
           "--body", "Hello from {{ company }}")
    out = runner.invoke(args=["import-leads", str(csv), "--campaign", cid])
    assert out.exit_code == 0
    assert "imported 2, merged 0, rejected 2" in out.output
    assert "line 5: same address as line 2" in out.output
    assert "line 3: invalid email 'not-an-address'" in out.output
    invoke(runner, "campaign", "start", cid)
    assert "campaign 1: sent 1" in invoke(runner, "send-due")
    assert "not_due" in invoke(runner, "send-due")  # interval holds across cron runs
    assert "pending: 1, sent: 1" in invoke(runner, "campaign", "show", cid)
    assert sorted(smtp.recorder.received) == ["anna@example.com"]


def test_start_refuses_unknown_merge_field_with_exit_code(runner, app, engine):
    cid = invoke(runner, "campaign", "create", "--name", "X").strip()
    invoke(runner, "campaign", "variant", cid, "A", "--subject", "Hi", "--body", "{{ nope }}")
    report = app.test_cli_runner()
    csv = b"email\na@b.pl\n"
    leads.enroll(engine, int(cid), importer.import_leads(engine, csv).lead_ids)
    result = report.invoke(args=["campaign", "start", cid])
    assert result.exit_code == 1 and "'nope' is undefined" in result.output


def test_bad_option_values_are_refused(runner):
    result = runner.invoke(args=["campaign", "create", "--name", "X", "--interval", "-5"])
    assert result.exit_code == 2 and "-5" in result.output
    result = runner.invoke(args=["campaign", "create", "--name", "X", "--daily-cap", "0"])
    assert result.exit_code == 2


def test_recover_and_resolve_an_unknown_send(runner, app, engine, smtp):
    from helpers import make_campaign

    cid = make_campaign(engine, 2)
    invoke(runner, "send-due")
    with immediate(engine) as conn:  # as a crash would leave it: claimed by a dead process
        conn.execute(update(SendLog.__table__).values(status="sending", worker="gone-host:1"))
    app.config["STALE_SENDING_SECONDS"] = 0
    assert "1 marked unknown" in invoke(runner, "recover")
    listing = invoke(runner, "resolve")
    assert "lead0000@example.com" in listing and "1 unknown" in listing
    result = runner.invoke(args=["resolve", "1"])
    assert result.exit_code == 2  # must say which decision
    invoke(runner, "resolve", "1", "--send-again", "--by", "ops@sendonce.test")
    invoke(runner, "send-due")
    with engine.connect() as conn:
        row = conn.execute(select(SendLog).where(SendLog.id == 1)).one()
    assert (row.status, row.decided_by, row.attempts) == ("sent", "ops@sendonce.test", 2)
    assert smtp.recorder.received["lead0000@example.com"] == 2  # a person asked for it
    assert runner.invoke(args=["resolve", "1", "--mark-sent"]).exit_code == 1  # no longer unknown
    del cid


def test_create_user_hashes_the_password(runner, app):
    invoke(runner, "create-user", "Admin@Example.com", "--password", "s3cret-pass-long")
    with app.app_context():
        from models import db

        user = db.session.scalar(select(User))
    assert user.email == "admin@example.com"
    assert "s3cret" not in user.password_hash and user.password_hash.startswith("scrypt:")
    assert user.check_password("s3cret-pass-long")
    assert runner.invoke(args=["create-user", "admin@example.com", "--password", "x"]).exit_code == 1


def test_first_run_in_a_real_process_prints_the_login_once(config, tmp_path):
    env = env_for({**config, "MAIL_BACKEND": "outbox", "OUTBOX_DIR": str(tmp_path / "outbox")})
    first = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "first-run"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "admin@example.com with password:" in first.stdout
    again = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "first-run"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
    assert "password" not in again.stdout and "existing data kept" in again.stdout
    sent = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "send-due"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0 and "sent 1" in sent.stdout
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_start_without_enrolled_leads_is_refused_with_a_reason(runner, app, engine, smtp):
    cid = invoke(runner, "campaign", "create", "--name", "Empty").strip()
    invoke(runner, "campaign", "variant", cid, "A", "--subject", "Hi", "--body", "Hello")
    refused = runner.invoke(args=["campaign", "start", cid])
    assert refused.exit_code == 1 and "no leads are enrolled" in refused.output
    assert "[draft]" in invoke(runner, "campaign", "show", cid)


def test_a_finished_campaign_with_nothing_left_is_not_started_again(runner, app, engine, smtp):
    from helpers import make_campaign

    cid = make_campaign(engine, 1, variants="A")
    invoke(runner, "send-due")
    invoke(runner, "send-due")  # finds nothing left: finished
    assert "[finished]" in invoke(runner, "campaign", "show", str(cid))
    refused = runner.invoke(args=["campaign", "start", str(cid)])
    assert refused.exit_code == 1 and "nothing to send" in refused.output


def test_import_and_enroll_exit_non_zero_when_nothing_went_in(runner, app, engine, smtp, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("email,first_name\nnot-an-address,X\nalso bad,Y\n", encoding="utf-8")
    result = runner.invoke(args=["import-leads", str(bad)])
    assert result.exit_code == 1 and "no lead was imported" in result.output
    assert "line 2: invalid email" in result.output  # each rejected row still reported
    cid = invoke(runner, "campaign", "create", "--name", "Tags").strip()
    invoke(runner, "campaign", "variant", cid, "A", "--subject", "Hi", "--body", "Hello")
    result = runner.invoke(args=["campaign", "enroll", cid, "--tag", "nobody-has-this"])
    assert result.exit_code == 1 and "no lead carries tag" in result.output
    good = tmp_path / "good.csv"
    good.write_text("email\nanna@example.com\n", encoding="utf-8")
    invoke(runner, "import-leads", str(good))
    assert "enrolled 1 new" in invoke(runner, "campaign", "enroll", cid, "--all")
    assert "enrolled 0 new (1 were enrolled already)" in invoke(runner, "campaign", "enroll", cid, "--all")
