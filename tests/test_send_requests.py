""""Send now" as a recorded request: one request per one-time key, carried out by the process
that holds the scheduler lease (job, `flask scheduler`, `flask send-due`), progress on the
campaign page and its JSON, and a request whose process died ends "interrupted" with no lead
mailed twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app import create_app
from conftest import ROOT, app_config, env_for
from core import send_requests
from delivery import lease as leases
from helpers import csrf_token, log_in, logged_in_client, make_campaign, send_key, serve_requests
from models import ButtonPress, SendLog, SendRequest, db
from procs import wait_for
from storage import schema
from storage.database import immediate
from storage.timeutil import utcnow

pytestmark = pytest.mark.postgres


def closed_window() -> dict:
    """A one-hour send window twelve hours away: the scheduler's ticks send nothing, so every
    message in these tests is the button's (which ignores the window)."""
    start = (utcnow().hour + 12) % 24
    return {"window_start_hour": start, "window_end_hour": start + 1, "timezone": "UTC"}


def press(client, cid: int):
    """Open the campaign page and click "Wyślij kampanię" once; the POST's response."""
    page = client.get(f"/campaigns/{cid}").data
    return client.post(f"/campaigns/{cid}/send", data={"csrf_token": csrf_token(page), "key": send_key(page)})


def request_rows(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(SendRequest.__table__)).all()


def progress_json(client, cid: int, rid: int) -> dict:
    response = client.get(f"/campaigns/{cid}/requests/{rid}.json")
    assert response.status_code == 200
    return response.get_json()


# --- recording: one request per key -------------------------------------------------------------


def test_a_repeated_key_records_one_request(engine):
    cid = make_campaign(engine, 2)
    first = send_requests.record(engine, cid, "k" * 32, "anna@example.com", utcnow())
    again = send_requests.record(engine, cid, "k" * 32, "jan@example.com", utcnow())
    assert first == again
    (row,) = request_rows(engine)
    assert row.requested_by == "anna@example.com" and row.picked_at is None


