"""The chaos run, shortened (`make chaos` runs the full one): every check must hold.

gunicorn with a scheduler in each worker, a dedicated scheduler, send-due, double
clicks, pauses, stops of single leads, SIGKILLs and SIGSTOPs against one SQLite file (and,
in make test's PostgreSQL run, one PostgreSQL database) and a misbehaving SMTP server,
every campaign a three-step sequence (steps 2 and 3 due 2 s and 3 s after the previous
one); then recover, drain and reconcile (chaos/reconcile.py). A failure names the lead
and the rule it broke; the run's logs stay in the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ON_POSTGRES, ROOT, pg_cluster

pytestmark = pytest.mark.slow

# ~140 enrollments x 3 steps (~420 messages) in 2 campaigns, 2 workers: about a minute on
# two busy cores.
SHORT = ["--duration", "20", "--leads", "110", "--steps", "3", "--stop-every", "3", "--overlap", "0.25",
         "--campaigns", "2",
         "--workers", "2", "--clients", "2", "--kill-every", "4", "--freeze-every", "5",
         "--cron-every", "5", "--pause-every", "4", "--progress-every", "10",
         "--drain-timeout", "120", "--seed", "5"]


def run_chaos(workdir, *extra: str, timeout: float = 300) -> tuple[int, str]:
    """Run `python -m chaos.run` in its own process group (so a timeout leaves no process behind)."""
    command = [sys.executable, "-m", "chaos.run", *SHORT, *extra, "--workdir", str(workdir)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # run.py stops its fleet on SIGTERM
        try:
            out, _ = proc.communicate(timeout=150)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"the chaos run did not finish in {timeout}s:\n{out[-3000:]}") from None
    return proc.returncode, out


def test_short_chaos_run_keeps_every_promise(tmp_path):
    assert_every_promise_kept(tmp_path / "chaos")


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason="the chaos run on PostgreSQL; make test's second run")
def test_short_chaos_run_on_postgresql_keeps_every_promise(tmp_path):
    # The same run against PostgreSQL, in a fresh database of the session's cluster (the run
    # attaches to it through SENDONCE_PG_CLUSTER_DIR instead of starting its own).
    cluster = pg_cluster()
    report, out = assert_every_promise_kept(tmp_path / "chaos", "--database", "postgresql")
    assert f"host={cluster.dir}&" in out.splitlines()[0], out.splitlines()[0]
    integrity = report["checks"][6]
    assert integrity["name"].startswith("amcheck") and "bt_index_check" in integrity["detail"], integrity


def assert_every_promise_kept(workdir, *extra: str) -> tuple[dict, str]:
    """Run the short chaos; every check holds, every step was sent, kills and stops happened."""
    code, out = run_chaos(workdir, *extra)
    assert (workdir / "report.json").exists(), out[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    broken = {c["name"]: c["violations"][:20] for c in report["checks"] if not c["ok"]}
    assert broken == {}, out[-6000:]
    assert code == 0 and "SendOnce chaos run: PASS" in out
    assert len(report["checks"]) == 14  # incl. the mailbox pins, the step order and the stops
    assert "step 3:" in report["checks"][1]["detail"]  # the server got messages of every step
    # The chaos really happened (the killer kills something every round of ~4 s).
    journal = [json.loads(line) for line in (workdir / "journal.jsonl").read_text().splitlines()]
    assert any(item["action"] == "SIGKILL" and item["note"] == "chaos" for item in journal)
    assert any(item["action"] == "stop" for item in journal)
    return report, out


@pytest.mark.postgres
def test_the_derived_counts_check_sees_a_count_that_drifted(app, engine, settings, smtp):
    # Check 11 of the reconciliation must be able to fail: a trigger-kept count that no
    # longer matches its rows is reported with its table and key.
    from types import SimpleNamespace

    from sqlalchemy import text

    from chaos import reconcile, store

    reader = _two_sent(app, engine, settings)
    try:
        def check():
            with store.snapshot(reader) as conn:
                return reconcile.check_derived_counts(SimpleNamespace(derived=reconcile._derived(conn)))

        assert check().ok, check().violations
        with reader.begin() as conn:
            conn.execute(text("UPDATE campaign_state_count SET n = n + 1 WHERE state = 'sent'"))
            conn.execute(text("UPDATE timeline_hour SET sends = sends - 1"))
        found = check().violations
    finally:
        reader.dispose()
    assert any(v.startswith("campaign_state_count") and "kept 3, recounted 2" in v for v in found), found
    assert any(v.startswith("timeline_hour") and "kept 1, recounted 2" in v for v in found), found


def _two_sent(app, engine, settings):
    """A campaign of 3 leads, 2 of them sent; an engine for the chaos run's own reads of it."""
    from chaos import store
    from delivery.transport import make_transport
    from helpers import make_campaign
    from models import Trigger
    from sender import send_batch

    cid = make_campaign(engine, 3)
    transport = make_transport(app.config)
    send_batch(engine, settings, transport, cid, Trigger.BUTTON, limit=2)
    transport.close()
    return store.reader(app.config["SQLALCHEMY_DATABASE_URI"])


