"""What the admin pages ask the database, and the header every page shares.

The pages stay fast at 1,000,000 send_log rows because of what is pinned here: the dashboard
and the campaign page read enrollment counts from campaign_state_count (never a scan of
campaign_lead), and no page runs a query per row or per campaign.
"""

from __future__ import annotations

import re
from collections import Counter

import flask_babel
import pytest
from flask import render_template_string
from sqlalchemy import event, func, insert, select

from core import replies, sequences, stats
from helpers import make_campaign, serve_requests
from models import DelayUnit, Lead, SendLog, User, db
from storage.database import immediate
from storage.timeutil import utcnow
from test_web import csrf_token, login  # noqa: F401 - the login fixture
from web import i18n
from web.campaigns import utc_time

SKIP = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|PRAGMA|SAVEPOINT|RELEASE)\b", re.IGNORECASE)


def statements(engine, client, url: str) -> list[str]:
    """Every statement one GET runs (as the bench captures them), after checking it is a 200."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not SKIP.match(statement):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get(url).status_code == 200, url
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


@pytest.fixture
def admin(client, login):  # noqa: F811
    login()
    return client


def test_dashboard_and_campaign_page_never_scan_the_enrollments(engine, admin):
    cid = make_campaign(engine, 3)
    for url in ("/", f"/campaigns/{cid}", "/status.json"):
        sql = statements(engine, admin, url)
        assert not [s for s in sql if "campaign_lead" in s], url


def test_dashboard_runs_the_same_queries_for_one_campaign_or_five(engine, admin):
    make_campaign(engine, 2)
    one = statements(engine, admin, "/")
    for _ in range(4):
        make_campaign(engine, 2)
    # <= 8: the alerts box, the mailboxes' capacity and their links (#16) are one query each.
    assert len(statements(engine, admin, "/")) == len(one) <= 8


def press_send(app, admin, cid: int, key: str) -> None:
    page = admin.get(f"/campaigns/{cid}").data
    admin.post(f"/campaigns/{cid}/send", data={"csrf_token": csrf_token(page), "key": key})
    serve_requests(app)


@pytest.mark.parametrize("url", ["/leads", "/leads?q=lead", "/campaigns/{cid}/log",
                                 "/campaigns/{cid}/log?status=sent", "/campaigns/{cid}"])
def test_list_pages_run_no_query_per_row(app, engine, admin, url):
    cid = make_campaign(engine, 1, batch_size=1)
    press_send(app, admin, cid, "a" * 32)
    few = statements(engine, admin, url.format(cid=cid))  # one lead, one send
    more = make_campaign(engine, 12, batch_size=12)
    press_send(app, admin, more, "b" * 32)
    many = statements(engine, admin, url.format(cid=more))  # twelve of each
    assert len(many) == len(few), url
    rows = admin.get(url.format(cid=more)).get_data(as_text=True).count('href="/leads/')
    assert rows >= 12, (url, rows)  # the second page really lists more rows


def test_the_header_language_switch_posts_what_language_form_validates(app, engine, admin):
    page = admin.get("/leads?q=a%22b").get_data(as_text=True)
    form = re.search(r'<form method="post" action="/language".*?</form>', page, re.S).group(0)
    fields = dict(re.findall(r'name="(csrf_token|back)" type="hidden" value="([^"]*)"', form))
    assert fields["back"] == "/leads?q=a%22b"  # the current page, escaped in the attribute
    assert re.search(r'<select [^>]*name="language"[^>]*><option selected value="pl">Polski</option>'
                     r'<option value="en">English</option></select>', form)
    reply = admin.post("/language", data={**fields, "language": "en"})
    assert reply.status_code == 302 and reply.headers["Location"] == "/leads?q=a%22b"
    with app.app_context():
        assert db.session.query(User.language).scalar() == "en"
    assert '<option selected value="en">English</option>' in admin.get("/").get_data(as_text=True)


def test_templates_follow_a_locale_switched_mid_request(app):
    with app.test_request_context("/"):
        assert render_template_string("{{ _('Campaigns') }}") == "Kampanie"
        with flask_babel.force_locale("en"):
            assert render_template_string("{{ _('Campaigns') }}") == "Campaigns"
        assert render_template_string("{{ _('Campaigns') }}") == "Kampanie"


def test_status_badge_translates_and_escapes(app):
    with app.test_request_context("/"):
        assert str(i18n.status_badge("sent")) == '<span class="status sent">wysłano</span>'
        with flask_babel.force_locale("en"):
            assert str(i18n.status_badge("sent")) == '<span class="status sent">sent</span>'
        assert str(i18n.status_badge('"><b>')) == \
            '<span class="status &#34;&gt;&lt;b&gt;">&#34;&gt;&lt;b&gt;</span>'


def test_times_show_to_the_second(app):
    from datetime import datetime

    assert utc_time(datetime(2025, 1, 6, 7, 5, 9, 123456)) == "2025-01-06 07:05:09"
    assert utc_time(None) == "—"


def test_the_campaign_page_reads_its_reply_and_bounce_rates_in_one_query(app, engine, admin):
    cid = make_campaign(engine, 2, batch_size=2)
    press_send(app, admin, cid, "c" * 32)
    sql = statements(engine, admin, f"/campaigns/{cid}")
    assert len([s for s in sql if "inbound_message" in s]) == 1  # core.replies.rates: every step and variant
    with engine.connect() as conn:  # a one-step campaign: counted per variant, as step 1
        assert {r.step for r in replies.rates(conn, cid)} == {1}
        assert sum(r.sent for r in replies.rates(conn, cid)) == 2


def add_sends(engine, campaign_id: int, step: int, shapes: list[tuple[str, str]]) -> None:
    """send_log rows (letter, status) for the campaign's first leads, one each, at `step`."""
    with engine.connect() as conn:
        lead_ids = conn.execute(select(Lead.id).order_by(Lead.id)).scalars().all()
    with immediate(engine) as conn:
        conn.execute(insert(SendLog.__table__), [
            {"campaign_id": campaign_id, "lead_id": lead, "step": step, "variant_letter": letter,
             "status": status, "trigger": "cli", "worker": "test"}
            for lead, (letter, status) in zip(lead_ids, shapes, strict=False)])


