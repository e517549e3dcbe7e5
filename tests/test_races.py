"""Real OS processes against one SQLite file and one real SMTP server.

These are the incident's shapes: many senders at once, two app processes with their
schedulers on, a frozen lease holder, and a worker killed mid-send.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC
from email.utils import parseaddr

import pytest
from sqlalchemy import func, select

from conftest import ROOT, env_for
from core import mailboxes
from delivery import lease as leases
from helpers import make_campaign
from models import CampaignLead, Mailbox, SchedulerLease, SendLog
from procs import reap, spawn_workers, wait_all, wait_for
from sender import recover
from storage.secrets import Vault
from storage.timeutil import utcnow
from tests.smtp_sink import AuthSmtpSink, free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def emails(n: int) -> list[str]:
    return [f"lead{i:04d}@example.com" for i in range(n)]


def log_rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(SendLog).order_by(SendLog.claimed_at)).all()


def test_eight_processes_mixing_ticks_cron_and_button_send_each_lead_once(engine, smtp, config):
    cid = make_campaign(engine, 500, interval=0, batch_size=5)
    modes = ["tick", "tick", "tick", "send-due", "send-due", "button", "button", "button"]
    wait_all(spawn_workers(modes, cid, env_for(config)))

    assert smtp.recorder.received == Counter({e: 1 for e in emails(500)})
    rows = log_rows(engine)
    assert len(rows) == 500 and {r.status for r in rows} == {"sent"}
    with engine.connect() as conn:
        states = conn.execute(select(CampaignLead.state, func.count()).group_by(CampaignLead.state)).all()
    assert states == [("sent", 500)]
    # The race was real: several processes and more than one trigger really sent.
    assert len({r.worker for r in rows}) >= 3
    assert {r.trigger for r in rows} >= {"button"} and len({r.trigger for r in rows}) >= 2


def test_buttons_racing_in_six_processes_keep_the_daily_cap(engine, smtp, config):
    # The cap is read and spent inside the claim: on SQLite under BEGIN IMMEDIATE, on
    # PostgreSQL under the campaign row's lock (claims take the write lock shared there).
    cid = make_campaign(engine, 60, interval=0, batch_size=3, daily_cap=12)
    wait_all(spawn_workers(["button"] * 6, cid, {**env_for(config), "SENDONCE_WORKER_SECONDS": "4"}))

    assert sum(smtp.recorder.received.values()) == 12 and max(smtp.recorder.received.values()) == 1
    assert len({r.worker for r in log_rows(engine)}) >= 2  # the race was real


def test_incident_replayed_two_gunicorn_workers_with_schedulers(engine, smtp, config):
    # The incident: two app processes, each with a scheduler ticking at the same second.
    make_campaign(engine, 6, interval=2)
    env = env_for({**config, "SCHEDULER_ENABLED": True, "TICK_SECONDS": 0.5, "LEASE_SECONDS": 5})
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
                               "app:create_app()"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(log_rows(engine)) >= 4, timeout=30)
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    rows = log_rows(engine)
    assert max(smtp.recorder.received.values()) == 1
    assert len({r.worker for r in rows}) == 1, "only the lease holder may send"
    gaps = [(b.claimed_at - a.claimed_at).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]
    assert min(gaps) >= 2, f"pacing broken: {gaps}"
    assert "Booting worker" in stderr and stderr.count("Booting worker") == 2
    with engine.connect() as conn:  # released on clean shutdown: the next one need not wait
        assert conn.execute(select(SchedulerLease.holder)).scalar() == ""


def test_reloader_watcher_never_ticks(engine, smtp, config, tmp_path):
    make_campaign(engine, 3, interval=1)
    env = env_for({**config, "SCHEDULER_ENABLED": True, "TICK_SECONDS": 0.5, "LEASE_SECONDS": 5})
    # SIGINT as a terminal's Ctrl-C delivers it, even when this test runs in a background
    # job (a non-interactive shell starts those with SIGINT ignored, and children inherit it).
    watcher = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "run", "--reload",
                                "--port", str(free_port())], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: len(log_rows(engine)) >= 2, timeout=30)
        with engine.connect() as conn:
            holder = conn.execute(select(SchedulerLease.holder)).scalar()
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=30)
    pids = {r.worker.split(":")[1] for r in log_rows(engine)}
    assert pids == {holder.split(":")[1]}
    assert str(watcher.pid) not in pids, "the reloader's watcher process sent mail"
    assert max(smtp.recorder.received.values()) == 1


def test_frozen_lease_holder_sends_nothing_after_takeover(engine, smtp, config):
    victim = "lead0003@example.com"
    arrived, release = threading.Event(), threading.Event()
    smtp.recorder.hold[victim] = (arrived, release)
    cid = make_campaign(engine, 150, interval=0, batch_size=50)
    env = env_for({**config, "TICK_SECONDS": 0.2, "LEASE_SECONDS": 2, "SMTP_TIMEOUT": 0.25,
                   "STALE_SENDING_SECONDS": 1.5})
    (old,) = spawn_workers(["tick"], cid, env, delay=0)
    assert arrived.wait(30), "the holder never reached the victim's DATA"
    os.kill(old.pid, signal.SIGSTOP)  # frozen mid-batch, inside SMTP, holding the lease
    stopped_at = time.time()
    release.set()
    with engine.connect() as conn:
        old_epoch = conn.execute(select(SchedulerLease.epoch)).scalar()
    (new,) = spawn_workers(["tick"], cid, env, delay=0)
    wait_for(lambda: _epoch(engine) > old_epoch, timeout=30)
    os.kill(old.pid, signal.SIGCONT)  # wakes while the new holder is still sending
    _, old_output = wait_all([new, old])

    assert smtp.recorder.received == Counter({e: 1 for e in emails(150)})
    old_worker = f"{leases.HOST}:{old.pid}"
    late = [r for r in log_rows(engine) if r.worker == old_worker
            and r.claimed_at.replace(tzinfo=UTC).timestamp() > stopped_at + 0.5]
    assert late == [], "the fenced-off holder claimed after it was replaced"
    # Everything the old holder did: its first four sends, the last of them in flight
    # while it was frozen. After waking it claimed nothing more (fencing).
    assert old_output.split("\n")[:-1] == [f"outcome {i} sent" for i in (1, 2, 3, 4)]
    rows = {r.lead_id: r for r in log_rows(engine)}
    assert rows[4].status == "sent"  # its in-flight send completed and was recorded truthfully
    assert {r.status for r in rows.values()} == {"sent"}


def _epoch(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(SchedulerLease.epoch)).scalar() or 0


def test_worker_killed_after_claim_leaves_unknown_and_is_not_resent(engine, smtp, config, settings):
    victim = "lead0002@example.com"
    arrived, release = threading.Event(), threading.Event()
    smtp.recorder.hold[victim] = (arrived, release)
    cid = make_campaign(engine, 40, interval=0, batch_size=10)
    env = env_for(config)
    (doomed,) = spawn_workers(["button"], cid, env, delay=0)
    assert arrived.wait(30)
    doomed.kill()  # SIGKILL: claim committed, outcome never recorded
    assert reap(doomed) == -signal.SIGKILL
    # The server drops the half-done transaction when the connection dies; from now on
    # it would accept the victim at once, so any re-send would be counted.
    del smtp.recorder.hold[victim]
    assert recover(engine, settings, utcnow()) == 1
    wait_all(spawn_workers(["button", "button"], cid, env))

    rows = {r.lead_id: r for r in log_rows(engine)}
    assert rows[3].status == "unknown" and "worker gone" in rows[3].smtp_reply
    assert {r.status for k, r in rows.items() if k != 3} == {"sent"} and len(rows) == 40
    counts = smtp.recorder.received
    assert counts[victim] == 0, "the unknown send was re-sent"
    assert all(counts[e] == 1 for e in emails(40) if e != victim), "a lead was lost or mailed twice"
    with engine.connect() as conn:
        state = conn.execute(select(CampaignLead.state).where(CampaignLead.lead_id == 3)).scalar()
    assert state == "unknown"




def test_schedulers_on_two_hosts_take_over_only_after_the_lease_runs_out(engine, smtp, config):
    # #19: on PostgreSQL several app hosts share one database. A holder on another host
    # cannot be pid-checked, so its lease must run out before anyone takes over. Host A is
    # SIGKILLed in the middle of a message; host B's scheduler, running all along, waits
    # out the lease and sends the rest: every other lead exactly once, the victim (its
    # row `sending` until the sweep's stale limit) never again.
    victim = "lead0002@example.com"
    arrived = threading.Event()
    smtp.recorder.hold[victim] = (arrived, threading.Event())
    cid = make_campaign(engine, 40, interval=0, batch_size=10)
    base = env_for({**config, "TICK_SECONDS": 0.2, "LEASE_SECONDS": 6, "SMTP_TIMEOUT": 10})
    (host_a,) = spawn_workers(["tick"], cid, {**base, "SENDONCE_HOST": "host-a"}, delay=0)
    assert arrived.wait(30), "host A never reached the victim's DATA"
    (host_b,) = spawn_workers(["tick"], cid, {**base, "SENDONCE_HOST": "host-b",
                                              "SENDONCE_WORKER_SECONDS": "15"}, delay=0)
    time.sleep(0.5)
    with engine.connect() as conn:
        holder, expires = conn.execute(select(SchedulerLease.holder, SchedulerLease.expires_at)).one()
    assert holder.startswith("host-a:"), "host B took a lease that was still held"
    host_a.kill()
    assert reap(host_a) == -signal.SIGKILL
    del smtp.recorder.hold[victim]  # from now on a re-send would be accepted, and counted
    wait_all([host_b])

    counts = smtp.recorder.received
    assert counts[victim] == 0, "the in-flight send of the killed host was sent again"
    assert all(counts[e] == 1 for e in emails(40) if e != victim), "a lead was lost or mailed twice"
    rows = log_rows(engine)
    taken_over = [r.claimed_at for r in rows if r.worker.startswith("host-b:")]
    assert taken_over and min(taken_over) >= expires, "host B claimed before host A's lease ran out"
    assert [r.status for r in rows if r.lead_id == 3] == ["sending"]


def test_processes_racing_on_four_mailboxes_keep_every_cap_and_gap_and_pin(engine, config, app):
    # Four mailboxes, each with its own SMTP server and login; two campaigns share two of
    # them; the fourth has a wrong password. Ticks, cron and buttons race for 10 seconds.
    cap, gaps = 6, [1, 1, 0, 0]  # a gap is whole seconds
    with ExitStack() as stack:
        sinks = [stack.enter_context(AuthSmtpSink({f"box{i}": f"pw{i}"})) for i in range(4)]
        vault = Vault(app.config["MAILBOX_KEY_FILE"])
        boxes = [mailboxes.create(engine, vault, name=f"Box {i}", address=f"box{i}@firma.pl", backend="smtp",
                                  smtp_host="127.0.0.1", smtp_port=sink.port, smtp_security="none",
                                  smtp_username=f"box{i}", smtp_password="wrong" if i == 3 else f"pw{i}",
                                  daily_cap=cap, min_gap_seconds=gaps[i])
                 for i, sink in enumerate(sinks)]
        first, second = make_campaign(engine, 30, batch_size=3), make_campaign(engine, 30, batch_size=3)
        mailboxes.link(engine, first, boxes[:3])
        mailboxes.link(engine, second, boxes[1:])
        env = {**env_for(config), "SENDONCE_WORKER_SECONDS": "10"}
        procs = spawn_workers(["tick", "tick", "send-due", "button"], first, env)
        procs += spawn_workers(["send-due", "button"], second, env)
        wait_all(procs)

        rows = {r.message_id: r for r in log_rows(engine)}
        per_campaign_lead = Counter()
        for i, sink in enumerate(sinks):
            got = sink.recorder.messages
            assert len(got) <= cap, f"mailbox {i} over its cap at its own server"
            for message, (login, recipient) in zip(got, sink.recorder.identities, strict=True):
                row = rows[message["Message-ID"]]
                # Pinned: sent through this mailbox, logged in as it, From it, and the lead stays pinned.
                assert (row.mailbox_id, login, parseaddr(message["From"])[1]) == (
                    boxes[i], f"box{i}", f"box{i}@firma.pl")
                per_campaign_lead[(row.campaign_id, recipient)] += 1
        assert per_campaign_lead and max(per_campaign_lead.values()) == 1  # every lead once per campaign
        assert [len(s.recorder.messages) for s in sinks] == [cap, cap, cap, 0]  # caps reached, never passed
        by_box = {}
        for row in sorted(rows.values(), key=lambda r: r.claimed_at):
            by_box.setdefault(row.mailbox_id, []).append(row.claimed_at)
        for i, box in enumerate(boxes[:2]):  # the gap, across both campaigns and every process
            times = by_box[box]
            assert min((b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)) >= gaps[i]
        with engine.connect() as conn:
            status = dict(conn.execute(select(Mailbox.id, Mailbox.status)).all())
            pins = conn.execute(select(CampaignLead.campaign_id, CampaignLead.lead_id,
                                       CampaignLead.mailbox_id).where(CampaignLead.mailbox_id.is_not(None))).all()
        assert status == {boxes[0]: "active", boxes[1]: "active", boxes[2]: "active", boxes[3]: "paused"}
        sent_through = {(r.campaign_id, r.lead_id): r.mailbox_id for r in rows.values()}
        assert {(c, lead): m for c, lead, m in pins} == sent_through
        # The race was real: more than one process claimed.
        assert len({r.worker for r in rows.values()}) >= 2