def _evidence(logs, enrollments=(), stops=(), events=()):
    """Evidence for the per-step checks, from plain rows (what the checks read of them)."""
    from datetime import timedelta

    from chaos import reconcile

    return reconcile.Evidence(
        enrollments=list(enrollments), logs={r["id"]: r for r in logs}, emails={7: "lead7@example.com"},
        suppressions={}, campaigns=[], integrity=["ok"], derived={}, events=list(events), kills={},
        host="h", presses=[], snapshots=[], sightings={}, requests={}, status_changes=[], drain_started=0.0,
        steps={1: [(1, timedelta(0)), (2, timedelta(seconds=2)), (3, timedelta(seconds=3))]},
        lead_stops=list(stops))


def _row(log_id, step, status="sent", created="2026-01-01 10:00:00", sent="2026-01-01 10:00:01",
         attempts=1):
    return {"id": log_id, "campaign_id": 1, "lead_id": 7, "step": step, "status": status,
            "created_at": created, "sent_at": sent if status == "sent" else None, "attempts": attempts,
            "smtp_reply": "250 ok", "mailbox_id": None}


def test_the_step_checks_see_an_early_or_out_of_order_step():
    # Check 13 must be able to fail: step 2 claimed 1.5 s after step 1 was sent (its delay is
    # 2 s), and step 3 claimed while step 2 is unknown.
    from chaos import reconcile

    ok = _evidence([_row(1, 1), _row(2, 2, created="2026-01-01 10:00:03",
                                      sent="2026-01-01 10:00:04"),
                    _row(3, 3, created="2026-01-01 10:00:07")])
    assert reconcile.check_step_order(ok).ok, reconcile.check_step_order(ok).violations
    early = _evidence([_row(1, 1), _row(2, 2, created="2026-01-01 10:00:02.500000")])
    found = reconcile.check_step_order(early).violations
    assert len(found) == 1 and "send_log 2 of step 2" in found[0] and "+ 2 s" in found[0], found
    unordered = _evidence([_row(1, 1), _row(2, 2, status="unknown", created="2026-01-01 10:00:03"),
                           _row(3, 3, created="2026-01-01 10:00:09")])
    found = reconcile.check_step_order(unordered).violations
    assert len(found) == 1 and "send_log 3 of step 3" in found[0] and "is unknown" in found[0], found


def test_the_final_state_check_counts_per_step():
    # An enrollment `sent` short of the last step, or moved on past an unsent step, is reported.
    from chaos import reconcile

    enrollment = {"campaign_id": 1, "lead_id": 7, "step": 2, "state": "sent", "stopped_at": None}
    found = reconcile.check_final_states(_evidence([_row(1, 1), _row(2, 2)], [enrollment])).violations
    assert len(found) == 1 and "enrollment 'sent' at step 2" in found[0], found
    complete = {**enrollment, "step": 3}
    rows = [_row(1, 1), _row(2, 2, status="unknown"), _row(3, 3)]
    found = reconcile.check_final_states(_evidence(rows, [complete])).violations
    assert len(found) == 1 and "send_log 2 of step 2 is unknown" in found[0], found
    assert reconcile.check_final_states(_evidence([_row(1, 1), _row(2, 2), _row(3, 3)], [complete])).ok


def test_the_at_most_once_check_is_per_step():
    # Two messages of different steps are not duplicates; two of one step are.
    from chaos import reconcile

    def accepted(log_id):
        return {"ev": "accepted", "campaign": 1, "rcpt": "lead7@example.com", "log_id": log_id, "t": 0.0}

    rows = [_row(1, 1), _row(2, 2)]
    assert reconcile.check_at_most_once(_evidence(rows, events=[accepted(1), accepted(2)])).ok
    found = reconcile.check_at_most_once(_evidence(rows, events=[accepted(2), accepted(2)])).violations
    assert len(found) == 1 and "2 messages of step 2" in found[0], found


