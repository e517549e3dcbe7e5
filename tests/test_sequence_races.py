"""Real OS processes racing a three-step sequence (#17) against one SQLite file and a real
SMTP server, with delays of seconds in real time: each step once, in order, threaded,
never before its delay, never after a stop; a worker killed mid-step-2 leaves `unknown`."""

from __future__ import annotations

import signal
import threading
from collections import defaultdict
from datetime import timedelta

import pytest
from sqlalchemy import select

from conftest import env_for
from core import campaigns, sequences
from helpers import make_campaign
from models import CampaignLead, DelayUnit, SendLog
from procs import reap, spawn_workers, wait_all, wait_for
from sender import recover
from storage.timeutil import utcnow

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DELAYS = {2: 1, 3: 2}  # seconds after the previous step ("seconds" is the tests' hidden unit)


def three_steps(engine, n: int) -> int:
    cid = make_campaign(engine, n, start=False, variants="AB", interval=0, batch_size=5)
    for step, seconds in DELAYS.items():
        sequences.add_step(engine, cid, amount=seconds, unit=DelayUnit.SECONDS, subject=f"s{step}",
                           body=f"step {step} {{{{ unsubscribe_url }}}}", now=utcnow())
    campaigns.start(engine, cid)
    return cid


def log_rows(engine, cid: int) -> list:
    with engine.connect() as conn:
        return conn.execute(select(SendLog).where(SendLog.campaign_id == cid).order_by(SendLog.id)).all()


def enrollments(engine, cid: int) -> dict:
    with engine.connect() as conn:
        query = select(CampaignLead).where(CampaignLead.campaign_id == cid)
        return {e.lead_id: e for e in conn.execute(query)}


def by_recipient(smtp) -> dict[str, list]:
    messages = defaultdict(list)
    for msg in smtp.recorder.messages:  # in the order the server accepted them
        messages[msg["To"].split("<")[-1].rstrip(">")].append(msg)
    return messages


def assert_threaded(messages: list) -> None:
    first, second, third = messages
    assert second["Subject"] == "Re: " + first["Subject"] == third["Subject"]
    assert second["In-Reply-To"] == first["Message-ID"] and third["In-Reply-To"] == second["Message-ID"]
    assert third["References"] == f"{first['Message-ID']} {second['Message-ID']}"


def test_processes_racing_a_three_step_sequence_send_each_step_once_in_order_after_its_delay(
        engine, smtp, config):
    cid = three_steps(engine, 30)
    doomed_to_stop = [21, 22, 23, 24, 25]
    procs = spawn_workers(["tick", "tick", "send-due", "button", "button"], cid, env_for(config))
    wait_for(lambda: sum(r.step == 1 and r.status == "sent" for r in log_rows(engine, cid)) >= 25, timeout=60)
    stops = {lead: utcnow() for lead in doomed_to_stop}
    for lead, at in stops.items():  # a person (or the reply reader) stops them mid-run
        sequences.stop(engine, cid, lead, "replied", at)
    wait_all(procs)

    rows, states = log_rows(engine, cid), enrollments(engine, cid)
    steps = defaultdict(dict)
    for row in rows:
        assert row.step not in steps[row.lead_id], "a step was claimed twice"
        steps[row.lead_id][row.step] = row
    assert {r.status for r in rows} == {"sent"}
    for lead in range(1, 31):
        got = steps[lead]
        if lead in stops:  # nothing claimed after the stop was recorded
            assert all(r.claimed_at < stops[lead] for r in got.values())
            assert states[lead].state == "stopped" or sorted(got) == [1, 2, 3]
            continue
        assert sorted(got) == [1, 2, 3] and states[lead].state == "sent"
        for step, seconds in DELAYS.items():  # never before the delay after the previous step
            assert got[step].claimed_at - got[step - 1].sent_at >= timedelta(seconds=seconds)
    received = by_recipient(smtp)
    for lead in range(1, 31):
        email = f"lead{lead - 1:04d}@example.com"
        assert len(received[email]) == len(steps[lead])  # each claimed step arrived once
        if lead not in stops:
            assert_threaded(received[email])
    # The race was real: several processes and triggers sent, steps interleaved across leads.
    assert len({r.worker for r in rows}) >= 3 and len({r.trigger for r in rows}) >= 2


def test_worker_killed_mid_step_two_leaves_it_unknown_and_step_three_is_never_sent(
        engine, smtp, config, settings):
    victim = "lead0002@example.com"  # lead 3
    cid = three_steps(engine, 12)
    env = env_for(config)
    (doomed,) = spawn_workers(["button"], cid, env, delay=0)
    wait_for(lambda: smtp.recorder.received[victim] == 1, timeout=60, step=0.01)
    arrived, release = threading.Event(), threading.Event()
    smtp.recorder.hold[victim] = (arrived, release)  # its step 2 (due 1 s later) hangs in DATA
    assert arrived.wait(30), "the victim's step 2 never reached DATA"
    doomed.kill()  # SIGKILL: step 2 claimed, its outcome never recorded
    assert reap(doomed) == -signal.SIGKILL
    del smtp.recorder.hold[victim]  # from now on a re-send would be delivered and counted
    assert recover(engine, settings, utcnow()) == 1
    wait_all(spawn_workers(["button", "tick", "send-due"], cid, env))

    rows = log_rows(engine, cid)
    victim_rows = sorted((r.step, r.status) for r in rows if r.lead_id == 3)
    assert victim_rows == [(1, "sent"), (2, "unknown")], "step 3 went out after an unknown step 2"
    assert enrollments(engine, cid)[3].state == "unknown" and enrollments(engine, cid)[3].step == 2
    assert smtp.recorder.received[victim] == 1  # step 1 only: the unknown step 2 was not re-sent
    others = [r for r in rows if r.lead_id != 3]
    assert len(others) == 33 and {r.status for r in others} == {"sent"}
    assert all(smtp.recorder.received[f"lead{i:04d}@example.com"] == 3 for i in range(12) if i != 2)
