"""The three holes of issue #10, each broken open with real processes, then held shut.

1. A claimer slower than the stale limit gets a retryable answer after the sweep made its
   row `unknown` and the campaign `finished`: the lead must be sent (once), not stranded.
2. A person chooses "send again" on that `unknown` row while its claimer is frozen in
   the middle of SMTP: when the claimer wakes it must not deliver a second copy.
3. "Send again" / "mark as sent" are refused while the claimer still heartbeats the claim.
The slowness is injected with the SMTP server (RCPT held) and SIGSTOP; the sweep and the
person's decision run with an injected clock where real waiting is not the point.
"""

from __future__ import annotations

import math
import os
import re
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

import sender
from app import create_app
from conftest import app_config, env_for
from delivery import lease as leases
from delivery.messages import build_message
from delivery.transport import NOT_SENT_LATE, OutboxTransport, SmtpTransport, stale_floor
from helpers import make_campaign, make_unknown
from models import Campaign, CampaignLead, ClaimHeartbeat, SendLog
from procs import spawn_workers, wait_all, wait_for
from sender import claim_next, recover, resolve_unknown, send_batch
from storage.database import immediate
from storage.timeutil import utcnow
from test_web import csrf_token, login  # noqa: F401 - the login fixture

pytestmark = pytest.mark.postgres

VICTIM = "lead0000@example.com"
FAST = {"SMTP_TIMEOUT": 0.5, "STALE_SENDING_SECONDS": 3, "HEARTBEAT_SECONDS": 0.2}


@pytest.fixture
def config(tmp_path, smtp) -> dict:
    # A send's deadline is 4 x SMTP_TIMEOUT = 2 s; the stale limit its floor, 3 s.
    return app_config(tmp_path / "sendonce.db", smtp.port, **FAST)


def held_at_rcpt(smtp) -> tuple[threading.Event, threading.Event]:
    arrived, release = threading.Event(), threading.Event()
    smtp.recorder.hold_rcpt[VICTIM] = (arrived, release)
    return arrived, release


def row(engine):
    with engine.connect() as conn:
        return conn.execute(select(SendLog)).one()


def states(engine) -> tuple[str, str]:
    with engine.connect() as conn:
        return (conn.execute(select(Campaign.status)).scalar_one(),
                conn.execute(select(CampaignLead.state)).scalar_one())


def frozen_at_rcpt(engine, config, smtp):
    """A one-lead campaign whose claimer process is SIGSTOPped while the server holds its
    RCPT: claim committed, nothing sent. Returns (process, campaign id, the RCPT release)."""
    arrived, release = held_at_rcpt(smtp)
    cid = make_campaign(engine, 1, variants="A")
    (claimer,) = spawn_workers(["once"], cid, env_for(config), delay=0)
    assert arrived.wait(30), "the claimer never reached RCPT"
    os.kill(claimer.pid, signal.SIGSTOP)
    return claimer, cid, release


def tick_now(app, engine, settings, cid, now=None):
    """What any other process's tick does: the sweep, then a batch (logical `now`)."""
    now = now or utcnow()
    recover(engine, settings, now)
    transport = SmtpTransport("127.0.0.1", app.config["SMTP_PORT"], timeout=5)
    try:
        return send_batch(engine, settings, transport, cid, "cli", clock=lambda: now)
    finally:
        transport.close()


@pytest.mark.slow
def test_a_retryable_answer_after_the_sweep_is_sent_once_not_stranded(app, engine, settings, config, smtp):
    claimer, cid, release = frozen_at_rcpt(engine, config, smtp)
    try:
        later = row(engine).claimed_at + timedelta(seconds=settings.stale_seconds + 1)
        tick_now(app, engine, settings, cid, later)  # another process: sweep, nothing left
        assert row(engine).status == "unknown" and states(engine) == ("finished", "unknown")
        smtp.recorder.rcpt_replies[VICTIM] = ["451 4.7.1 greylisted, try again later"]
        release.set()
    finally:
        os.kill(claimer.pid, signal.SIGCONT)
    wait_all([claimer])
    # The late 451 is knowledge that nothing was delivered: back in the queue, and the
    # finished campaign is awake again to send it (it used to stay `retry` forever).
    assert row(engine).status == "retry" and states(engine) == ("active", "sending")
    tick_now(app, engine, settings, cid)
    assert smtp.recorder.received[VICTIM] == 1
    assert (row(engine).status, row(engine).attempts) == ("sent", 2)
    tick_now(app, engine, settings, cid)
    assert states(engine) == ("finished", "sent")