def test_the_stop_check_sees_a_claim_or_retry_after_the_stop():
    # Check 14 must be able to fail: after the stop (newest send_log id 5, the lead's row 2 at
    # attempt 1), a new row 6 was claimed and row 2 was retried.
    from chaos import reconcile
    from chaos.actors import LeadStop

    stop = LeadStop(1, 7, 100.0, ended=101.0, stopped=1, max_log_id=5, attempts={1: 1, 2: 1})
    enrollment = {"campaign_id": 1, "lead_id": 7, "step": 2, "state": "stopped", "stopped_at": "x"}
    assert reconcile.check_stops(_evidence([_row(1, 1), _row(2, 2)], [enrollment], [stop])).ok
    rows = [_row(1, 1), _row(2, 2, attempts=2), _row(6, 3)]
    found = reconcile.check_stops(_evidence(rows, [enrollment], [stop])).violations
    assert any("send_log 6 of step 3" in v and "claimed after its stop" in v for v in found), found
    assert any("send_log 2 of step 2 was retried (attempt 2)" in v for v in found), found


@pytest.mark.postgres
def test_check_7_is_integrity_check_on_sqlite_and_amcheck_on_postgresql(app, engine, settings, smtp):
    # PRAGMA integrity_check is SQLite's; on PostgreSQL amcheck reads every table and every
    # B-tree index (send_log's unique keys among them) and finds nothing wrong.
    from types import SimpleNamespace

    from chaos import reconcile

    reader = _two_sent(app, engine, settings)
    try:
        lines, (name, covered) = reconcile._integrity(reader)
    finally:
        reader.dispose()
    check = reconcile.check_integrity(SimpleNamespace(integrity=lines, integrity_check=(name, covered)))
    assert check.ok, check.violations
    if ON_POSTGRES:
        assert name == reconcile.AMCHECK
        assert "verify_heapam on" in check.detail and "bt_index_check (heapallindexed) on" in check.detail
    else:
        assert (name, check.detail) == ("PRAGMA integrity_check", "ok")
    # A line that is not "ok" is a violation; "n/a" (PostgreSQL without amcheck) is not.
    bad = reconcile.check_integrity(SimpleNamespace(integrity=["send_log_pkey: corrupt"],
                                                    integrity_check=(name, covered)))
    assert bad.violations == ["integrity_check: send_log_pkey: corrupt"]
    assert reconcile.check_integrity(SimpleNamespace(integrity=["n/a"], integrity_check=(name, ""))).ok


@pytest.mark.parametrize("flags, refused", [
    (["--freeze-target", "writer"], "--freeze-target writer is SQLite's"),
    (["--db", "x.db"], "--db names the SQLite file"),
    (["--mailboxes", "0"], "needs --mailboxes >= 1"),
])
def test_sqlite_only_flags_are_refused_on_postgresql(flags, refused, capsys):
    from chaos.run import parse_args

    assert parse_args(flags).database == "sqlite"  # the default takes them all
    with pytest.raises(SystemExit):
        parse_args(["--database", "postgresql", *flags])
    assert refused in capsys.readouterr().err


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason="starts a PostgreSQL cluster; make test's second run")
def test_the_run_stops_its_own_cluster_when_it_fails(tmp_path, monkeypatch):
    # Without a cluster to attach to, the run starts its own; whatever ends the run (an error
    # here; SIGTERM is turned into one), the cluster is stopped and its directory removed.
    from chaos.run import database, parse_args
    from tests.pg_server import CLUSTER_DIR_ENV

    monkeypatch.delenv(CLUSTER_DIR_ENV, raising=False)
    seen = {}
    with pytest.raises(RuntimeError, match="mid-run"), database(parse_args(["--database", "postgresql"]),
                                                                tmp_path) as url:
        seen["url"] = url
        seen["dir"] = url.split("host=")[1].split("&")[0]
        assert os.path.isdir(seen["dir"])
        raise RuntimeError("mid-run")
    assert seen["url"].startswith("postgresql+psycopg://") and not os.path.exists(seen["dir"])
