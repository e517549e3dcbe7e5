"""Faults injected at a real SMTP server: each ends in the right, accounted state."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from app import create_app
from conftest import sqlite_only
from delivery.transport import make_transport
from helpers import make_campaign
from models import Campaign, CampaignLead, Lead, SendLog, SendStatus, Suppression, Trigger, Variant, db
from sender import Settings, send_batch
from storage.database import immediate
from tests.smtp_sink import SmtpSink, free_port

pytestmark = pytest.mark.postgres

VICTIM = "lead0000@example.com"


def run_batch(app, campaign_id: int, limit: int = 10):
    with app.app_context():
        transport = make_transport(app.config)
        try:
            return send_batch(db.engine, Settings.from_config(app.config), transport,
                              campaign_id, Trigger.BUTTON, limit=limit)
        finally:
            transport.close()


def rows(engine, *columns):
    with engine.connect() as conn:
        return conn.execute(select(*columns)).all()


def test_transient_421_and_451_are_retried_on_the_same_row_then_sent_once(app, engine, smtp):
    smtp.recorder.rcpt_replies[VICTIM] = ["421 4.7.0 try again later"]
    smtp.recorder.data_replies[VICTIM] = ["451 4.3.0 busy"]
    cid = make_campaign(engine, 1)
    batch = run_batch(app, cid)
    assert [r.status for _, r in batch.outcomes] == ["retry", "retry", "sent"]
    assert smtp.recorder.received[VICTIM] == 1
    assert rows(engine, SendLog.status, SendLog.attempts) == [("sent", 3)]


def test_transient_failures_give_up_after_max_attempts(config, smtp):
    app = create_app({**config, "MAX_ATTEMPTS": 3, "PAUSE_AFTER_FAILURES": 100})
    with app.app_context():
        db.create_all()
        smtp.recorder.rcpt_replies[VICTIM] = ["450 mailbox busy"] * 10
        cid = make_campaign(db.engine, 1)
        run_batch(app, cid)
        assert rows(db.engine, SendLog.status, SendLog.attempts) == [("failed", 3)]
        assert rows(db.engine, CampaignLead.state) == [("failed",)]
    assert smtp.recorder.received[VICTIM] == 0


def test_permanent_550_on_recipient_fails_and_suppresses(app, engine, smtp):
    smtp.recorder.rcpt_replies[VICTIM] = ["550 5.1.1 no such user"]
    cid = make_campaign(engine, 2)
    run_batch(app, cid)
    with engine.connect() as conn:
        log = dict(conn.execute(select(SendLog.lead_id, SendLog.status)).all())
        suppressed = conn.execute(select(Suppression.email, Suppression.reason)).all()
    assert log == {1: "failed", 2: "sent"}
    assert suppressed == [(VICTIM, "bounce")]
    # A later campaign skips the address without talking to the server.
    second = make_campaign(engine, 1)
    run_batch(app, second)
    with engine.connect() as conn:
        state = conn.execute(select(CampaignLead.state).where(CampaignLead.campaign_id == second)).scalar()
    assert state == "skipped" and smtp.recorder.received[VICTIM] == 0


def test_disconnect_after_data_is_unknown_and_never_resent(app, engine, smtp):
    smtp.recorder.drop_after_data.add(VICTIM)
    cid = make_campaign(engine, 3)
    run_batch(app, cid)
    run_batch(app, cid)
    with engine.connect() as conn:
        log = dict(conn.execute(select(SendLog.lead_id, SendLog.status)).all())
    assert log == {1: "unknown", 2: "sent", 3: "sent"}
    assert smtp.recorder.received[VICTIM] == 1  # the server got it once; we never retried


def test_wrong_credentials_pause_the_campaign_with_the_reason(tmp_path):
    with SmtpSink(password="right") as sink:
        from conftest import app_config

        app = create_app(app_config(tmp_path / "db.sqlite", sink.port,
                                    SMTP_USERNAME="team", SMTP_PASSWORD="wrong",
                                    SMTP_ALLOW_PLAINTEXT_AUTH=True))
        with app.app_context():
            db.create_all()
            cid = make_campaign(db.engine, 3)
            batch = run_batch(app, cid)
            campaign = db.session.get(Campaign, cid)
            assert campaign.status == "paused"
            assert "535" in campaign.pause_reason
            assert rows(db.engine, SendLog.status) == [("retry",)]  # certainly not delivered
            assert batch.stopped_by.code == "not_active"
            assert "wrong" not in campaign.pause_reason  # the password is never echoed
        assert sum(sink.recorder.received.values()) == 0


def test_consecutive_failures_pause_the_campaign(config, smtp):
    app = create_app({**config, "PAUSE_AFTER_FAILURES": 3, "RETRY_BASE_SECONDS": 600})
    for i in range(5):
        smtp.recorder.data_replies[f"lead{i:04d}@example.com"] = ["451 queue full"]
    with app.app_context():
        db.create_all()
        cid = make_campaign(db.engine, 5)
        run_batch(app, cid)
        campaign = db.session.get(Campaign, cid)
        assert campaign.status == "paused" and "3 failed sends in a row" in campaign.pause_reason
        assert rows(db.engine, SendLog.status) == [("retry",)] * 3


def test_server_down_is_a_retry_not_a_loss(config):
    app = create_app({**config, "SMTP_PORT": free_port(), "RETRY_BASE_SECONDS": 600})
    with app.app_context():
        db.create_all()
        cid = make_campaign(db.engine, 1)
        batch = run_batch(app, cid)
        assert batch.outcomes[0][1].status == "retry"
        assert rows(db.engine, SendLog.status) == [("retry",)]
        assert rows(db.engine, CampaignLead.state) == [("sending",)]


@pytest.mark.parametrize("reply", ["554 5.6.0 content rejected", "552 too big"])
def test_permanent_refusal_of_the_message_fails_without_suppressing(app, engine, smtp, reply):
    smtp.recorder.data_replies[VICTIM] = [reply]
    cid = make_campaign(engine, 1)
    run_batch(app, cid)
    assert rows(engine, SendLog.status) == [("failed",)]
    assert rows(engine, Suppression.email) == []


def test_a_template_that_breaks_mid_campaign_pauses_it_and_loses_no_lead(app, engine, smtp):
    cid = make_campaign(engine, 3)
    with immediate(engine) as conn:  # as if edited behind the validator's back
        conn.execute(update(Variant.__table__).values(body="Hi {{ nickname }}"))
    batch = run_batch(app, cid)
    with app.app_context():
        campaign = db.session.get(Campaign, cid)
        assert campaign.status == "paused" and "nickname" in campaign.pause_reason
    assert [r.status for _, r in batch.outcomes] == ["retry"]
    assert rows(engine, SendLog.status) == [("retry",)]  # not failed: the lead is kept
    assert sum(smtp.recorder.received.values()) == 0


class StalledWriter:
    """Another process's writer frozen inside its transaction: it holds the write lock for
    `seconds` (ten times the apps' 100 ms busy_timeout below) once started."""

    def __init__(self, config: dict, seconds: float = 1.0) -> None:
        import threading

        self.url = config["SQLALCHEMY_DATABASE_URI"]
        self.seconds, self.held = seconds, threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        # Its own engine, as another process has: SQLite's BEGIN IMMEDIATE, or PostgreSQL's
        # exclusive write lock (storage.database), held while it sleeps.
        from sqlalchemy import create_engine

        from storage.database import configure_engine

        other = create_engine(self.url)
        configure_engine(other)
        with immediate(other):
            self.held.set()
            time.sleep(self.seconds)
        other.dispose()

    def start(self) -> None:
        self.thread.start()
        self.held.wait()


@pytest.fixture
def impatient_app(config):
    """An app whose writers give up after 100 ms of waiting for the lock."""
    app = create_app({**config, "SQLITE_BUSY_TIMEOUT_MS": 100})
    with app.app_context():
        db.create_all()
        yield app, db.engine, Settings.from_config(app.config)
        db.engine.dispose()  # PostgreSQL's connections are closed, not left to the collector


def test_a_known_outcome_waits_out_a_writer_stalled_past_busy_timeout(config, smtp, impatient_app):
    # Found by the chaos run: a process frozen while holding the write lock made record()
    # give up with "database is locked", and a delivered message became `unknown`.
    from delivery.transport import Result
    from sender import claim_next, record
    from storage.timeutil import utcnow

    _, engine, settings = impatient_app
    cid = make_campaign(engine, 1)
    claim = claim_next(engine, settings, cid, Trigger.BUTTON, utcnow())
    stalled = StalledWriter(config)
    stalled.start()
    record(engine, settings, claim, Result(SendStatus.SENT, "250 OK"), utcnow())
    stalled.thread.join()
    assert rows(engine, SendLog.status) == [("sent",)]


def test_an_answer_left_for_the_next_claim_is_stored_even_when_that_claim_fails(config, smtp, impatient_app):
    # In a batch the server's answer is stored by the next claim's transaction (one
    # commit per message). Here that transaction cannot even begin (another writer
    # stalls past busy_timeout): the answer must still be stored, not left `sending`.
    from sqlalchemy.exc import OperationalError

    app, engine, settings = impatient_app
    cid = make_campaign(engine, 2)
    stalled = StalledWriter(config)

    class StallAfterFirstSend:
        def __init__(self, inner) -> None:
            self.inner = inner

        def send(self, msg, sender, recipient, deadline=float("inf")):
            result = self.inner.send(msg, sender, recipient)
            stalled.start()
            return result

        def close(self) -> None:
            self.inner.close()

    transport = StallAfterFirstSend(make_transport(app.config))
    with pytest.raises(OperationalError, match="locked|lock timeout"):
        send_batch(engine, settings, transport, cid, Trigger.BUTTON, limit=2)
    stalled.thread.join()
    transport.close()
    assert rows(engine, SendLog.status) == [("sent",)]
    assert sorted(rows(engine, CampaignLead.state)) == [("pending",), ("sent",)]
    assert sum(smtp.recorder.received.values()) == 1


@sqlite_only("commits counted through sqlite3's trace callback")
def test_a_batch_commits_once_per_message(app, engine, settings, smtp):
    # Outcome n and claim n+1 share a transaction: three messages, four write
    # transactions (the last answer is stored on its own), not six.
    from sqlalchemy import event

    cid = make_campaign(engine, 3)
    statements: list[str] = []
    trace = lambda dbapi_connection, record: dbapi_connection.set_trace_callback(statements.append)  # noqa: E731
    engine.dispose()
    event.listen(engine, "connect", trace)
    try:
        batch = run_batch(app, cid, limit=3)
    finally:
        event.remove(engine, "connect", trace)
        engine.dispose()
    assert [r.status for _, r in batch.outcomes] == ["sent"] * 3
    assert statements.count("BEGIN IMMEDIATE") == 4
    assert rows(engine, SendLog.status) == [("sent",)] * 3


def test_a_non_ascii_address_fails_alone_and_the_next_lead_is_sent(app, engine, smtp):
    # We do not speak SMTPUTF8: such a lead is failed before any command (certainly not
    # sent, so never `unknown`), and the reused connection stays clean for the next one.
    cid = make_campaign(engine, 2, variants="A")
    with immediate(engine) as conn:
        conn.execute(update(Lead.__table__).where(Lead.email == VICTIM)
                     .values(email="zażółć@example.pl", first_name="Łukasz"))
    batch = run_batch(app, cid)
    assert [r.status for _, r in batch.outcomes] == ["failed", "sent"]
    assert "SMTPUTF8" in batch.outcomes[0][1].reply
    assert sorted(rows(engine, SendLog.status)) == [("failed",), ("sent",)]
    assert list(smtp.recorder.received) == ["lead0001@example.com"]


@sqlite_only("a json column on PostgreSQL refuses unreadable lead data when it is written")
def test_unreadable_lead_data_pauses_the_campaign_and_keeps_the_lead(app, engine, smtp):
    # A lead whose stored fields cannot be read is a data problem found before SMTP:
    # retry later and pause, as a template error does; never a row left `sending`.
    cid = make_campaign(engine, 2, variants="A")
    with immediate(engine) as conn:
        conn.exec_driver_sql("UPDATE lead SET fields = '{not json' WHERE email = ?", (VICTIM,))
    batch = run_batch(app, cid)
    assert [r.status for _, r in batch.outcomes] == ["retry"]
    assert batch.stopped_by is not None and batch.stopped_by.code == "not_active"
    assert rows(engine, SendLog.status) == [("retry",)]
    assert sum(smtp.recorder.received.values()) == 0
    with app.app_context():
        assert db.session.get(Campaign, cid).status == "paused"