def recount(engine, campaign_id: int, one_step: bool) -> dict:
    """What stats.send_counts must equal: a plain GROUP BY of the campaign's sends."""
    with engine.connect() as conn:
        rows = conn.execute(select(SendLog.step, SendLog.variant_letter, SendLog.status, func.count())
                            .where(SendLog.campaign_id == campaign_id, SendLog.status.in_(stats.COUNTED))
                            .group_by(SendLog.step, SendLog.variant_letter, SendLog.status))
        counts: Counter = Counter()
        for step, letter, status, n in rows:
            counts[(1 if one_step else step, letter, status)] += n
    return dict(counts)


def check_counts(engine, app, campaign_id: int, one_step: bool) -> None:
    expected = recount(engine, campaign_id, one_step)
    with engine.connect() as conn:
        assert stats.send_counts(conn, campaign_id) == expected
        sent = {(r.step, r.variant): r.sent for r in replies.rates(conn, campaign_id)}
    assert sent == {(step, letter): n for (step, letter, status), n in expected.items() if status == "sent"}
    with app.app_context():
        shown = {(r.letter, status): getattr(r, status)
                 for r in stats.variant_results(db.session, campaign_id) for status in stats.COUNTED}
    by_letter: Counter = Counter()
    for (_step, letter, status), n in expected.items():
        by_letter[(letter, status)] += n
    assert {key: n for key, n in shown.items() if n} == dict(by_letter)


@pytest.mark.postgres
def test_the_a_b_counts_equal_a_group_by_for_every_letter_status_and_step(app, engine):
    # The campaign page counts each (status, letter) found by a skip scan of the index: a
    # letter with only failed sends, one with none counted, a two-letter one, another campaign.
    cid = make_campaign(engine, 14, start=False)
    other = make_campaign(engine, 14, start=False)
    add_sends(engine, other, 1, [("A", "sent")] * 5 + [("C", "failed")])
    add_sends(engine, cid, 1, [("A", "sent"), ("A", "sent"), ("A", "failed"), ("B", "sent"),
                               ("B", "unknown"), ("C", "failed"), ("D", "retry"), ("D", "sending"),
                               ("AB", "sent"), ("Z", "unknown"), ("B", "sent"), ("A", "unknown")])
    check_counts(engine, app, cid, one_step=True)
    # A sequence: counted per step (from the rows: no index has the step).
    sequences.add_step(engine, cid, amount=1, unit=DelayUnit.DAYS, subject="s2", body="b2", now=utcnow())
    add_sends(engine, cid, 2, [("A", "sent"), ("B", "failed"), ("A", "unknown"), ("E", "sent")])
    check_counts(engine, app, cid, one_step=False)
    empty = make_campaign(engine, 1, start=False)
    with engine.connect() as conn:
        assert stats.send_counts(conn, empty) == {} and replies.rates(conn, empty) == []


@pytest.mark.postgres
def test_the_campaign_page_counts_the_sends_once_for_the_a_b_table_and_the_rates(app, engine, admin):
    cid = make_campaign(engine, 2, batch_size=2)
    press_send(app, admin, cid, "d" * 32)
    sql = statements(engine, admin, f"/campaigns/{cid}")
    assert len([s for s in sql if "count(*)" in s and "send_log.variant_letter =" in s]) == 1
    assert not [s for s in sql if "GROUP BY send_log.variant_letter, send_log.status" in s]


@pytest.mark.postgres
def test_the_campaign_page_shows_the_stopped_sequences(app, engine, admin):
    cid = make_campaign(engine, 3)
    with engine.connect() as conn:
        first = conn.execute(select(Lead.id).order_by(Lead.id)).scalars().first()
    assert sequences.stop(engine, cid, first, "person", utcnow()) == 1
    page = admin.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert re.search(r'zatrzymane <span class="stopped">1</span>', page)
    assert 'title="sekwencje zatrzymane przez odpowiedź lub ręcznie"' in page
    assert admin.get("/status.json").get_json()["campaigns"][str(cid)]["stopped"] == 1
