"""The claim transaction: BEGIN IMMEDIATE, pacing, caps, windows, suppression, keys."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, select, update

from conftest import sqlite_only
from core import campaigns, leads
from core.suppressions import suppress
from delivery.transport import make_transport
from helpers import make_campaign
from models import Campaign, CampaignLead, SendLog, Suppression, Trigger
from sender import Claim, Refusal, claim_next, send_batch
from storage.database import immediate

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 25, 10, 0, 0)  # a Wednesday, 11:00 in Warsaw


def at(offset: int) -> datetime:
    """A moment `offset` s after NOW: logical time injected into the code, not a clock."""
    return NOW + timedelta(seconds=offset)


@sqlite_only("BEGIN IMMEDIATE, seen through sqlite3's trace callback")
def test_claims_run_under_begin_immediate(engine, settings):
    # Traced in the sqlite3 driver itself: the hot path runs SQL text beneath SQLAlchemy,
    # so only the driver sees every statement, in order.
    cid = make_campaign(engine, 2)
    statements = []
    trace = lambda dbapi_connection, record: dbapi_connection.set_trace_callback(statements.append)  # noqa: E731
    engine.dispose()  # connections made from here on carry the tracer
    event.listen(engine, "connect", trace)
    try:
        claim = claim_next(engine, settings, cid, Trigger.CLI, NOW)
    finally:
        event.remove(engine, "connect", trace)
        engine.dispose()
    assert isinstance(claim, Claim)
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    assert any(s.startswith("INSERT INTO send_log") for s in statements)
    assert statements.count("BEGIN IMMEDIATE") == 1 and not any(s == "BEGIN" for s in statements)


@sqlite_only("the database file's write lock, seen by a second sqlite3 connection")
def test_claim_holds_the_write_lock_from_its_first_statement(engine, settings, app):
    # Behavioural proof: while a claim transaction is open, another connection cannot
    # even begin a write. Under a deferred BEGIN it could, until the claim's first write.
    path = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    with immediate(engine) as conn:
        conn.exec_driver_sql("SELECT 1")
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            locked = False
        except sqlite3.OperationalError as exc:
            locked = "locked" in str(exc)
        finally:
            other.close()
    assert locked


def test_interval_allows_one_claim_per_interval(engine, settings):
    cid = make_campaign(engine, 3, interval=300)
    assert isinstance(claim_next(engine, settings, cid, Trigger.SCHEDULER, NOW), Claim)
    refusal = claim_next(engine, settings, cid, Trigger.CLI, at(299))
    assert isinstance(refusal, Refusal) and refusal.code == "not_due"
    assert isinstance(claim_next(engine, settings, cid, Trigger.CLI, at(300)), Claim)


def test_button_bypasses_interval_and_window_but_not_pause_or_cap(engine, settings):
    cid = make_campaign(engine, 5, interval=3600, daily_cap=2, window_start_hour=20,
                        window_end_hour=21)
    assert claim_next(engine, settings, cid, Trigger.CLI, NOW).code == "outside_window"
    assert isinstance(claim_next(engine, settings, cid, Trigger.BUTTON, NOW), Claim)
    assert isinstance(claim_next(engine, settings, cid, Trigger.BUTTON, NOW), Claim)
    assert claim_next(engine, settings, cid, Trigger.BUTTON, NOW).code == "daily_cap"
    campaigns.pause(engine, cid)
    assert claim_next(engine, settings, cid, Trigger.BUTTON, NOW + timedelta(days=1)).code == "not_active"


def test_daily_cap_resets_at_local_midnight(engine, settings):
    cid = make_campaign(engine, 3, daily_cap=1, timezone="Europe/Warsaw")
    late = datetime(2026, 11, 25, 22, 30)  # 23:30 in Warsaw
    assert isinstance(claim_next(engine, settings, cid, Trigger.CLI, late), Claim)
    assert claim_next(engine, settings, cid, Trigger.CLI, late + timedelta(minutes=20)).code == "daily_cap"
    # 23:00 UTC is 00:00 in Warsaw: a new day there.
    assert isinstance(claim_next(engine, settings, cid, Trigger.CLI, late + timedelta(minutes=31)), Claim)


def test_window_uses_campaign_weekdays_and_hours(engine, settings):
    cid = make_campaign(engine, 3, window_weekdays="0,1,3", window_start_hour=9, window_end_hour=17)
    assert claim_next(engine, settings, cid, Trigger.CLI, NOW).code == "outside_window"  # Wednesday
    thursday = NOW + timedelta(days=1)
    assert isinstance(claim_next(engine, settings, cid, Trigger.CLI, thursday), Claim)
    assert claim_next(engine, settings, cid, Trigger.CLI, thursday.replace(hour=16)).code == "outside_window"


def test_suppressed_address_is_skipped_and_accounted(engine, settings):
    cid = make_campaign(engine, 2)
    with immediate(engine) as conn:
        suppress(conn, " LEAD0000@example.com ", "manual", "", NOW)
    claim = claim_next(engine, settings, cid, Trigger.CLI, NOW)
    with engine.connect() as conn:
        states = dict(conn.execute(select(CampaignLead.lead_id, CampaignLead.state)).all())
    assert claim.lead_id == 2
    assert states == {1: "skipped", 2: "sending"}


def test_nothing_left_finishes_the_campaign(engine, settings, app):
    cid = make_campaign(engine, 1)
    transport = make_transport(app.config)
    batch = send_batch(engine, settings, transport, cid, Trigger.BUTTON, limit=5)
    transport.close()
    assert batch.sent == 1 and batch.stopped_by.code == "finished"
    with engine.connect() as conn:
        assert conn.execute(select(Campaign.status)).scalar() == "finished"


def test_one_time_key_lets_one_batch_through(engine, settings, app, smtp):
    cid = make_campaign(engine, 10, batch_size=3)
    transport = make_transport(app.config)
    first = send_batch(engine, settings, transport, cid, Trigger.BUTTON, once_key="k1")
    second = send_batch(engine, settings, transport, cid, Trigger.BUTTON, once_key="k1")
    transport.close()
    assert first.sent == 3
    assert second.outcomes == [] and second.stopped_by.code == "already_pressed"
    assert sum(smtp.recorder.received.values()) == 3


def test_variant_is_assigned_once_and_deterministically(engine):
    cid = make_campaign(engine, 40, start=False)
    with engine.connect() as conn:
        first = dict(conn.execute(select(CampaignLead.lead_id, CampaignLead.variant_letter)).all())
    assert set(first.values()) == {"A", "B"}
    assert leads.enroll(engine, cid, list(first)) == 0  # re-enrolling changes nothing
    again = [leads.pick_variant([("A", 1), ("B", 1)], cid, f"lead{i:04d}@example.com")
             for i in range(40)]
    assert again == [first[i + 1] for i in range(40)]


def test_weights_steer_the_split():
    letters = [leads.pick_variant([("A", 9), ("B", 1)], 1, f"x{i}@y.z") for i in range(2000)]
    assert 0.85 < letters.count("A") / 2000 < 0.95
    assert leads.pick_variant([("A", 0), ("B", 1)], 1, "a@b.c") == "B"


def test_retry_reuses_its_row(engine, settings):
    cid = make_campaign(engine, 1)
    claim = claim_next(engine, settings, cid, Trigger.CLI, NOW)
    with immediate(engine) as conn:
        conn.execute(update(SendLog.__table__).values(status="retry", next_attempt_at=NOW))
    again = claim_next(engine, settings, cid, Trigger.CLI, at(1))
    assert (again.send_log_id, again.attempts) == (claim.send_log_id, 2)
    with engine.connect() as conn:
        assert conn.execute(select(SendLog.id)).all() == [(claim.send_log_id,)]


def test_retry_of_an_address_suppressed_meanwhile_is_not_sent(engine, settings):
    cid = make_campaign(engine, 1)
    claim_next(engine, settings, cid, Trigger.CLI, NOW)
    with immediate(engine) as conn:
        conn.execute(update(SendLog.__table__).values(status="retry", next_attempt_at=NOW))
        suppress(conn, "lead0000@example.com", "unsubscribed", "", NOW)
    refusal = claim_next(engine, settings, cid, Trigger.CLI, at(1))
    assert refusal.code == "finished"
    with engine.connect() as conn:
        assert conn.execute(select(SendLog.status)).scalar() == "failed"
        assert conn.execute(select(CampaignLead.state)).scalar() == "skipped"
        assert conn.execute(select(Suppression.reason)).scalar() == "unsubscribed"


def test_a_claim_taken_away_before_smtp_is_not_sent_and_goes_back_to_retry(engine, settings, app, smtp):
    # As when a worker froze after its claim and the sweep judged it dead meanwhile.
    from sender import deliver

    cid = make_campaign(engine, 1)
    claim = claim_next(engine, settings, cid, Trigger.BUTTON, NOW)
    with immediate(engine) as conn:
        conn.execute(update(SendLog.__table__).values(status="unknown"))
    transport = make_transport(app.config)
    result = deliver(engine, settings, transport, claim)
    transport.close()
    assert result.status == "retry" and "released" in result.reply
    assert sum(smtp.recorder.received.values()) == 0
    with engine.connect() as conn:
        assert conn.execute(select(SendLog.status, SendLog.attempts)).one() == ("retry", 1)


def test_the_claim_stores_its_message_id(engine, settings):
    # A row that a crash leaves `unknown` must already name the Message-ID that went out,
    # so a person can look it up in the mail server's log.
    cid = make_campaign(engine, 2)
    first = claim_next(engine, settings, cid, Trigger.BUTTON, NOW)
    second = claim_next(engine, settings, cid, Trigger.BUTTON, NOW)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(SendLog.id, SendLog.message_id)).all())
    assert stored == {first.send_log_id: first.message_id, second.send_log_id: second.message_id}
    assert first.message_id.startswith(f"<sendonce.{cid}.{first.send_log_id}.")
    assert first.message_id.endswith("@sendonce.test>") and first.message_id != second.message_id


def test_an_outcome_written_by_a_claim_that_then_fails_is_still_stored(app, engine, settings, smtp,
                                                                      monkeypatch):
    # The claim of message 2 writes message 1's outcome, then raises (any error, after
    # the write): its transaction rolls back, and the batch must store the outcome alone.
    import sender

    cid = make_campaign(engine, 2)
    real, calls = sender._take_pending, []

    def fail_the_second(conn, taker):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected after the outcome was written")
        return real(conn, taker)

    monkeypatch.setattr(sender, "_take_pending", fail_the_second)
    transport = make_transport(app.config)
    try:
        send_batch(engine, settings, transport, cid, Trigger.BUTTON, limit=2)
        raise AssertionError("the injected error should have propagated")
    except RuntimeError:
        pass
    finally:
        transport.close()
    with engine.connect() as conn:
        assert conn.execute(select(SendLog.status)).all() == [("sent",)]
        assert sorted(conn.execute(select(CampaignLead.state)).all()) == [("pending",), ("sent",)]


def test_a_late_release_does_not_undo_a_persons_decision(app, engine, settings, smtp):
    # A worker froze after its claim; the sweep marked the row unknown and a person
    # marked it sent. When the worker wakes it must send nothing and change nothing.
    from sender import attempt, recover, resolve_unknown

    cid = make_campaign(engine, 1)
    claim = claim_next(engine, settings, cid, Trigger.BUTTON, NOW)
    assert recover(engine, settings, at(10_000)) == 1
    assert resolve_unknown(engine, settings, claim.send_log_id, "mark-sent", "admin@example.com",
                           at(10_000)) is None
    transport = make_transport(app.config)
    outcome = attempt(engine, settings, transport, claim)
    transport.close()
    assert outcome.stored and outcome.result.status == "retry"
    assert sum(smtp.recorder.received.values()) == 0
    with engine.connect() as conn:
        assert conn.execute(select(SendLog.status)).all() == [("sent",)]
        assert conn.execute(select(CampaignLead.state)).all() == [("sent",)]
