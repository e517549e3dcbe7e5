"""Claims through mailboxes (#16): caps, gaps and ramp-up inside the claim, pinned leads,
failures that pause one mailbox (sender.py's ledger P24-P26)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from core import mailboxes
from delivery import lease as leases
from delivery.transport import Result, SmtpTransport
from helpers import logged_in_client, make_campaign
from models import CampaignLead, Mailbox, SchedulerLease, SendLog, SendStatus, Trigger
from sender import Claim, Refusal, claim_next, record, send_batch, tick
from storage.database import immediate
from storage.secrets import Vault
from storage.timeutil import utcnow
from tests.smtp_sink import AuthSmtpSink

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 25, 10, 0, 0)  # a Wednesday, 11:00 in Warsaw


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def add_mailbox(app, engine, address: str, **values) -> int:
    values = {"name": address.split("@")[0].title(), "backend": "smtp", "smtp_host": "127.0.0.1",
              "smtp_security": "none", "daily_cap": 100, "min_gap_seconds": 0, **values}
    mailbox_id = mailboxes.create(engine, Vault(app.config["MAILBOX_KEY_FILE"]), address=address, **values)
    with immediate(engine) as conn:  # ramp-ups count their days from the tests' NOW
        conn.execute(update(Mailbox.__table__).where(Mailbox.id == mailbox_id).values(ramp_from=NOW))
    return mailbox_id


def claims_of(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(SendLog.lead_id, SendLog.mailbox_id, SendLog.campaign_id)
                            .order_by(SendLog.id)).all()


def test_cap_and_gap_hold_across_campaigns_sharing_a_mailbox(app, engine, settings):
    box = add_mailbox(app, engine, "anna@firma.pl", daily_cap=3, min_gap_seconds=60)
    first, second = make_campaign(engine, 5), make_campaign(engine, 5)
    mailboxes.link(engine, first, [box])
    mailboxes.link(engine, second, [box])
    assert isinstance(claim_next(engine, settings, first, Trigger.CLI, at(0)), Claim)
    gap = claim_next(engine, settings, second, Trigger.CLI, at(30))  # another campaign, same mailbox
    assert isinstance(gap, Refusal) and gap.code == "mailbox_limit" and "gap until" in gap.detail
    assert isinstance(claim_next(engine, settings, second, Trigger.CLI, at(60)), Claim)
    assert isinstance(claim_next(engine, settings, first, Trigger.CLI, at(120)), Claim)
    cap = claim_next(engine, settings, second, Trigger.CLI, at(3600))
    assert isinstance(cap, Refusal) and cap.code == "mailbox_limit" and "3/3 today" in cap.detail
    assert [c.mailbox_id for c in claims_of(engine)] == [box] * 3
    # A new day in the mailbox's zone (Warsaw midnight = 23:00 UTC) brings a new cap.
    assert isinstance(claim_next(engine, settings, second, Trigger.CLI, datetime(2026, 11, 25, 23, 0, 1)),
                      Claim)


def test_the_button_skips_the_campaign_interval_but_not_the_mailbox_gap_or_cap(app, engine, settings):
    box = add_mailbox(app, engine, "anna@firma.pl", daily_cap=2, min_gap_seconds=60)
    cid = make_campaign(engine, 5, interval=3600)
    mailboxes.link(engine, cid, [box])
    assert isinstance(claim_next(engine, settings, cid, Trigger.BUTTON, at(0)), Claim)
    gap = claim_next(engine, settings, cid, Trigger.BUTTON, at(1))
    assert isinstance(gap, Refusal) and gap.code == "mailbox_limit"
    assert isinstance(claim_next(engine, settings, cid, Trigger.BUTTON, at(61)), Claim)  # interval skipped
    cap = claim_next(engine, settings, cid, Trigger.BUTTON, at(200))
    assert isinstance(cap, Refusal) and cap.code == "mailbox_limit" and "2/2" in cap.detail


def test_ramp_up_raises_the_cap_day_by_day(app, engine, settings):
    box = add_mailbox(app, engine, "anna@firma.pl", daily_cap=10, ramp_start=2, ramp_step=3)
    cid = make_campaign(engine, 40)
    mailboxes.link(engine, cid, [box])

    def claims_on(day: int) -> int:
        n, moment = 0, at(day * 86400)
        while isinstance(claim_next(engine, settings, cid, Trigger.CLI, moment), Claim):
            n, moment = n + 1, moment + timedelta(seconds=1)
        return n

    assert [claims_on(day) for day in range(5)] == [2, 5, 8, 10, 10]


def test_leads_are_pinned_to_the_mailbox_with_the_most_room_today(app, engine, settings):
    big = add_mailbox(app, engine, "anna@firma.pl", daily_cap=10)
    small = add_mailbox(app, engine, "piotr@firma.pl", daily_cap=5)
    cid = make_campaign(engine, 20)
    mailboxes.link(engine, cid, [big, small])
    claims = [claim_next(engine, settings, cid, Trigger.CLI, at(i)) for i in range(16)]
    assert all(isinstance(c, Claim) for c in claims[:15]) and claims[15].code == "mailbox_limit"
    assert [c.mailbox_id for c in claims[:7]] == [big] * 6 + [small]  # 10 vs 5 left: big until even
    rows = claims_of(engine)
    assert sum(r.mailbox_id == big for r in rows) == 10 and sum(r.mailbox_id == small for r in rows) == 5
    with engine.connect() as conn:  # each lead pinned where its message went
        pins = dict(conn.execute(select(CampaignLead.lead_id, CampaignLead.mailbox_id)
                                 .where(CampaignLead.mailbox_id.is_not(None))).all())
    assert pins == {r.lead_id: r.mailbox_id for r in rows}
    # The Message-ID names the mailbox's domain, From is the mailbox.
    assert all(c.message_id.endswith("@firma.pl>") for c in claims[:15])


def test_a_retry_goes_out_through_the_pinned_mailbox_only(app, engine, settings):
    first = add_mailbox(app, engine, "anna@firma.pl")
    other = add_mailbox(app, engine, "piotr@firma.pl")
    cid = make_campaign(engine, 3)
    mailboxes.link(engine, cid, [first, other])
    claim = claim_next(engine, settings, cid, Trigger.CLI, at(0))
    assert claim.mailbox_id == first
    record(engine, settings, claim, Result(SendStatus.RETRY, "451 try later"), at(0))
    mailboxes.pause(engine, first, "by hand")
    later = [claim_next(engine, settings, cid, Trigger.CLI, at(10 + i)) for i in range(3)]
    # The retry waits for its own mailbox; the other mailbox sends the other leads, then stops.
    assert [c.lead_id for c in later[:2] if isinstance(c, Claim)] != [] and claim.lead_id not in [
        c.lead_id for c in later if isinstance(c, Claim)]
    assert all(c.mailbox_id == other for c in later if isinstance(c, Claim))
    assert isinstance(later[2], Refusal) and later[2].code == "nothing_due"
    mailboxes.resume(engine, first)
    retried = claim_next(engine, settings, cid, Trigger.CLI, at(100))
    assert (retried.lead_id, retried.mailbox_id) == (claim.lead_id, first)
    assert retried.send_log_id == claim.send_log_id


def test_leads_of_a_paused_mailbox_wait_and_move_only_when_a_person_moves_them(app, engine, settings):
    first = add_mailbox(app, engine, "anna@firma.pl")
    other = add_mailbox(app, engine, "piotr@firma.pl")
    cid = make_campaign(engine, 2)
    mailboxes.link(engine, cid, [first, other])
    claim = claim_next(engine, settings, cid, Trigger.CLI, at(0))
    record(engine, settings, claim, Result(SendStatus.RETRY, "451 try later"), at(0))
    mailboxes.pause(engine, first, "bad password")
    for i in range(5):  # however often the others tick, the pinned lead is not moved
        claim_next(engine, settings, cid, Trigger.CLI, at(10 + i))
    with engine.connect() as conn:
        row = conn.execute(select(SendLog).where(SendLog.id == claim.send_log_id)).one()
    assert (row.status, row.mailbox_id) == ("retry", first)
    assert mailboxes.move_leads(engine, cid, first, other) == 1
    moved = claim_next(engine, settings, cid, Trigger.CLI, at(100))
    assert (moved.send_log_id, moved.mailbox_id) == (claim.send_log_id, other)


def test_bad_credentials_pause_that_mailbox_only(app, engine, settings):
    with AuthSmtpSink({"anna": "right"}) as good_server, AuthSmtpSink({"piotr": "right"}) as bad_server:
        good = add_mailbox(app, engine, "anna@firma.pl")
        bad = add_mailbox(app, engine, "piotr@firma.pl")
        transports = {good: SmtpTransport("127.0.0.1", good_server.port, username="anna", password="right"),
                      bad: SmtpTransport("127.0.0.1", bad_server.port, username="piotr", password="wrong")}

        class Router:  # one transport per mailbox, as the app's pool gives them
            def for_mailbox(self, mailbox_id):
                return transports[mailbox_id]

            def close(self):
                for transport in transports.values():
                    transport.close()

        cid = make_campaign(engine, 6, batch_size=3)
        mailboxes.link(engine, cid, [good, bad])
        for _ in range(3):
            send_batch(engine, settings, Router(), cid, Trigger.CLI)
        Router().close()
        with engine.connect() as conn:
            boxes = {m.id: m for m in conn.execute(select(Mailbox))}
            campaign_status = conn.execute(select(SendLog.status, SendLog.mailbox_id)).all()
        assert boxes[bad].status == "paused" and "535" in boxes[bad].pause_reason
        assert boxes[good].status == "active"
        assert sum(good_server.recorder.received.values()) == 5 and not bad_server.recorder.received
        assert {login for login, _ in good_server.recorder.identities} == {"anna"}
        # The lead that met the bad mailbox waits for it (retry, pinned); nothing else burned.
        assert sorted(campaign_status) == sorted([("sent", good)] * 5 + [("retry", bad)])


def test_lanes_send_through_every_mailbox_in_one_tick(app, engine, settings):
    boxes = [add_mailbox(app, engine, f"box{i}@firma.pl") for i in range(3)]
    cid = make_campaign(engine, 9, batch_size=2)
    mailboxes.link(engine, cid, boxes)
    sent_by = []

    class Recorder:
        def __init__(self, mailbox_id):
            self.mailbox_id = mailbox_id

        def send(self, msg, sender, recipient, deadline=None):
            sent_by.append((self.mailbox_id, sender))
            return Result(SendStatus.SENT, "250 ok")

        def close(self):
            pass

    class Pool:
        def for_mailbox(self, mailbox_id):
            return Recorder(mailbox_id)

        def close(self):
            pass

    lease = leases.acquire(engine, "test-holder", NOW, settings.lease_seconds)
    results = tick(engine, settings, Pool(), lease, clock=lambda: NOW)
    assert results[cid].sent == 6  # a batch of 2 per mailbox lane
    assert sorted(m for m, _ in sent_by) == sorted(boxes * 2)
    assert all(sender == f"box{boxes.index(m)}@firma.pl" for m, sender in sent_by)


def test_the_pages_say_when_the_mailboxes_free_up_and_when_all_are_paused(app, engine, settings):
    box = add_mailbox(app, engine, "anna@firma.pl", daily_cap=1)
    cid = make_campaign(engine, 3)
    mailboxes.link(engine, cid, [box])
    assert isinstance(claim_next(engine, settings, cid, Trigger.BUTTON, utcnow()), Claim)  # the cap used up
    with immediate(engine) as conn:  # a fresh heartbeat: the scheduler is running
        conn.execute(SchedulerLease.__table__.insert().values(
            name="scheduler", holder="vm:1:abc", epoch=1, heartbeat_at=utcnow(),
            expires_at=utcnow() + timedelta(minutes=3)))
    client = logged_in_client(app)
    page = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    tomorrow = (utcnow().replace(tzinfo=UTC).astimezone(ZoneInfo("Europe/Warsaw")) + timedelta(days=1))
    assert "Skrzynki osiągnęły limit — następna wysyłka" in page
    assert f"{tomorrow.day}.{tomorrow:%m} 00:00 (Europe/Warsaw)" in page  # the mailbox's midnight
    mailboxes.pause(engine, box, "by hand")
    assert "Wszystkie skrzynki kampanii są wstrzymane" in client.get("/").get_data(as_text=True)


def test_a_claimer_that_read_its_clock_before_queueing_is_not_refused_without_interval_or_gap(app, engine,
                                                                                               settings):
    # Lanes read `now` and then wait for the write lock: the claim before them may carry a
    # later `now`. With no interval and no gap there is nothing to wait for (the bench saw
    # 7 of 8 lanes stop "not_due" before this).
    boxes = [add_mailbox(app, engine, f"box{i}@firma.pl") for i in range(2)]
    cid = make_campaign(engine, 4)
    mailboxes.link(engine, cid, boxes)
    assert isinstance(claim_next(engine, settings, cid, Trigger.SCHEDULER, at(1), mailbox_id=boxes[0]), Claim)
    late = claim_next(engine, settings, cid, Trigger.SCHEDULER, at(0.5), mailbox_id=boxes[1])
    assert isinstance(late, Claim), late
    again = claim_next(engine, settings, cid, Trigger.SCHEDULER, at(0.2), mailbox_id=boxes[1])
    assert isinstance(again, Claim), again


def test_with_an_interval_the_lane_of_the_mailbox_with_most_room_takes_the_next_lead(app, engine, settings):
    # Lanes race for the lock every tick; with a campaign interval only one claim an
    # interval succeeds. Without this rule the first lane to the lock took every lead
    # (seen in `make run`: Anna 2, Piotr 0). Its own pinned leads a lane still sends.
    anna, piotr = (add_mailbox(app, engine, f"{n}@firma.pl") for n in ("anna", "piotr"))
    cid = make_campaign(engine, 4, interval=60)
    mailboxes.link(engine, cid, [anna, piotr])
    first = claim_next(engine, settings, cid, Trigger.SCHEDULER, at(0), mailbox_id=anna)
    assert first.mailbox_id == anna  # a tie: the lower id
    record(engine, settings, first, Result(SendStatus.RETRY, "451 later"), at(0))
    refused = claim_next(engine, settings, cid, Trigger.SCHEDULER, at(61), mailbox_id=anna)
    assert isinstance(refused, Claim) and refused.send_log_id == first.send_log_id  # its own retry
    waits = claim_next(engine, settings, cid, Trigger.SCHEDULER, at(122), mailbox_id=anna)
    assert isinstance(waits, Refusal) and waits.code == "nothing_due"  # Piotr has more room: his lead
    second = claim_next(engine, settings, cid, Trigger.SCHEDULER, at(123), mailbox_id=piotr)
    assert second.mailbox_id == piotr and second.lead_id != first.lead_id
