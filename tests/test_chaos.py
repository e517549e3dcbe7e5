"""The chaos run, shortened (`make chaos` runs the full one): every check must hold.

gunicorn with a scheduler in each worker, a dedicated scheduler, send-due, double
clicks, pauses, SIGKILLs and SIGSTOPs against one SQLite file and a misbehaving SMTP
server; then recover, drain and reconcile (chaos/reconcile.py). A failure names the lead
and the rule it broke; the run's logs stay in the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

# ~400 enrollments in 2 campaigns, 2 workers: about a minute on two busy cores.
SHORT = ["--duration", "20", "--leads", "320", "--overlap", "0.25", "--campaigns", "2",
         "--workers", "2", "--clients", "2", "--kill-every", "4", "--freeze-every", "5",
         "--cron-every", "5", "--pause-every", "4", "--progress-every", "10",
         "--drain-timeout", "120", "--seed", "5"]


def run_chaos(workdir, timeout: float = 300) -> tuple[int, str]:
    """Run `python -m chaos.run` in its own process group (so a timeout leaves no process behind)."""
    command = [sys.executable, "-m", "chaos.run", *SHORT, "--workdir", str(workdir)]
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
    workdir = tmp_path / "chaos"
    code, out = run_chaos(workdir)
    assert (workdir / "report.json").exists(), out[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    broken = {c["name"]: c["violations"][:20] for c in report["checks"] if not c["ok"]}
    assert broken == {}, out[-6000:]
    assert code == 0 and "SendOnce chaos run: PASS" in out
    assert len(report["checks"]) == 12  # incl. the mailbox pins (every campaign through 3 mailboxes)
    # The chaos really happened (the killer kills something every round of ~4 s).
    journal = [json.loads(line) for line in (workdir / "journal.jsonl").read_text().splitlines()]
    assert any(item["action"] == "SIGKILL" and item["note"] == "chaos" for item in journal)


def test_the_derived_counts_check_sees_a_count_that_drifted(app, engine, settings, smtp):
    # Check 11 of the reconciliation must be able to fail: a trigger-kept count that no
    # longer matches its rows is reported with its table and key.
    import sqlite3
    from types import SimpleNamespace

    from chaos import reconcile
    from delivery.transport import make_transport
    from helpers import make_campaign
    from models import Trigger
    from sender import send_batch

    cid = make_campaign(engine, 3)
    transport = make_transport(app.config)
    send_batch(engine, settings, transport, cid, Trigger.BUTTON, limit=2)
    transport.close()
    conn = sqlite3.connect(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    try:
        def check():
            return reconcile.check_derived_counts(SimpleNamespace(derived=reconcile._derived(conn)))

        assert check().ok, check().violations
        conn.execute("UPDATE campaign_state_count SET n = n + 1 WHERE state = 'sent'")
        conn.execute("UPDATE timeline_hour SET sends = sends - 1")
        conn.commit()
        found = check().violations
    finally:
        conn.close()
    assert any(v.startswith("campaign_state_count") and "kept 3, recounted 2" in v for v in found), found
    assert any(v.startswith("timeline_hour") and "kept 1, recounted 2" in v for v in found), found
