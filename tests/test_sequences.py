"""Sequences (#17) with the injected clock: steps in order, never before their delay, each
once; business days; stops before a claim, in flight and before a retry; a person's
decision moving a lead on; threading; a later step's variant chosen once."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from core import campaigns, sequences
from core.campaigns import CampaignError
from core.leads import pick_variant
from core.suppressions import suppress
from delivery.transport import Result, make_transport
from helpers import csrf_token, log_in, make_campaign
from models import Campaign, CampaignLead, DelayUnit, Lead, SendLog, SendStatus, Trigger, Variant
from sender import Claim, Refusal, claim_next, deliver, record, recover, resolve_unknown, send_batch
from storage.database import immediate
from timeline import live

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 25, 10, 0, 0)  # a Wednesday, 11:00 in Warsaw


def at(**delta) -> datetime:
    return NOW + timedelta(**delta)


def make_sequence(engine, n: int, steps=((2, DelayUnit.DAYS), (3, DelayUnit.HOURS)), *, start: bool = True,
                  business_days: bool = False, new_thread: bool = False, **values) -> int:
    """A campaign of n leads with step 1 and one more step per (amount, unit)."""
    cid = make_campaign(engine, n, start=False, variants="A", batch_size=100, **values)
    for number, (amount, unit) in enumerate(steps, start=2):
        sequences.add_step(engine, cid, amount=amount, unit=unit, business_days=business_days,
                           new_thread=new_thread, subject=f"step {number} for {{{{ first_name }}}}",
                           body=f"Step {number}, {{{{ first_name }}}}.\n{{{{ unsubscribe_url }}}}\n", now=NOW)
    if start:
        campaigns.start(engine, cid)
    return cid


def send_at(app, engine, settings, cid: int, moment: datetime, limit: int | None = None):
    transport = make_transport(app.config)
    try:
        return send_batch(engine, settings, transport, cid, Trigger.CLI, clock=lambda: moment, limit=limit)
    finally:
        transport.close()


def deliver_at(app, engine, settings, claim: Claim, moment: datetime) -> None:
    transport = make_transport(app.config)
    try:
        deliver(engine, settings, transport, claim, clock=lambda: moment)
    finally:
        transport.close()


def rows(engine, cid: int) -> list:
    with engine.connect() as conn:
        return conn.execute(select(SendLog).where(SendLog.campaign_id == cid).order_by(SendLog.id)).all()


def enrollments(engine, cid: int) -> dict[int, object]:
    with engine.connect() as conn:
        query = select(CampaignLead).where(CampaignLead.campaign_id == cid)
        return {r.lead_id: r for r in conn.execute(query)}


def status_of(engine, cid: int) -> str:
    with engine.connect() as conn:
        return conn.execute(select(Campaign.status).where(Campaign.id == cid)).scalar()


def test_steps_go_out_in_order_each_once_and_never_before_their_delay(app, engine, settings, smtp):
    cid = make_sequence(engine, 3)
    assert send_at(app, engine, settings, cid, NOW).sent == 3
    waiting = {(e.state, e.step, e.due_at) for e in enrollments(engine, cid).values()}
    assert waiting == {("pending", 2, at(days=2))}
    early = send_at(app, engine, settings, cid, at(days=2, seconds=-1))
    assert early.sent == 0 and early.stopped_by.code == "nothing_due"
    assert status_of(engine, cid) == "active"  # leads wait for a later step: not finished
    assert send_at(app, engine, settings, cid, at(days=2)).sent == 3
    assert send_at(app, engine, settings, cid, at(days=2, hours=3, seconds=-1)).sent == 0
    assert send_at(app, engine, settings, cid, at(days=2, hours=3)).sent == 3
    assert status_of(engine, cid) == "finished"
    sent = rows(engine, cid)
    assert sorted((r.lead_id, r.step) for r in sent) == [(lead, step) for lead in (1, 2, 3)
                                                         for step in (1, 2, 3)]
    assert {r.status for r in sent} == {"sent"}
    assert sum(smtp.recorder.received.values()) == 9 and set(smtp.recorder.received.values()) == {1 * 3}
    assert {e.state for e in enrollments(engine, cid).values()} == {"sent"}


def test_a_step_added_while_leads_are_in_flight_reaches_them_but_not_complete_ones(app, engine, settings):
    cid = make_sequence(engine, 2, steps=())
    claim = claim_next(engine, settings, cid, Trigger.CLI, NOW)  # lead 1 in flight at step 1
    assert isinstance(claim, Claim)
    sequences.add_step(engine, cid, amount=1, unit=DelayUnit.DAYS, subject="s2", body="b2", now=NOW)
    deliver_at(app, engine, settings, claim, NOW)
    assert (enrollments(engine, cid)[1].state, enrollments(engine, cid)[1].step) == ("pending", 2)


@pytest.mark.parametrize(("sent_local", "days", "due_local"), [
    (datetime(2026, 11, 6, 10, 0), 1, datetime(2026, 11, 9, 10, 0)),  # Friday -> Monday
    (datetime(2026, 11, 10, 10, 0), 1, datetime(2026, 11, 12, 10, 0)),  # Tuesday -> Thursday (11.11 holiday)
    (datetime(2026, 11, 10, 10, 0), 3, datetime(2026, 11, 16, 10, 0)),  # 12, 13, (weekend), 16
    (datetime(2026, 12, 23, 9, 0), 2, datetime(2026, 12, 29, 9, 0)),  # 24 Wigilia is a holiday since 2025
])
def test_business_days_skip_the_weekend_and_polish_holidays(sent_local, days, due_local):
    from datetime import UTC
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Europe/Warsaw")
    utc = sent_local.replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
    due = sequences.due_after(utc, days, DelayUnit.DAYS, True, "0,1,2,3,4", "Europe/Warsaw", "PL")
    assert due.replace(tzinfo=UTC).astimezone(zone).replace(tzinfo=None) == due_local
    # Calendar days ignore both.
    assert sequences.due_after(utc, days, DelayUnit.DAYS, False, "0,1,2,3,4", "Europe/Warsaw", "PL") \
        == utc + timedelta(days=days)


def test_business_hours_count_only_hours_on_business_days():
    friday_22 = datetime(2026, 11, 6, 21, 0)  # UTC: 22:00 Friday in Warsaw
    due = sequences.due_after(friday_22, 4, DelayUnit.HOURS, True, "0,1,2,3,4", "Europe/Warsaw", "PL")
    assert due == datetime(2026, 11, 9, 1, 0)  # 2 hours of Friday, then Monday 00:00-02:00 local


def test_the_engine_counts_business_days_from_the_sent_time(app, engine, settings):
    cid = make_sequence(engine, 1, steps=((1, DelayUnit.DAYS),), business_days=True,
                        window_weekdays="0,1,2,3,4")
    tuesday = datetime(2026, 11, 10, 9, 0)  # 10:00 in Warsaw; 11 November is a public holiday
    assert send_at(app, engine, settings, cid, tuesday).sent == 1
    assert enrollments(engine, cid)[1].due_at == datetime(2026, 11, 12, 9, 0)
    assert send_at(app, engine, settings, cid, datetime(2026, 11, 11, 9, 0)).sent == 0


def test_a_stopped_lead_is_never_claimed(app, engine, settings, smtp):
    cid = make_sequence(engine, 3)
    assert sequences.stop(engine, cid, 3, "person", NOW) == 1  # before its first step
    assert send_at(app, engine, settings, cid, NOW).sent == 2
    assert sequences.stop(engine, None, 2, "person", NOW) == 1  # "every campaign", waiting for step 2
    assert send_at(app, engine, settings, cid, at(days=3)).sent == 1
    state = {lead: (e.state, e.stop_reason) for lead, e in enrollments(engine, cid).items()}
    assert state[3] == ("stopped", "person") and state[2] == ("stopped", "person")
    assert sorted((r.lead_id, r.step) for r in rows(engine, cid)) == [(1, 1), (1, 2), (2, 1)]
    assert smtp.recorder.received["lead0002@example.com"] == 0


def test_a_stop_recorded_while_the_step_is_in_flight_ends_the_lead_stopped(app, engine, settings, smtp):
    cid = make_sequence(engine, 1)
    claim = claim_next(engine, settings, cid, Trigger.CLI, NOW)
    assert isinstance(claim, Claim)
    sequences.stop(engine, cid, 1, "replied", NOW)  # the reply arrives while step 1 is on its way
    deliver_at(app, engine, settings, claim, NOW)
    enrollment = enrollments(engine, cid)[1]
    assert (enrollment.state, enrollment.step, enrollment.stop_reason) == ("stopped", 1, "replied")
    assert send_at(app, engine, settings, cid, at(days=30)).stopped_by.code == "finished"
    assert [(r.step, r.status) for r in rows(engine, cid)] == [(1, "sent")]


def test_a_retry_of_a_stopped_lead_is_not_retried(app, engine, settings, smtp):
    cid = make_sequence(engine, 1)
    smtp.recorder.data_replies["lead0000@example.com"] = ["451 try later"]
    send_at(app, engine, settings, cid, NOW, limit=1)
    assert [r.status for r in rows(engine, cid)] == ["retry"]
    sequences.stop(engine, cid, 1, "person", NOW)
    send_at(app, engine, settings, cid, at(hours=1))
    (row,) = rows(engine, cid)
    assert (row.status, row.smtp_reply, row.attempts) == ("failed", "stopped before retry", 1)
    assert enrollments(engine, cid)[1].state == "stopped"
    assert smtp.recorder.received["lead0000@example.com"] == 0


def test_an_unknown_step_stops_the_sequence_until_a_person_decides(app, engine, settings):
    cid = make_sequence(engine, 2)
    send_at(app, engine, settings, cid, NOW)
    send_at(app, engine, settings, cid, at(days=2))
    with immediate(engine) as conn:  # both step-2 sends end unknown (a crash), long ago
        conn.execute(update(SendLog.__table__).where(SendLog.step == 2).values(status="unknown"))
        conn.execute(update(CampaignLead.__table__).values(state="unknown", step=2, due_at=None))
    assert send_at(app, engine, settings, cid, at(days=5)).sent == 0  # step 3 waits for a person
    assert status_of(engine, cid) == "finished"  # every lead accounted; a decision wakes it
    step2 = {r.lead_id: r.id for r in rows(engine, cid) if r.step == 2}
    assert resolve_unknown(engine, settings, step2[1], "mark-sent", "anna", at(days=5)) is None
    assert resolve_unknown(engine, settings, step2[2], "send-again", "anna", at(days=5)) is None
    one, two = enrollments(engine, cid)[1], enrollments(engine, cid)[2]
    assert (one.state, one.step, one.due_at) == ("pending", 3, at(days=5, hours=3))
    assert (two.state, two.step) == ("sending", 2)
    assert status_of(engine, cid) == "active"
    assert send_at(app, engine, settings, cid, at(days=5, hours=1)).sent == 1  # lead 2's step 2, same row
    assert send_at(app, engine, settings, cid, at(days=5, hours=3)).sent == 1  # lead 1's step 3
    assert sorted((r.lead_id, r.step, r.status) for r in rows(engine, cid)) == [
        (1, 1, "sent"), (1, 2, "sent"), (1, 3, "sent"), (2, 1, "sent"), (2, 2, "sent")]
    assert enrollments(engine, cid)[2].due_at == at(days=5, hours=4)  # its step 3: 3 h after its step 2


def test_a_follow_up_replies_in_the_thread_of_step_one(app, engine, settings, smtp):
    cid = make_sequence(engine, 1)
    for moment in (NOW, at(days=2), at(days=2, hours=3)):
        send_at(app, engine, settings, cid, moment)
    first, second, third = smtp.recorder.messages
    assert first["Subject"] == "A: hello First0" and first["In-Reply-To"] is None
    assert second["Subject"] == "Re: A: hello First0" == third["Subject"]
    assert second["In-Reply-To"] == first["Message-ID"] and second["References"] == first["Message-ID"]
    assert third["In-Reply-To"] == second["Message-ID"]
    assert third["References"] == f"{first['Message-ID']} {second['Message-ID']}"
    assert len({m["Message-ID"] for m in smtp.recorder.messages}) == 3
    assert "Step 3, First0." in third.get_payload(decode=True).decode()


def test_a_new_thread_step_has_its_own_subject_and_no_reply_headers(app, engine, settings, smtp):
    cid = make_sequence(engine, 1, steps=((1, DelayUnit.HOURS),), new_thread=True)
    send_at(app, engine, settings, cid, NOW)
    send_at(app, engine, settings, cid, at(hours=1))
    second = smtp.recorder.messages[1]
    assert second["Subject"] == "step 2 for First0" and second["In-Reply-To"] is None
    assert second["References"] is None


def test_a_later_steps_variant_is_chosen_once_per_lead_by_its_weights(app, engine, settings):
    cid = make_sequence(engine, 30, steps=((1, DelayUnit.HOURS),), start=False)
    sequences.set_step_variant(engine, cid, 2, "B", "b for {{ first_name }}", "B {{ unsubscribe_url }}",
                               weight=3)
    campaigns.start(engine, cid)
    send_at(app, engine, settings, cid, NOW)
    send_at(app, engine, settings, cid, at(hours=1))
    with engine.connect() as conn:
        emails = dict(conn.execute(select(Lead.id, Lead.email)).all())
    second = [r for r in rows(engine, cid) if r.step == 2]
    assert len(second) == 30 and {r.variant_letter for r in second} == {"A", "B"}
    for row in second:  # deterministic per (lead, step): the same letter whoever claims it
        assert row.variant_letter == pick_variant([("A", 1), ("B", 3)], cid, emails[row.lead_id], 2)


def test_removing_a_step_some_lead_got_is_refused_and_an_archived_step_is_skipped(app, engine, settings):
    cid = make_sequence(engine, 1, steps=((1, DelayUnit.HOURS), (1, DelayUnit.HOURS)))
    send_at(app, engine, settings, cid, NOW)
    send_at(app, engine, settings, cid, at(hours=1))
    with pytest.raises(CampaignError, match="archive it instead"):
        sequences.remove_step(engine, cid, 2)
    assert sequences.archive_step(engine, cid, 3, NOW) == 1  # the lead waiting for it is complete now
    assert enrollments(engine, cid)[1].state == "sent"
    sequences.add_step(engine, cid, amount=1, unit=DelayUnit.HOURS, subject="s4", body="b4", now=NOW)
    sequences.remove_step(engine, cid, 4)  # nobody got it yet
    with engine.connect() as conn:
        assert [s.position for s in sequences.steps(conn, cid)] == [1, 2, 3]


def test_a_finished_campaign_reopens_for_a_new_step_only_when_confirmed(app, engine, settings):
    cid = make_sequence(engine, 2, steps=())
    sequences.stop(engine, cid, 2, "person", NOW)
    assert send_at(app, engine, settings, cid, NOW).stopped_by.code == "finished"
    with pytest.raises(CampaignError, match="1 leads who got every step"):
        sequences.add_step(engine, cid, amount=2, unit=DelayUnit.DAYS, subject="s", body="b", now=NOW)
    assert sequences.reopen_count(engine, cid) == 1
    added = sequences.add_step(engine, cid, amount=2, unit=DelayUnit.DAYS, subject="s", body="b", reopen=True,
                               now=NOW)
    assert (added.position, added.reopened) == (2, 1) and status_of(engine, cid) == "active"
    assert (enrollments(engine, cid)[1].state, enrollments(engine, cid)[1].due_at) == ("pending", at(days=2))
    assert send_at(app, engine, settings, cid, at(days=2)).sent == 1


def test_a_reply_stops_the_company_but_never_a_freemail_domain(app, engine, settings):
    cid = make_sequence(engine, 0, start=False, stop_company_on_reply=True)
    with immediate(engine) as conn:
        ids = {email: conn.execute(Lead.__table__.insert().values(email=email).returning(Lead.id)).scalar()
               for email in ("a@firma.pl", "b@firma.pl", "c@other.pl", "x@gmail.com", "y@gmail.com")}
    from core import leads

    leads.enroll(engine, cid, list(ids.values()))
    with immediate(engine) as conn:
        assert sequences.stop_for_reply(conn, cid, ids["a@firma.pl"], NOW) == 2
        assert sequences.stop_for_reply(conn, cid, ids["x@gmail.com"], NOW) == 1
    state = {email: (enrollments(engine, cid)[i].state, enrollments(engine, cid)[i].stop_reason)
             for email, i in ids.items()}
    assert state == {"a@firma.pl": ("stopped", "replied"), "b@firma.pl": ("stopped", "company_replied"),
                     "c@other.pl": ("pending", None), "x@gmail.com": ("stopped", "replied"),
                     "y@gmail.com": ("pending", None)}
    assert {"gmail.com", "wp.pl", "o2.pl", "onet.pl", "interia.pl", "outlook.com"} <= sequences.FREEMAIL


def test_a_suppressed_domain_is_skipped_inside_the_claim(app, engine, settings, smtp):
    cid = make_sequence(engine, 2)
    with immediate(engine) as conn:
        suppress(conn, "@example.com", "manual", "competitor", NOW)
    assert send_at(app, engine, settings, cid, NOW).sent == 0
    assert {e.state for e in enrollments(engine, cid).values()} == {"skipped"}
    assert sum(smtp.recorder.received.values()) == 0


def test_leads_active_in_another_campaign_are_counted_and_listed(app, engine):
    first = make_campaign(engine, 3)
    other = campaigns.create(engine, name="other", from_address="team@sendonce.test")
    campaigns.add_variant(engine, other, "A", "s", "b")
    sequences.stop(engine, first, 3, "person", NOW)
    count, listed = sequences.active_elsewhere(engine, other, limit=10)
    assert count == 2 and [(e.email, e.campaign_id) for e in listed] == [
        ("lead0000@example.com", first), ("lead0001@example.com", first)]
    added, matched = campaigns.enroll_leads(engine, other, skip={e.lead_id for e in listed})
    assert (added, matched) == (1, 1)


def test_two_steps_of_a_lead_are_not_duplicates_in_the_timeline(app, engine, settings):
    cid = make_sequence(engine, 2)
    send_at(app, engine, settings, cid, NOW)
    send_at(app, engine, settings, cid, at(days=2))
    with engine.connect() as conn:
        from storage.schema import summary_usable

        assert summary_usable(conn)  # the unique index rules duplicates out per step
        analysis = live.live_analyse(conn, live.Scope(cid))
        assert analysis == live.summary_analyse(conn, live.Scope(cid))
    assert (analysis.total_sends, analysis.duplicate_sends, analysis.unique_keys) == (4, 0, 4)


def test_a_claim_refusal_says_nothing_is_due_while_a_step_waits(app, engine, settings):
    cid = make_sequence(engine, 1)
    send_at(app, engine, settings, cid, NOW)
    refusal = claim_next(engine, settings, cid, Trigger.BUTTON, at(hours=1))
    assert isinstance(refusal, Refusal) and refusal.code == "nothing_due"


def test_the_cli_adds_steps_and_variants_shows_them_and_stops_a_lead(app, engine, runner):
    cid = make_campaign(engine, 2, start=False, variants="A")
    result = runner.invoke(args=["campaign", "step", "add", str(cid), "--after", "3d", "--business-days",
                                 "--subject", "s2", "--body", "Hello {{ first_name }}"])
    assert result.exit_code == 0 and result.output.strip() == "2", result.output
    result = runner.invoke(args=["campaign", "step", "add", str(cid), "--after", "36h", "--new-thread",
                                 "--subject", "s3", "--body", "b3"])
    assert result.output.strip() == "3"
    assert runner.invoke(args=["campaign", "step", "variant", str(cid), "2", "B", "--subject", "s2b",
                               "--body", "b", "--weight", "2"]).exit_code == 0
    bad = runner.invoke(args=["campaign", "step", "add", str(cid), "--after", "3 weeks", "--subject", "s",
                              "--body", "b"])
    assert bad.exit_code == 1 and "like 3d or 36h" in bad.output
    assert runner.invoke(args=["campaign", "stop", str(cid), "LEAD0001@example.com"]).exit_code == 0
    shown = runner.invoke(args=["campaign", "show", str(cid)]).output
    assert "step 1: at once — sent 0, waiting 1, stopped 1" in shown
    assert "step 2: 3 days (business days) after, same thread" in shown
    assert "variant B (weight 2): s2b" in shown
    assert "step 3: 36 hours after, new thread" in shown
    assert runner.invoke(args=["campaign", "step", "archive", str(cid), "3"]).exit_code == 0
    assert "[archived]" in runner.invoke(args=["campaign", "show", str(cid)]).output
    assert runner.invoke(args=["campaign", "step", "remove", str(cid), "2"]).exit_code == 0
    assert "no step 2" in runner.invoke(args=["campaign", "step", "remove", str(cid), "2"]).output


def test_enroll_warns_about_leads_active_elsewhere_and_can_skip_them(app, engine, runner):
    make_campaign(engine, 3)
    other = campaigns.create(engine, name="other", from_address="team@sendonce.test")
    campaigns.add_variant(engine, other, "A", "s", "b")
    warned = runner.invoke(args=["campaign", "enroll", str(other), "--all", "--skip-active-elsewhere"])
    assert warned.exit_code == 0, warned.output
    assert "3 of these leads are active in another campaign; skipped" in warned.output
    assert "lead0000@example.com in campaign 1" in warned.output and "enrolled 0 new (all 3" in warned.output
    anyway = runner.invoke(args=["campaign", "enroll", str(other), "--all"])
    assert "enrolled anyway" in anyway.output and "enrolled 3 new" in anyway.output


def test_suppress_domain_refuses_a_non_domain_and_the_claim_honours_it(app, engine, settings, runner):
    assert runner.invoke(args=["suppress-domain", "not a domain"]).exit_code == 1
    result = runner.invoke(args=["suppress-domain", "@Example.COM", "--note", "competitor"])
    assert result.exit_code == 0 and "suppressed" in result.output
    assert "already" in runner.invoke(args=["suppress-domain", "example.com"]).output
    cid = make_sequence(engine, 1)
    assert send_at(app, engine, settings, cid, NOW).sent == 0


# --- pages ---------------------------------------------------------------------------


def test_the_sequence_page_lists_steps_with_counts_and_adds_one(app, engine, settings, client):
    from helpers import csrf_token, log_in

    cid = make_sequence(engine, 2, steps=((2, DelayUnit.DAYS),), business_days=True)
    sequences.set_step_variant(engine, cid, 2, "B", "<script>x</script>", "b")
    send_at(app, engine, settings, cid, NOW)
    log_in(app, client)
    page = client.get(f"/campaigns/{cid}/sequence").get_data(as_text=True)
    assert 'id="step-1"' in page and 'id="step-2"' in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page
    step1 = page.split('id="step-1"')[1].split('id="step-2"')[0]
    assert '<b class="sent">2</b>' in step1
    step2 = page.split('id="step-2"')[1].split('id="add-step"')[0]
    assert '<b class="waiting">2</b>' in step2
    token = csrf_token(client.get(f"/campaigns/{cid}/sequence").data)
    added = client.post(f"/campaigns/{cid}/sequence/steps", data={
        "csrf_token": token, "delay_amount": "36", "delay_unit": "hours", "letter": "A", "subject": "s",
        "body": "b"}, follow_redirects=True)
    assert 'id="step-3"' in added.get_data(as_text=True)
    refused = client.post(f"/campaigns/{cid}/sequence/remove", data={"csrf_token": token, "step": "1"},
                          follow_redirects=True).get_data(as_text=True)
    assert 'id="step-1"' in refused  # step 1 stays
    client.post(f"/campaigns/{cid}/sequence/remove", data={"csrf_token": token, "step": "3"})
    assert 'id="step-3"' not in client.get(f"/campaigns/{cid}/sequence").get_data(as_text=True)
    link = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert f'href="/campaigns/{cid}/sequence"' in link


def dashboard_row(client, cid: int) -> str:
    return client.get("/").get_data(as_text=True).split(f'data-campaign="{cid}"')[1].split("</tr>")[0]


def test_the_pages_count_leads_waiting_for_the_next_step_apart_from_new_ones(app, engine, settings, client):
    cid = make_sequence(engine, 3, steps=((2, DelayUnit.DAYS),))
    send_at(app, engine, settings, cid, NOW)  # step 1 went to all three: they wait for step 2
    log_in(app, client)
    row = dashboard_row(client, cid)
    assert '<span class="sent-count">Wysłano 0 z 3</span>' in row  # "sent" stays what it says
    assert ('<span class="small muted waiting-note">· '
            '<span class="waiting-text">3 czekają na kolejny krok</span>') in row
    page = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert ('oczekuje <span class="pending">0</span> · '
            'czeka na kolejny krok <span class="waiting">3</span>') in page
    live = client.get("/status.json").get_json()["campaigns"][str(cid)]
    assert (live["pending"], live["waiting"], live["waiting_text"]) == (0, 3, "3 czekają na kolejny krok")
    client.post("/language", data={"language": "en", "csrf_token": csrf_token(client.get("/").data)})
    row = dashboard_row(client, cid)
    assert "0 of 3 sent" in row and '<span class="waiting-text">3 waiting for the next step</span>' in row
    page = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert 'waiting for the next step <span class="waiting">3</span>' in page
    with immediate(engine) as conn:  # every lead got every step: the note is hidden
        conn.execute(update(CampaignLead.__table__).values(state="sent", step=2, due_at=None))
    assert '<span class="small muted waiting-note" hidden>' in dashboard_row(client, cid)


def test_a_campaign_whose_leads_all_wait_is_not_reported_finished(app, engine, settings, client, runner):
    cid = make_sequence(engine, 2, steps=((2, DelayUnit.DAYS),))
    send_at(app, engine, settings, cid, NOW)
    assert send_at(app, engine, settings, cid, at(days=1)).stopped_by.code == "nothing_due"
    assert status_of(engine, cid) == "active"
    assert "pending: 0" not in (shown := runner.invoke(args=["campaign", "show", str(cid)]).output)
    assert "waiting: 2" in shown
    with immediate(engine) as conn:  # a draft (or finished) campaign with leads waiting still has work
        conn.execute(update(Campaign.__table__).where(Campaign.id == cid).values(status="draft"))
    log_in(app, client)
    page = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert 'id="start-hint"' not in page and f"/campaigns/{cid}/start" in page
    campaigns.start(engine, cid)  # not refused as "nothing to send"
    assert status_of(engine, cid) == "active"


def test_a_leads_timeline_shows_sent_due_and_stopped(app, engine, settings, client):
    from helpers import csrf_token, log_in

    cid = make_sequence(engine, 1)
    send_at(app, engine, settings, cid, NOW)
    log_in(app, client)
    client.post("/language", data={"language": "en", "csrf_token": csrf_token(client.get("/").data)})
    page = client.get(f"/campaigns/{cid}/leads/1/timeline").get_data(as_text=True)
    assert "step 1 sent Wed 25.11 11:00 (Europe/Warsaw)" in page and "step 2 due Fri 27.11 11:00" in page
    token = csrf_token(page.encode())
    stopped = client.post(f"/campaigns/{cid}/leads/1/stop", data={"csrf_token": token}, follow_redirects=True)
    assert "stopped by a person" in stopped.get_data(as_text=True)
    assert enrollments(engine, cid)[1].state == "stopped"
    found = client.get(f"/campaigns/{cid}/sequence?lead=LEAD0000@example.com")
    assert found.status_code == 302 and found.location.endswith(f"/campaigns/{cid}/leads/1/timeline")


def test_a_finished_campaign_reopens_from_the_page_only_with_the_box_ticked(app, engine, settings, client):
    from helpers import csrf_token, log_in

    cid = make_sequence(engine, 1, steps=())
    send_at(app, engine, settings, cid, NOW)
    log_in(app, client)
    page = client.get(f"/campaigns/{cid}/sequence").get_data(as_text=True)
    assert 'name="reopen"' in page and "(1)" in page  # the count of leads the new step reaches
    data = {"csrf_token": csrf_token(page.encode()), "delay_amount": "1", "delay_unit": "days", "letter": "A",
            "subject": "s", "body": "b"}
    client.post(f"/campaigns/{cid}/sequence/steps", data=data)
    assert status_of(engine, cid) == "finished"
    client.post(f"/campaigns/{cid}/sequence/steps", data={**data, "reopen": "y"})
    assert status_of(engine, cid) == "active" and enrollments(engine, cid)[1].step == 2


def test_the_enroll_confirmation_warns_about_leads_active_elsewhere_and_skips_them(app, engine, client):
    from helpers import csrf_token, log_in

    make_campaign(engine, 2)
    other = campaigns.create(engine, name="other", from_address="team@sendonce.test")
    campaigns.add_variant(engine, other, "A", "s", "b")
    log_in(app, client)
    token = csrf_token(client.get("/").data)
    page = client.post(f"/campaigns/{other}/enroll", data={"csrf_token": token}).get_data(as_text=True)
    assert 'id="active-elsewhere"' in page and "lead0001@example.com" in page
    assert 'name="skip_elsewhere"' in page
    client.post(f"/campaigns/{other}/enroll",
                data={"csrf_token": token, "confirm": "1", "skip_elsewhere": "1"})
    assert enrollments(engine, other) == {}
    client.post(f"/campaigns/{other}/enroll", data={"csrf_token": token, "confirm": "1"})
    assert len(enrollments(engine, other)) == 2


def test_the_suppressions_page_takes_a_whole_domain(app, engine, client):
    from helpers import csrf_token, log_in
    from models import Suppression

    log_in(app, client)
    token = csrf_token(client.get("/suppressions").data)
    client.post("/suppressions", data={"csrf_token": token, "email": "@Konkurencja.PL", "detail": "rival"})
    bad = client.post("/suppressions", data={"csrf_token": token, "email": "not a domain!"})
    bad = bad.get_data(as_text=True)
    assert "To nie jest domena: not a domain!" in bad
    client.post("/suppressions", data={"csrf_token": token, "email": "someone@example.com"})
    with engine.connect() as conn:
        assert dict(conn.execute(select(Suppression.email, Suppression.reason)).all()) == {
            "@konkurencja.pl": "domain", "someone@example.com": "manual"}


def test_a_follow_up_goes_out_through_the_leads_pinned_mailbox_only(app, engine, settings):
    from core import mailboxes
    from delivery.transport import Result
    from models import SendStatus
    from sender import record
    from test_mailbox_engine import add_mailbox

    first = add_mailbox(app, engine, "anna@firma.pl", daily_cap=100)
    other = add_mailbox(app, engine, "piotr@firma.pl", daily_cap=1000)
    cid = make_sequence(engine, 1, steps=((1, DelayUnit.HOURS),))
    mailboxes.link(engine, cid, [first])
    claim = claim_next(engine, settings, cid, Trigger.CLI, NOW)
    record(engine, settings, claim, Result(SendStatus.SENT, "250 ok"), NOW)
    mailboxes.link(engine, cid, [first, other])  # the other has more room now
    mailboxes.pause(engine, first, "by hand")
    waiting = claim_next(engine, settings, cid, Trigger.CLI, at(hours=2))
    assert isinstance(waiting, Refusal)  # step 2 waits for its own mailbox, never the other
    mailboxes.resume(engine, first)
    follow_up = claim_next(engine, settings, cid, Trigger.CLI, at(hours=3))
    assert (follow_up.step, follow_up.mailbox_id) == (2, first)


def test_a_step_without_a_usable_variant_pauses_the_campaign_and_keeps_the_lead(app, engine, settings):
    cid = make_sequence(engine, 1, steps=((1, DelayUnit.HOURS),), start=False)
    with immediate(engine) as conn:  # a step left without a variant (removed by hand)
        conn.execute(Variant.__table__.delete().where(Variant.step == 2))
    campaigns.start(engine, cid)
    send_at(app, engine, settings, cid, NOW)
    send_at(app, engine, settings, cid, at(hours=1))
    assert status_of(engine, cid) == "paused"
    assert [(r.step, r.status) for r in rows(engine, cid)] == [(1, "sent"), (2, "retry")]


def test_a_late_sent_after_the_campaign_finished_wakes_it_for_the_next_step(engine, settings):
    # Found by the state machine: a claimer frozen past the sweep reports `sent` after the
    # campaign finished; its lead moves on to step 2, which a finished campaign never claims.
    cid = make_campaign(engine, 1, variants="A", start=False)
    sequences.add_step(engine, cid, amount=10, unit=DelayUnit.SECONDS, subject="s2", body="b2", now=NOW)
    campaigns.start(engine, cid)
    claim = claim_next(engine, settings, cid, Trigger.BUTTON, NOW)
    later = NOW + timedelta(seconds=settings.stale_seconds + 1)
    recover(engine, settings, later)  # no answer in time: `unknown`
    assert claim_next(engine, settings, cid, Trigger.BUTTON, later).code == "finished"
    record(engine, settings, claim, Result(SendStatus.SENT, "250 ok"), later)  # the late answer
    with engine.connect() as conn:
        assert conn.execute(select(Campaign.status).where(Campaign.id == cid)).scalar_one() == "active"
    follow_up = claim_next(engine, settings, cid, Trigger.BUTTON, later + timedelta(seconds=10))
    assert isinstance(follow_up, Claim) and (follow_up.lead_id, follow_up.step) == (claim.lead_id, 2)