@pytest.mark.slow
def test_send_again_while_the_claimer_is_frozen_in_smtp_delivers_once(app, engine, settings, config, smtp):
    claimer, cid, release = frozen_at_rcpt(engine, config, smtp)
    try:
        # Frozen past its send deadline (2 s): when it wakes, DATA must not go out.
        time.sleep(settings.send_deadline + 0.5)
        later = row(engine).claimed_at + timedelta(seconds=settings.stale_seconds + 1)
        recover(engine, settings, later)
        assert row(engine).status == "unknown"
        # A person, following the README, sends it again; another process does so.
        decided = resolve_unknown(engine, settings, row(engine).id, "send-again", "ops@example.com", later)
        assert decided is None
        release.set()  # the server now answers the frozen claimer's RCPT, and everyone else's
        tick_now(app, engine, settings, cid, later)
        assert smtp.recorder.received[VICTIM] == 1
    finally:
        os.kill(claimer.pid, signal.SIGCONT)
    (out,) = wait_all([claimer])
    assert "outcome 1 retry" in out  # it woke, found its deadline gone, hung up before DATA
    assert smtp.recorder.received[VICTIM] == 1, "the woken claimer delivered a second copy"
    final = row(engine)
    assert (final.status, final.attempts, final.decided_by) == ("sent", 2, "ops@example.com")


@pytest.mark.slow
def test_no_decision_while_the_claimer_heartbeats_even_if_its_row_looks_abandoned(
        engine, settings, tmp_path, smtp, runner):
    # A long SMTP timeout keeps the claimer alive, waiting at RCPT, and heartbeating.
    slow = app_config(tmp_path / "sendonce.db", smtp.port, SMTP_TIMEOUT=5, HEARTBEAT_SECONDS=0.2)
    arrived, release = held_at_rcpt(smtp)
    cid = make_campaign(engine, 1, variants="A")
    (claimer,) = spawn_workers(["once"], cid, env_for(slow), delay=0)
    try:
        assert arrived.wait(30), "the claimer never reached RCPT"
        wait_for(lambda: _beats(engine), timeout=30)
        # The row looks abandoned by its age alone (a sweep by a host whose clock ran
        # ahead, or an old version's sweep): only the heartbeat says its process lives.
        make_unknown(engine, claimed_seconds_ago=3600)
        refusal = resolve_unknown(engine, settings, 1, "send-again", "ops@example.com")
        assert refusal is not None and refusal.code == "still_sending"
        assert resolve_unknown(engine, settings, 1, "mark-sent", "ops@example.com").code == "still_sending"
        listing = runner.invoke(args=["resolve"]).output
        assert "still sending: decide after" in listing
        refused = runner.invoke(args=["resolve", "1", "--send-again"])
        assert refused.exit_code == 1 and "may still be working on it" in refused.output
    finally:
        release.set()
    wait_all([claimer])
    # Its definite answer arrived after all: the row is `sent`, the lead got one message.
    assert smtp.recorder.received[VICTIM] == 1 and row(engine).status == "sent"
    assert resolve_unknown(engine, settings, 1, "send-again", "ops@example.com").code == "not_unknown"


def _beats(engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(ClaimHeartbeat)).all())


# --- the pieces each of those rests on ------------------------------------------------


def test_the_send_log_page_says_wait_while_the_claim_is_heartbeaten(app, client, engine, settings,
                                                                    login):  # noqa: F811
    cid = make_campaign(engine, 1, variants="A")
    claim = claim_next(engine, settings, cid, "button", utcnow())
    make_unknown(engine)
    login()  # first: a slow login (scrypt, a loaded machine) must not outlast the beat

    def beat() -> None:  # the claimer's process, still alive, beats its claim
        leases.beat(engine, [leases.InFlight(engine, claim.send_log_id, claim.worker, claim.attempts, 1,
                                             0, math.inf)], utcnow())

    beat()
    page = client.get(f"/campaigns/{cid}/log?status=unknown").get_data(as_text=True)
    assert "still-sending" in page and "action=send-again" not in page
    confirm = client.get("/sends/1/resolve?action=send-again")
    form = {"action": "send-again", "csrf_token": csrf_token(confirm.data)}
    beat()
    done = client.post("/sends/1/resolve", data=form, follow_redirects=True).get_data(as_text=True)
    assert "nothing changed" in done or "nic nie zmieniono" in done.lower()
    assert row(engine).status == "unknown" and row(engine).decided_by is None
    # Once the beats stop (older than 3 x HEARTBEAT_SECONDS), the person may decide.
    with immediate(engine) as conn:
        conn.execute(update(ClaimHeartbeat.__table__).values(beat_at=utcnow() - timedelta(minutes=5)))
    page = client.get(f"/campaigns/{cid}/log?status=unknown").get_data(as_text=True)
    assert "action=send-again" in page and "still-sending" not in page


