"""What the admin pages ask the database, and the header every page shares.

The pages stay fast at 1,000,000 send_log rows because of what is pinned here: the dashboard
and the campaign page read enrollment counts from campaign_state_count (never a scan of
campaign_lead), and no page runs a query per row or per campaign.
"""

from __future__ import annotations

import re

import flask_babel
import pytest
from flask import render_template_string
from sqlalchemy import event

from core import replies
from helpers import make_campaign, serve_requests
from models import User, db
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