def test_two_tabs_posting_one_key_at_once_record_one_request(app, engine, smtp):
    cid = make_campaign(engine, 20, batch_size=2, interval=3600)
    first = logged_in_client(app)
    second = app.test_client()
    for _round in range(5):
        page = first.get(f"/campaigns/{cid}").data
        second.set_cookie("session", first.get_cookie("session").value)  # the same login, another tab
        form = {"csrf_token": csrf_token(page), "key": send_key(page)}
        barrier, answers = threading.Barrier(2), []

        def post(client, form=form, barrier=barrier, answers=answers):
            barrier.wait()
            answers.append(client.post(f"/campaigns/{cid}/send", data=form))

        threads = [threading.Thread(target=post, args=(c,)) for c in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [302, 302]
        assert answers[0].location == answers[1].location
    assert len(request_rows(engine)) == 5
    assert serve_requests(app) == 5
    assert sum(smtp.recorder.received.values()) == 10 and max(smtp.recorder.received.values()) == 1


def test_the_click_sends_nothing_itself_and_a_bad_key_is_refused(app, client, engine, smtp):
    cid = make_campaign(engine, 3)
    log_in(app, client)
    assert press(client, cid).status_code == 302
    assert smtp.recorder.messages == [] and len(request_rows(engine)) == 1
    token = csrf_token(client.get(f"/campaigns/{cid}").data)
    too_long = {"csrf_token": token, "key": "x" * 65}
    assert client.post(f"/campaigns/{cid}/send", data=too_long).status_code == 400
    assert client.post("/campaigns/99/send", data={"csrf_token": token, "key": "y" * 32}).status_code == 404
    assert len(request_rows(engine)) == 1


# --- carrying out: the lease holder, progress -----------------------------------------------------


def test_the_lease_holder_serves_a_request_and_the_page_shows_progress_then_done(app, client, engine, smtp):
    held = "lead0001@example.com"
    arrived, release = threading.Event(), threading.Event()
    smtp.recorder.hold[held] = (arrived, release)
    cid = make_campaign(engine, 5, batch_size=3, interval=3600, timezone="Europe/Warsaw")
    log_in(app, client)
    location = press(client, cid).location
    rid = int(location.rsplit("=", 1)[1])
    waiting = progress_json(client, cid, rid)
    assert waiting["state"] == "waiting" and waiting["text"] == "Czekam na proces wysyłający…"
    assert waiting["stalled"] is False  # just clicked: not yet a reason to worry

    server = threading.Thread(target=serve_requests, args=(app,))
    server.start()
    try:
        assert arrived.wait(30), "the sending process never reached the second lead"
        sending = progress_json(client, cid, rid)
        assert sending["state"] == "sending" and sending["sent"] == 1 and sending["batch_size"] == 3
        assert sending["text"] == "Wysyłanie: 1 z 3"
        assert [(r["email"], r["status"]) for r in sending["rows"]] == [
            ("lead0000@example.com", "sent"), (held, "sending")]
        assert sending["rows"][0]["at"].endswith("(Europe/Warsaw)")  # the campaign's zone, labelled
        page = client.get(location).get_data(as_text=True)  # the same, rendered without JavaScript
        assert "Wysyłanie: 1 z 3" in page and 'data-state="sending"' in page and held in page
    finally:
        release.set()
        server.join(30)
    done = progress_json(client, cid, rid)
    assert done["state"] == "done" and done["text"] == "Zakończono: wysłano 3" and done["detail"] == ""
    assert [r["status"] for r in done["rows"]] == ["sent"] * 3
    assert "Zakończono: wysłano 3" in done["html"] and "lead0002@example.com" in done["html"]
    assert sum(smtp.recorder.received.values()) == 3
    with engine.connect() as conn:
        assert conn.execute(select(ButtonPress.key)).scalars().all() == [request_rows(engine)[0].key]


def test_a_request_that_sends_nothing_says_why(app, client, engine, smtp):
    cid = make_campaign(engine, 1, interval=3600)
    log_in(app, client)
    press(client, cid)
    serve_requests(app)
    location = press(client, cid).location  # the only lead is handled: nothing left
    serve_requests(app)
    page = client.get(location).get_data(as_text=True)
    assert "Zakończono: wysłano 0" in page
    assert "Nic do wysłania: kampania zakończona: wszystkie leady zostały obsłużone" in page


def test_a_process_that_does_not_hold_the_lease_leaves_the_request_alone(app, client, engine, smtp):
    cid = make_campaign(engine, 3)
    assert leases.acquire(engine, "elsewhere:1:abc", utcnow(), 60) is not None  # another host holds it
    log_in(app, client)
    location = press(client, cid).location
    assert serve_requests(app) is None
    assert smtp.recorder.messages == []
    assert 'data-state="waiting"' in client.get(location).get_data(as_text=True)


def test_a_request_nobody_picks_up_says_plainly_that_no_sending_process_runs(app, client, engine):
    cid = make_campaign(engine, 3)
    log_in(app, client)
    rid = send_requests.record(engine, cid, "old" * 10, "admin@example.com", utcnow() - timedelta(seconds=30))
    page = client.get(f"/campaigns/{cid}?request={rid}").get_data(as_text=True)
    assert "Żaden proces wysyłający nie działa" in page
    for command in ("make run", "flask --app app scheduler", "flask --app app send-due"):
        assert command in page
    assert progress_json(client, cid, rid)["stalled"] is True
    client.post("/language", data={"csrf_token": csrf_token(client.get("/").data), "language": "en"})
    assert "No sending process is running" in client.get(f"/campaigns/{cid}").get_data(as_text=True)
    leases.acquire(engine, "elsewhere:1:abc", utcnow(), 60)  # a live holder: it will come
    assert "No sending process is running" not in client.get(f"/campaigns/{cid}").get_data(as_text=True)


def test_another_campaigns_request_is_not_shown_or_served_by_its_url(app, client, engine):
    first, second = make_campaign(engine, 1), make_campaign(engine, 1)
    log_in(app, client)
    rid = int(press(client, first).location.rsplit("=", 1)[1])
    assert client.get(f"/campaigns/{second}/requests/{rid}.json").status_code == 404
    assert client.get(f"/campaigns/{first}/requests/999.json").status_code == 404
    assert 'id="send-request"' not in client.get(f"/campaigns/{second}?request={rid}").get_data(as_text=True)


def test_send_due_serves_open_requests_first(app, client, engine, smtp, runner):
    cid = make_campaign(engine, 6, batch_size=2, interval=3600)
    log_in(app, client)
    location = press(client, cid).location
    result = runner.invoke(args=["send-due"])
    assert result.exit_code == 0, result.output
    assert "send-now requests carried out: 1" in result.output
    # The request's batch, and no more: after it the campaign's interval is not over.
    assert sum(smtp.recorder.received.values()) == 2
    assert "Zakończono: wysłano 2" in client.get(location).get_data(as_text=True)
    assert runner.invoke(args=["send-due"]).output.count("send-now") == 0


def test_the_scheduler_job_of_a_serving_process_carries_out_a_click(tmp_path, smtp):
    app = create_app(app_config(tmp_path / "db.sqlite", smtp.port, SCHEDULER_ENABLED=True,
                                TICK_SECONDS=1, REQUEST_POLL_SECONDS=0.2))
    try:
        with app.app_context():
            # In one BEGIN IMMEDIATE, as init-db does: the scheduler's threads already run, and
            # a plain create_all's read-then-write transaction would fail at once ("database is
            # locked", no busy wait) if one of their writes came in between.
            schema.install(db.engine, db.metadata)
            cid = make_campaign(db.engine, 4, batch_size=2, interval=3600, **closed_window())
        client = logged_in_client(app)
        location = press(client, cid).location
        wait_for(lambda: 'data-state="done"' in client.get(location).get_data(as_text=True), timeout=30)
        assert sum(smtp.recorder.received.values()) == 2
    finally:
        app.extensions["sendonce_scheduler"].shutdown()
        app.extensions["sendonce_ticker"].release()
        with app.app_context():
            db.engine.dispose()


# --- a sending process killed mid-batch -----------------------------------------------------------


@pytest.mark.slow
def test_a_request_whose_process_is_killed_mid_batch_ends_interrupted_and_nobody_gets_two(
        app, client, engine, smtp, config):
    held = "lead0002@example.com"
    arrived, release = threading.Event(), threading.Event()
    smtp.recorder.hold[held] = (arrived, release)
    cid = make_campaign(engine, 8, batch_size=5, interval=3600, **closed_window())
    env = env_for({**config, "TICK_SECONDS": 1, "REQUEST_POLL_SECONDS": 0.2, "LEASE_SECONDS": 5})
    sender = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "scheduler"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log_in(app, client)
        location = press(client, cid).location
        rid = int(location.rsplit("=", 1)[1])
        assert arrived.wait(60), "the dedicated scheduler never carried out the request"
        assert progress_json(client, cid, rid)["text"] == "Wysyłanie: 2 z 5"
        os.kill(sender.pid, signal.SIGKILL)  # mid-batch, inside SMTP, holding the lease
        sender.wait(30)
    finally:
        release.set()
        if sender.poll() is None:
            sender.kill()
            sender.wait(30)

    assert serve_requests(app) == 0  # the next holder: nothing new to send, the dead one's request ended
    done = progress_json(client, cid, rid)
    assert done["state"] == "done" and done["sent"] == 2 and done["text"] == "Zakończono: wysłano 2"
    assert "Nic nie zostanie wysłane dwa razy" in done["detail"]
    assert request_rows(engine)[0].outcome == send_requests.INTERRUPTED
    assert app.test_cli_runner().invoke(args=["send-due"]).exit_code == 0  # recover: the dead claim
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(SendLog.lead_id, SendLog.status)).all())
    assert statuses == {1: "sent", 2: "sent", 3: "unknown"}  # a person decides lead0002's
    # Even a request opened again by mistake sends nothing: its key was spent by the first claim.
    with immediate(engine) as conn:
        conn.execute(update(SendRequest.__table__).values(picked_at=None, finished_at=None, outcome=""))
    assert serve_requests(app) == 1
    again = progress_json(client, cid, rid)
    assert again["detail"] == "Nic do wysłania: to kliknięcie zostało już obsłużone" and again["sent"] == 0
    assert max(smtp.recorder.received.values()) == 1 and sum(smtp.recorder.received.values()) <= 3
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(SendLog)).scalar() == 3