def test_a_fresh_claim_cannot_be_decided_before_its_stale_limit(engine, settings):
    # Made `unknown` by the pid check alone (its worker looked dead), the row still waits
    # out the stale limit: a pid check cannot prove a process will never send.
    cid = make_campaign(engine, 1, variants="A")
    now = utcnow()
    claim_next(engine, settings, cid, "button", now)
    make_unknown(engine, claimed_seconds_ago=0)
    early = resolve_unknown(engine, settings, 1, "send-again", "ops@example.com", now + timedelta(seconds=1))
    assert early.code == "still_sending"
    late = now + timedelta(seconds=settings.stale_seconds + 1)
    assert resolve_unknown(engine, settings, 1, "send-again", "ops@example.com", late) is None


def test_the_sweep_leaves_a_heartbeaten_claim_alone(engine, settings):
    cid = make_campaign(engine, 1, variants="A")
    now = utcnow()
    claim = claim_next(engine, settings, cid, "button", now)
    later = now + timedelta(seconds=settings.stale_seconds + 60)
    leases.beat(engine, [leases.InFlight(engine, claim.send_log_id, claim.worker, claim.attempts, 1, 0,
                                         math.inf)], later)
    assert recover(engine, settings, later) == 0 and row(engine).status == "sending"
    stale_beat = later + timedelta(seconds=settings.heartbeat_stale + 1)
    assert recover(engine, settings, stale_beat) == 1 and row(engine).status == "unknown"


def test_a_claim_of_an_older_attempt_does_not_vouch_for_the_row(engine, settings):
    cid = make_campaign(engine, 1, variants="A")
    now = utcnow()
    claim = claim_next(engine, settings, cid, "button", now)
    later = now + timedelta(seconds=settings.stale_seconds + 60)
    old = leases.InFlight(engine, claim.send_log_id, claim.worker, claim.attempts - 1, 1, 0, math.inf)
    leases.beat(engine, [old], later)
    assert recover(engine, settings, later) == 1


def test_every_process_has_its_own_random_identity():
    me = leases.worker_id()
    host, pid, random = me.split(":")
    assert (host, pid) == (leases.HOST, str(os.getpid())) and len(random) == 8
    assert leases.worker_id() == me  # the same for the life of the process
    assert not leases.is_dead_here(me)


# --- the transport's deadline ---------------------------------------------------------


def test_no_data_is_sent_once_the_deadline_has_passed(smtp, make_msg):
    transport = SmtpTransport("127.0.0.1", smtp.port, timeout=5)
    try:
        result = transport.send(make_msg(), "team@sendonce.test", VICTIM, time.monotonic() - 1)
        assert (result.status, result.reply) == ("retry", NOT_SENT_LATE)
        arrived, release = held_at_rcpt(smtp)
        # The deadline passes while the server holds RCPT: DATA must never start.
        threading.Timer(0.6, release.set).start()
        result = transport.send(make_msg(), "team@sendonce.test", VICTIM, time.monotonic() + 0.3)
        assert result.status == "retry"
        assert arrived.is_set() and smtp.recorder.received[VICTIM] == 0
        del smtp.recorder.hold_rcpt[VICTIM]
        assert transport.send(make_msg(), "team@sendonce.test", VICTIM, time.monotonic() + 5).status == "sent"
    finally:
        transport.close()
    assert smtp.recorder.received[VICTIM] == 1


def test_the_outbox_writes_nothing_after_the_deadline(tmp_path, make_msg):
    outbox = OutboxTransport(tmp_path / "outbox")
    assert outbox.send(make_msg(), "a@sendonce.test", VICTIM, time.monotonic() - 1).status == "retry"
    assert list((tmp_path / "outbox").iterdir()) == []
    assert outbox.send(make_msg(), "a@sendonce.test", VICTIM).status == "sent"


@pytest.fixture
def make_msg():
    def make():
        return build_message(from_address="team@sendonce.test", from_name="", to_address=VICTIM, to_name="",
                             subject="s", body="b", msg_id=f"<t.{time.monotonic_ns()}@sendonce.test>",
                             unsubscribe_url="http://sendonce.test/u")
    return make


# --- configuration: the floor ---------------------------------------------------------


def test_a_stale_limit_below_its_floor_is_refused_at_start(tmp_path, smtp):
    with pytest.raises(ValueError, match="below its floor 6"):
        create_app(app_config(tmp_path / "x.db", smtp.port, SMTP_TIMEOUT=1, STALE_SENDING_SECONDS=5))
    app = create_app(app_config(tmp_path / "y.db", smtp.port, SMTP_TIMEOUT=1))
    assert app.config["STALE_SENDING_SECONDS"] == stale_floor(1) + 60 == 66


def test_the_guarantees_ledger_names_only_tests_that_exist():
    # sender.py's docstring is the ledger of promises: a test renamed or deleted must not
    # leave a promise pointing at nothing.
    tests = Path(__file__).parent
    defined = set()
    for path in tests.glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    named = re.findall(r"::(test_\w+\*?)", sender.__doc__)
    assert len(named) > 30
    missing = [n for n in named if not (n.rstrip("*") in defined if not n.endswith("*")
                                        else any(d.startswith(n[:-1]) for d in defined))]
    assert missing == []
