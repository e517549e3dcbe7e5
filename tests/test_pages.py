"""Every page renders, in both languages; bad form values re-render with the message;
lead data is escaped wherever it is shown."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select, update

from core import campaigns, leads, mailboxes
from helpers import make_campaign, make_unknown, serve_requests
from models import Campaign, CampaignLead, Lead, Mailbox, SendLog, Suppression, User, Variant, db
from storage.database import immediate
from storage.secrets import Vault
from test_web import csrf_token, login  # noqa: F401 - the login fixture

pytestmark = pytest.mark.postgres  # runs again on PostgreSQL (make test)

EVIL = '<script>alert("x")</script>'
QUOTES = "\"'><img src=x onerror=alert(1)>"


@pytest.fixture
def seeded(app, engine, smtp, client, login):  # noqa: F811
    cid = make_campaign(engine, 3, body="Hi {{ first_name }} of {{ company }} from {{ city }}",
                        start=False)
    with immediate(engine) as conn:
        conn.execute(update(Lead.__table__).where(Lead.id == 1).values(
            first_name=EVIL, company=QUOTES, tags=EVIL, fields={"city": EVIL}))
        conn.execute(update(Lead.__table__).where(Lead.id != 1).values(fields={"city": "Kraków"}))
    campaigns.start(engine, cid)
    login()
    page = client.get(f"/campaigns/{cid}").data
    key = re.search(rb'name="key" type="hidden" value="([0-9a-f]+)"', page).group(1).decode()
    client.post(f"/campaigns/{cid}/send", data={"csrf_token": csrf_token(page), "key": key})
    serve_requests(app)
    with immediate(engine) as conn:
        conn.execute(Suppression.__table__.insert().values(email="gone@example.com", reason="manual",
                                                           detail=EVIL))
    return cid


@pytest.fixture
def with_mailbox(app, engine, seeded):
    """The seeded campaign sending through a paused mailbox with hostile texts, its leads waiting."""
    cid = seeded
    box = mailboxes.create(engine, Vault(app.config["MAILBOX_KEY_FILE"]), address="box@example.com",
                           name=EVIL, signature=QUOTES, backend="outbox")
    mailboxes.link(engine, cid, [box])
    mailboxes.pause(engine, box, EVIL)
    with immediate(engine) as conn:
        conn.execute(update(Mailbox.__table__).values(last_error=QUOTES))
        conn.execute(update(CampaignLead.__table__).values(mailbox_id=box))  # waiting for a paused mailbox
    return cid


def get_pages(app, cid):
    values = {"campaign_id": cid, "lead_id": 1, "letter": "A", "send_log_id": 1, "suppression_id": 1,
              "request_id": 1, "token": "0" * 24, "mailbox_id": 1}
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint in ("static", "unsubscribe.unsubscribe"):
            continue
        if rule.endpoint in ("leads.mapping", "leads.rejected", "timeline.legacy"):
            continue  # need an upload first; covered by the import and timeline tests
        url = rule.build({k: v for k, v in values.items() if k in rule.arguments})[1]
        if rule.endpoint == "sendlog.resolve":
            url += "?action=mark-sent"
        yield rule.endpoint, url


@pytest.mark.parametrize("language", ["pl", "en"])
def test_every_page_renders_in_both_languages(app, client, with_mailbox, language):
    seeded = with_mailbox
    client.post("/language", data={"language": language, "csrf_token": csrf_token(client.get("/").data)})
    pages = list(get_pages(app, seeded))
    assert len(pages) >= 12
    for endpoint, url in pages:
        response = client.get(url)
        assert response.status_code == 200, (endpoint, url, response.status_code)
    html = client.get("/").get_data(as_text=True)
    assert ("Kampanie" in html) == (language == "pl") and ("Campaigns" in html) == (language == "en")


def test_language_choice_persists_on_the_user(app, client, seeded):
    client.post("/language", data={"language": "en", "csrf_token": csrf_token(client.get("/").data)})
    with app.app_context():
        assert db.session.scalar(select(User.language)) == "en"


def test_lead_data_is_escaped_on_every_page_that_shows_it(app, client, with_mailbox):
    seeded = with_mailbox
    for endpoint, url in get_pages(app, seeded):
        html = client.get(url).get_data(as_text=True)
        assert EVIL not in html and "<img src=x" not in html, endpoint
    shown = client.get("/leads/1").get_data(as_text=True) + client.get("/leads").get_data(as_text=True)
    assert "&lt;script&gt;" in shown
    preview = client.get(f"/campaigns/{seeded}/variants/A?lead=1").get_data(as_text=True)
    assert "Hi &lt;script&gt;" in preview


def test_unknown_send_decision_asks_then_records_who(app, client, seeded, engine):
    make_unknown(engine)
    confirm = client.get("/sends/1/resolve?action=send-again")
    assert confirm.status_code == 200
    with engine.connect() as conn:
        assert conn.execute(select(SendLog.status)).scalar() == "unknown"  # GET changed nothing
    client.post("/sends/1/resolve", data={"action": "send-again", "csrf_token": csrf_token(confirm.data)})
    with engine.connect() as conn:
        row = conn.execute(select(SendLog.status, SendLog.decided_by)).one()
    assert tuple(row) == ("retry", "admin@example.com")


BAD_CAMPAIGN_VALUES = [
    ({"interval_seconds": "-5"}, "interval_seconds"),
    ({"window_start_hour": "17", "window_end_hour": "9"}, "window_end_hour"),
    ({"daily_cap": "0"}, "daily_cap"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"from_address": "not an address"}, "from_address"),
    ({"window_weekdays": []}, "window_weekdays"),
    ({"batch_size": "abc"}, "batch_size"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_CAMPAIGN_VALUES)
def test_bad_campaign_values_rerender_the_form_with_the_message(app, client, seeded, bad, field):
    token = csrf_token(client.get("/campaigns/new").data)
    form = {"csrf_token": token, "name": "Kept name", "from_address": "me@example.com", "from_name": "",
            "interval_seconds": "60", "batch_size": "1", "daily_cap": "", "window_weekdays": ["0", "1"],
            "window_start_hour": "9", "window_end_hour": "17", "timezone": "Europe/Warsaw", **bad}
    response = client.post("/campaigns/new", data=form)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'value="Kept name"' in html  # what the user typed is kept
    label = re.search(rf'<label class="field has-error">\s*<span>[^<]*</span>\s*<[^>]*name="{field}"', html)
    weekdays_error = field == "window_weekdays" and 'class="field has-error"' in html
    assert label or weekdays_error, f"no error shown at {field}"
    with app.app_context():
        assert db.session.scalar(select(Campaign).where(Campaign.name == "Kept name")) is None


def test_template_error_is_shown_at_the_field(client, seeded):
    page = client.get(f"/campaigns/{seeded}/variants/new")
    response = client.post(f"/campaigns/{seeded}/variants/new", data={
        "csrf_token": csrf_token(page.data), "letter": "C", "subject": "Hi {{ first_name",
        "body": "ok", "weight": "1"})
    html = response.get_data(as_text=True)
    error_after_subject = (r'name="subject"[^>]*>\s*(<small class="muted">[^<]*</small>\s*)?'
                           r'<small class="error">')
    assert re.search(error_after_subject, html)


def test_a_campaign_can_be_built_and_started_in_the_browser_forms(app, client, seeded, engine, smtp):
    token = csrf_token(client.get("/campaigns/new").data)
    created = client.post("/campaigns/new", data={
        "csrf_token": token, "name": "Q1", "from_address": "Me@Example.com", "interval_seconds": "0",
        "batch_size": "2", "window_weekdays": [str(d) for d in range(7)], "window_start_hour": "0",
        "window_end_hour": "24", "timezone": "Europe/Warsaw"})
    cid = int(re.search(r"/campaigns/(\d+)/", created.location).group(1))
    for letter in "AB":
        client.post(f"/campaigns/{cid}/variants/new", data={
            "csrf_token": token, "letter": letter, "subject": f"{letter} {{{{ first_name }}}}",
            "body": "Hello {{ company }}", "weight": "1"})
    client.post(f"/campaigns/{cid}/enroll", data={"csrf_token": token, "tag": "", "confirm": "1"})
    client.post(f"/campaigns/{cid}/start", data={"csrf_token": token})
    with app.app_context():
        campaign = db.session.get(Campaign, cid)
        assert campaign.status == "active" and {v.letter for v in campaign.variants} == {"A", "B"}
        assert campaign.from_address == "me@example.com"
    assert leads  # the module is what enrollment used


def test_send_test_goes_only_to_me_and_is_not_counted(app, client, seeded, engine, smtp):
    token = csrf_token(client.get(f"/campaigns/{seeded}/variants/A").data)
    before = sum(smtp.recorder.received.values())
    client.post(f"/campaigns/{seeded}/variants/A/test?lead=2", data={"csrf_token": token})
    assert smtp.recorder.received["admin@example.com"] == 1
    assert sum(smtp.recorder.received.values()) == before + 1
    assert smtp.recorder.messages[-1]["Subject"].startswith("[TEST] ")
    with engine.connect() as conn:
        assert len(conn.execute(select(SendLog.id)).all()) == 1


def test_editing_a_running_campaign_checks_the_new_template_against_its_leads(app, client, seeded, engine):
    page = client.get(f"/campaigns/{seeded}/variants/A")
    response = client.post(f"/campaigns/{seeded}/variants/A", data={
        "csrf_token": csrf_token(page.data), "letter": "A", "subject": "Hi", "weight": "1",
        "body": "Hello {{ first_name }} from {{ region }}"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "nieznane pole {{ region }}" in html
    with app.app_context():
        body = db.session.scalar(select(Variant.body).where(Variant.letter == "A"))
    assert "region" not in body  # not saved


def test_starting_a_campaign_without_leads_is_refused_in_polish(app, client, seeded, engine):
    token = csrf_token(client.get("/campaigns/new").data)
    created = client.post("/campaigns/new", data={
        "csrf_token": token, "name": "Pusta", "from_address": "me@example.com", "interval_seconds": "60",
        "batch_size": "1", "window_weekdays": [str(d) for d in range(7)], "window_start_hour": "0",
        "window_end_hour": "24", "timezone": "Europe/Warsaw"})
    cid = int(re.search(r"/campaigns/(\d+)/", created.location).group(1))
    client.post(f"/campaigns/{cid}/variants/new", data={
        "csrf_token": token, "letter": "A", "subject": "Hi", "body": "Hello", "weight": "1"})
    page = client.post(f"/campaigns/{cid}/start", data={"csrf_token": token}, follow_redirects=True)
    assert "Nie uruchomiono: do tej kampanii nie zapisano żadnych leadów" in page.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Campaign, cid).status == "draft"
