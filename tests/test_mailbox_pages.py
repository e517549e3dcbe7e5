"""The mailbox pages (#16): list, add/edit, check connection and test send against a real SMTP
server, pause/resume, the campaign's mailbox picker, moving leads off a paused mailbox, the
dashboard's capacity table; secrets never rendered; login and CSRF on every new route."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select, update

from core import mailboxes
from helpers import csrf_token, logged_in_client, make_campaign
from models import Campaign, CampaignLead, EnrollmentState, Mailbox, SendLog
from storage.database import immediate
from storage.secrets import Vault
from storage.timeutil import utcnow
from test_browser import admin, log_in, shoot_every_page  # noqa: F401 - the admin fixture
from test_security import send_now
from tests.smtp_sink import SmtpSink

SECRET = "hunter2-very-secret-Pa55"


@pytest.fixture
def client(app):
    return logged_in_client(app)


@pytest.fixture
def vault(app):
    return Vault(app.config["MAILBOX_KEY_FILE"])


def form_values(**changes) -> dict:
    """Every field of the mailbox form as the browser posts it."""
    values = {"name": "Anna Nowak", "address": "anna@firma.example", "backend": "smtp",
              "smtp_host": "127.0.0.1", "smtp_port": "587", "smtp_security": "none", "smtp_username": "",
              "auth_kind": "password", "smtp_password": "", "imap_host": "", "imap_port": "993",
              "imap_security": "ssl", "imap_username": "", "imap_password": "", "daily_cap": "50",
              "min_gap_seconds": "120", "ramp_start": "", "ramp_step": "0", "timezone": "Europe/Warsaw",
              "signature": "Anna Nowak\nFirma"}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def post_form(client, url: str, **changes):
    token = csrf_token(client.get("/mailboxes/new").data)
    return client.post(url, data={"csrf_token": token, **form_values(**changes)})


def row(engine, mailbox_id: int = 1):
    with engine.connect() as conn:
        return conn.execute(select(Mailbox.__table__).where(Mailbox.id == mailbox_id)).one()


def flashes(html: str) -> list[str]:
    return re.findall(r'<p class="flash (?:ok|error|info)"[^>]*>(.*?)</p>', html, re.S)


def field_errors(html: str, name: str) -> list[str]:
    """The error messages shown right after the named field's input."""
    match = re.search(rf'<label class="field has-error">\s*<span>[^<]*</span>\s*<(?:input|select|textarea)'
                      rf'[^>]*name="{name}"[^>]*>(.*?)</label>', html, re.S)
    return re.findall(r'<small class="error">(.*?)</small>', match.group(1)) if match else []


# --- add, edit, validation ---------------------------------------------------------------


def test_a_mailbox_is_added_with_its_secret_sealed_and_edited_keeping_it(client, engine, vault):
    created = post_form(client, "/mailboxes/new", smtp_password=SECRET, imap_host="imap.firma.example",
                        imap_password="imap-" + SECRET, ramp_start="5", ramp_step="5", alert_sender="y")
    assert created.status_code == 302 and created.location.endswith("/mailboxes/1/edit")
    saved = row(engine)
    assert (saved.address, saved.name, saved.ramp_start, saved.alert_sender) == (
        "anna@firma.example", "Anna Nowak", 5, True)
    assert saved.smtp_secret != SECRET and vault.open(saved.smtp_secret) == SECRET
    assert vault.open(saved.imap_secret) == "imap-" + SECRET
    # An empty "change" field keeps the stored secret; a typed one replaces it.
    assert post_form(client, "/mailboxes/1/edit", daily_cap="80").status_code == 302
    assert (row(engine).daily_cap, vault.open(row(engine).smtp_secret)) == (80, SECRET)
    post_form(client, "/mailboxes/1/edit", smtp_password="new-one")
    assert vault.open(row(engine).smtp_secret) == "new-one"
    assert vault.open(row(engine).imap_secret) == "imap-" + SECRET


def test_the_form_is_grouped_and_its_password_fields_start_empty(client, engine, vault):
    mailboxes.create(engine, vault, address="anna@firma.example", smtp_password=SECRET)
    html = client.get("/mailboxes/1/edit").get_data(as_text=True)
    legends = re.findall(r"<legend>(.*?)</legend>", html)
    assert legends == ["Nadawca", "SMTP", "IMAP (do czytania odpowiedzi)", "Limity", "Podpis"]
    for name in ("smtp_password", "imap_password"):
        tag = re.search(rf'<input[^>]*name="{name}"[^>]*>', html).group(0)
        assert 'type="password"' in tag and not re.search(r'value="[^"]', tag), tag
    assert "Zmień hasło lub token" in html and "Hasło jest zapisane" in html


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"smtp_port": "70000"}, "smtp_port", "od 0 do 65535"),
    ({"daily_cap": "dużo"}, "daily_cap", ""),
    ({"address": "not an address"}, "address", ""),
    ({"smtp_host": ""}, "smtp_host", "Podaj serwer SMTP"),
    ({"address": "taken@firma.example"}, "address", "Skrzynka z tym adresem już istnieje."),  # core's refusal
])
def test_a_bad_value_shows_the_form_again_with_the_message_at_its_field(client, engine, vault, changes, field,
                                                                        message):
    mailboxes.create(engine, vault, address="taken@firma.example")
    response = post_form(client, "/mailboxes/new", smtp_password=SECRET, **changes)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    errors = field_errors(html, field)
    assert errors and message in errors[0], (field, errors)
    assert 'value="Anna Nowak"' in html  # what was typed stays ...
    assert SECRET not in html  # ... except the password, never echoed back
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Mailbox)).scalar_one() == 1  # nothing saved


def test_an_edit_refused_by_core_keeps_the_stored_values(client, engine, vault):
    mailboxes.create(engine, vault, address="a@firma.example")
    mailboxes.create(engine, vault, address="b@firma.example")
    html = post_form(client, "/mailboxes/2/edit", address="a@firma.example").get_data(as_text=True)
    assert field_errors(html, "address") == ["Skrzynka z tym adresem już istnieje."]
    assert row(engine, 2).address == "b@firma.example"


def test_no_page_ever_shows_a_stored_secret_or_its_ciphertext(app, client, engine, vault, smtp):
    cid = make_campaign(engine, 2)
    post_form(client, "/mailboxes/new", smtp_port=str(smtp.port), smtp_password=SECRET,
              imap_password="imap-" + SECRET)
    mailboxes.link(engine, cid, [1])
    sealed = row(engine)
    token = csrf_token(client.get("/mailboxes").data)
    pages = {url: client.get(url).get_data(as_text=True) for url in (
        "/", "/mailboxes", "/mailboxes/1/edit", "/mailboxes/new", f"/campaigns/{cid}",
        f"/campaigns/{cid}/edit", "/campaigns/new")}
    pages["refused edit"] = post_form(client, "/mailboxes/1/edit", smtp_port="x",
                                      smtp_password=SECRET).get_data(as_text=True)
    pages["check"] = client.post("/mailboxes/1/check", data={"csrf_token": token}).get_data(as_text=True)
    pages["test"] = client.post("/mailboxes/1/test", data={"csrf_token": token, "to": "me@example.com"},
                                follow_redirects=True).get_data(as_text=True)
    for name, html in pages.items():
        assert SECRET not in html, name
        for ciphertext in (sealed.smtp_secret, sealed.imap_secret):
            assert ciphertext not in html and ciphertext[:40] not in html, name


# --- the list, pause and resume -----------------------------------------------------------


def test_the_list_shows_todays_sends_against_the_ramped_cap_status_error_and_campaigns(app, client, engine,
                                                                                        vault, smtp):
    box = mailboxes.create(engine, vault, name="Anna", address="anna@firma.example", daily_cap=50,
                           ramp_start=5, ramp_step=5, min_gap_seconds=0)
    mailboxes.create(engine, vault, address="zbyszek@firma.example", backend="outbox")
    cid = make_campaign(engine, 3, batch_size=2, name="Jesień <2026>")
    mailboxes.link(engine, cid, [box])
    send_now(app, cid)
    with immediate(engine) as conn:  # as the claim records them: two sends through Anna's mailbox now
        conn.execute(update(SendLog.__table__).values(mailbox_id=box, claimed_at=utcnow()))
        conn.execute(update(Mailbox.__table__).where(Mailbox.id == box).values(  # now an hour's gap
            min_gap_seconds=3600, last_send_at=utcnow(), last_error="535 5.7.8 <b>bad</b> credentials"))
    html = client.get("/mailboxes").get_data(as_text=True)
    anna = re.search(r'<tr data-mailbox="1">(.*?)</tr>', html, re.S).group(1)
    assert "Anna &lt;anna@firma.example&gt;" in anna
    assert re.search(r'class="today">2 z 5\s*<div class="muted small">dzień rozgrzewania 1</div>', anna)
    assert "(Europe/Warsaw)" in anna.split('class="next-free">')[1].split("</td>")[0]  # the gap's end
    assert "535 5.7.8 &lt;b&gt;bad&lt;/b&gt; credentials" in anna
    assert "Jesień &lt;2026&gt;" in anna and f'href="/campaigns/{cid}"' in anna
    other = re.search(r'<tr data-mailbox="2">(.*?)</tr>', html, re.S).group(1)
    assert "0 z 50" in other and "rozgrzewania" not in other and "folder outbox" in other
    assert 'class="next-free">teraz' in other


def test_pause_and_resume_from_the_list(client, engine, vault):
    mailboxes.create(engine, vault, address="anna@firma.example")
    token = csrf_token(client.get("/mailboxes").data)
    paused = client.post("/mailboxes/1/pause", data={"csrf_token": token}, follow_redirects=True)
    assert (row(engine).status, row(engine).pause_reason) == ("paused", "paused by hand")
    html = paused.get_data(as_text=True)
    assert "Skrzynka wstrzymana" in flashes(html)[0]
    assert 'action="/mailboxes/1/resume"' in html
    client.post("/mailboxes/1/resume", data={"csrf_token": token})
    assert (row(engine).status, row(engine).pause_reason) == ("active", None)


def test_the_nav_links_the_mailboxes_in_both_languages(client):
    html = client.get("/").get_data(as_text=True)
    assert '<a href="/mailboxes">Skrzynki</a>' in html
    client.post("/language", data={"language": "en", "csrf_token": csrf_token(html.encode())})
    html = client.get("/mailboxes").get_data(as_text=True)
    assert '<a href="/mailboxes">Mailboxes</a>' in html and "<h1>Mailboxes</h1>" in html


# --- check connection and test send, against real SMTP servers ------------------------------


def test_check_connection_shows_the_servers_answer(client, engine, vault):
    with SmtpSink(password=SECRET) as sink:
        mailboxes.create(engine, vault, address="a@firma.example", smtp_host="127.0.0.1", smtp_port=sink.port,
                         smtp_security="none", smtp_username="anna", smtp_password=SECRET)
        mailboxes.create(engine, vault, address="b@firma.example", smtp_host="127.0.0.1", smtp_port=sink.port,
                         smtp_security="none", smtp_username="anna", smtp_password="wrong")
        token = csrf_token(client.get("/mailboxes").data)
        right = client.post("/mailboxes/1/check", data={"csrf_token": token}).get_data(as_text=True)
        wrong = client.post("/mailboxes/2/check", data={"csrf_token": token}).get_data(as_text=True)
    smtp_line = re.compile(r'<li data-service="SMTP">(.*?)</li>', re.S)
    assert '<span class="ok">OK</span>' in smtp_line.search(right).group(1)
    assert "235" in smtp_line.search(right).group(1)
    failed = smtp_line.search(wrong).group(1)
    assert '<span class="bad">' in failed and "535" in failed
    assert "Authentication credentials invalid" in failed
    assert sink.recorder.received == {}  # a check sends nothing


def test_check_connection_escapes_the_servers_words_and_names_a_refused_connection(client, engine, vault):
    sink = SmtpSink()
    sink.controller.SMTP_kwargs["hostname"] = "<b>mx</b>"  # the name the server gives in its answers
    with sink:
        mailboxes.create(engine, vault, address="a@firma.example", smtp_host="127.0.0.1", smtp_port=sink.port,
                         smtp_security="none")
        token = csrf_token(client.get("/mailboxes").data)
        html = client.post("/mailboxes/1/check", data={"csrf_token": token}).get_data(as_text=True)
    assert '<li data-service="SMTP">' in html and "<b>mx</b>" not in html
    closed = sink.port  # nothing listens there any more
    mailboxes.update_mailbox(engine, vault, 1, smtp_port=closed, imap_host="127.0.0.1", imap_port=closed,
                             imap_security="none")
    html = client.post("/mailboxes/1/check", data={"csrf_token": token}).get_data(as_text=True)
    for service in ("SMTP", "IMAP"):
        line = re.search(rf'<li data-service="{service}">(.*?)</li>', html, re.S).group(1)
        assert '<span class="bad">' in line, line


def test_a_test_send_goes_through_the_mailbox_to_the_typed_address(client, engine, vault):
    with SmtpSink(password=SECRET) as sink:
        mailboxes.create(engine, vault, name="Anna Nowak", address="anna@firma.example",
                         smtp_host="127.0.0.1", smtp_port=sink.port, smtp_security="none",
                         smtp_username="anna", smtp_password=SECRET, signature="Anna Nowak, tel. 600 100 200")
        page = client.get("/mailboxes/1/edit").get_data(as_text=True)
        assert re.search(r'name="to"[^>]*value="admin@example.com"', page)  # me, unless I type another
        sent = client.post("/mailboxes/1/test", data={"csrf_token": csrf_token(page.encode()),
                                                      "to": "Szef@Example.com"}, follow_redirects=True)
    assert sink.recorder.received == {"szef@example.com": 1}
    (msg,) = sink.recorder.messages
    assert "anna@firma.example" in msg["From"] and "Anna Nowak" in msg["From"]
    assert "firma.example" in msg["Message-ID"]
    assert "tel. 600 100 200" in msg.get_payload(decode=True).decode()
    assert "Wysłano test na szef@example.com: 250 OK queued" in flashes(sent.get_data(as_text=True))
    with engine.connect() as conn:  # a test is not campaign mail
        assert conn.execute(select(func.count()).select_from(SendLog)).scalar_one() == 0


def test_a_failed_test_send_says_so_with_the_servers_answer(client, engine, vault):
    with SmtpSink(password=SECRET) as sink:
        mailboxes.create(engine, vault, address="anna@firma.example", smtp_host="127.0.0.1",
                         smtp_port=sink.port, smtp_security="none", smtp_username="anna",
                         smtp_password="wrong")
        token = csrf_token(client.get("/mailboxes/1/edit").data)
        html = client.post("/mailboxes/1/test", data={"csrf_token": token, "to": "me@example.com"},
                           follow_redirects=True).get_data(as_text=True)
        bad = client.post("/mailboxes/1/test", data={"csrf_token": token, "to": "not an address"},
                          follow_redirects=True).get_data(as_text=True)
    assert sink.recorder.received == {}
    assert "Nie udało się wysłać testu do me@example.com" in flashes(html)[0] and "535" in flashes(html)[0]
    assert "nie jest poprawnym adresem" in flashes(bad)[0]


# --- the campaign's mailbox picker --------------------------------------------------------


def campaign_form(**changes) -> dict:
    values = {"name": "Q1", "from_address": "", "from_name": "", "interval_seconds": "60", "batch_size": "1",
              "window_weekdays": ["0", "1", "2", "3", "4"], "window_start_hour": "9", "window_end_hour": "17",
              "timezone": "Europe/Warsaw"}
    values.update(changes)
    return values


def test_without_mailboxes_a_campaign_uses_the_configured_smtp_and_says_so(client, engine):
    html = client.get("/campaigns/new").get_data(as_text=True)
    assert 'id="no-mailboxes"' in html and "ustawienia SMTP z konfiguracji" in html
    token = csrf_token(html.encode())
    refused = client.post("/campaigns/new", data={"csrf_token": token, **campaign_form()})
    assert field_errors(refused.get_data(as_text=True), "from_address")  # then the address is needed
    created = client.post("/campaigns/new", data={"csrf_token": token,
                                                  **campaign_form(from_address="ja@firma.example")})
    assert created.status_code == 302
    page = client.get("/campaigns/1").get_data(as_text=True)
    assert "Nadawca: ja@firma.example ·" in page  # as before mailboxes existed


def test_a_new_campaign_must_pick_a_mailbox_and_is_linked_to_those_picked(client, engine, vault):
    a = mailboxes.create(engine, vault, name="Anna", address="anna@firma.example")
    b = mailboxes.create(engine, vault, name="Bartek", address="bartek@firma.example")
    mailboxes.pause(engine, b, "paused by hand")
    html = client.get("/campaigns/new").get_data(as_text=True)
    assert 'name="mailboxes" type="checkbox"' in html and "Anna &lt;anna@firma.example&gt;" in html
    assert "Bartek &lt;bartek@firma.example&gt; (wstrzymana)" in html
    token = csrf_token(html.encode())
    refused = client.post("/campaigns/new", data={"csrf_token": token, **campaign_form()})
    assert refused.status_code == 200
    assert "Wybierz co najmniej jedną skrzynkę." in refused.get_data(as_text=True)
    created = client.post("/campaigns/new", data={"csrf_token": token,
                                                  **campaign_form(mailboxes=[str(a), str(b)])})
    assert created.status_code == 302
    with engine.connect() as conn:
        assert mailboxes.of_campaign(conn, 1) == [a, b]
        campaign = conn.execute(select(Campaign.from_address, Campaign.from_name)).one()
    assert tuple(campaign) == ("anna@firma.example", "Anna")  # the column keeps the first mailbox
    page = client.get("/campaigns/1").get_data(as_text=True)
    assert re.search(r"Nadawca: Anna &lt;anna@firma.example&gt;, "
                     r"Bartek &lt;bartek@firma.example&gt; \(wstrzymana\)", page)


def test_the_campaign_edit_form_shows_and_changes_its_mailboxes(client, engine, vault):
    a = mailboxes.create(engine, vault, address="anna@firma.example")
    b = mailboxes.create(engine, vault, address="bartek@firma.example")
    cid = make_campaign(engine, 1, start=False)
    mailboxes.link(engine, cid, [a])
    html = client.get(f"/campaigns/{cid}/edit").get_data(as_text=True)
    boxes = dict(re.findall(r'<input ([^>]*)name="mailboxes" type="checkbox" value="(\d+)"', html))
    assert {value: "checked" in attributes for attributes, value in boxes.items()} == {str(a): True,
                                                                                     str(b): False}
    values = campaign_form(from_address="zespol@firma.example", mailboxes=[str(b)])
    assert client.post(f"/campaigns/{cid}/edit", data={"csrf_token": csrf_token(html.encode()),
                                                       **values}).status_code == 302
    with engine.connect() as conn:
        assert mailboxes.of_campaign(conn, cid) == [b]
    # None chosen on an edit: the campaign goes back to the configuration's SMTP, and its page says so.
    values.pop("mailboxes")
    assert client.post(f"/campaigns/{cid}/edit", data={"csrf_token": csrf_token(html.encode()),
                                                       **values}).status_code == 302
    with engine.connect() as conn:
        assert mailboxes.of_campaign(conn, cid) == []
    page = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert 'Nadawca: zespol@firma.example <span class="small">(ustawienia SMTP z konfiguracji)</span>' in page


def test_a_duplicated_campaign_keeps_its_mailboxes(client, engine, vault):
    a = mailboxes.create(engine, vault, address="anna@firma.example")
    mailboxes.create(engine, vault, address="bartek@firma.example")
    cid = make_campaign(engine, 1, start=False)
    mailboxes.link(engine, cid, [a])
    token = csrf_token(client.get(f"/campaigns/{cid}").data)
    copied = client.post(f"/campaigns/{cid}/duplicate", data={"csrf_token": token})
    copy_id = int(copied.location.rsplit("/", 1)[1])
    with engine.connect() as conn:
        assert copy_id != cid and mailboxes.of_campaign(conn, copy_id) == [a]


# --- leads waiting for a paused mailbox ---------------------------------------------------


@pytest.fixture
def stranded(engine, vault):
    """Campaign 1: 4 pending leads pinned to the paused mailbox 1, 1 to the active mailbox 2."""
    a = mailboxes.create(engine, vault, address="anna@firma.example")
    b = mailboxes.create(engine, vault, address="bartek@firma.example")
    cid = make_campaign(engine, 5, start=False)
    mailboxes.link(engine, cid, [a, b])
    with immediate(engine) as conn:
        conn.execute(update(CampaignLead.__table__).values(mailbox_id=a))
        conn.execute(update(CampaignLead.__table__).where(CampaignLead.lead_id == 5).values(mailbox_id=b))
    mailboxes.pause(engine, a, "paused by hand")
    return cid


def pinned(engine) -> dict[int, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(CampaignLead.mailbox_id, func.count()).where(
            CampaignLead.state == EnrollmentState.PENDING).group_by(CampaignLead.mailbox_id)).all())


def test_leads_of_a_paused_mailbox_wait_and_move_only_when_a_person_confirms(client, engine, stranded):
    page = client.get(f"/campaigns/{stranded}").get_data(as_text=True)
    form = re.search(r'<div class="flash error stranded".*?</form>', page, re.S).group(0)
    assert "4 leady czekają na wstrzymaną skrzynkę anna@firma.example." in form
    assert "Przenieś te leady do skrzynki" in form
    assert re.findall(r'<option value="(\d+)">', form) == ["2"]  # active mailboxes only, not itself
    token = csrf_token(page.encode())
    asked = client.post(f"/campaigns/{stranded}/move-leads", data={"csrf_token": token, "from_id": "1",
                                                                   "to_id": "2"})
    html = asked.get_data(as_text=True)
    assert asked.status_code == 200 and "4 leady tej kampanii czekają" in html
    assert "Tak, przenieś je do bartek@firma.example" in html
    assert pinned(engine) == {1: 4, 2: 1}  # asking moved nothing
    moved = client.post(f"/campaigns/{stranded}/move-leads", data={
        "csrf_token": token, "from_id": "1", "to_id": "2", "confirm": "1"}, follow_redirects=True)
    assert pinned(engine) == {2: 5}
    html = moved.get_data(as_text=True)
    assert "4 leady przeniesione do bartek@firma.example" in flashes(html)[0]
    assert "stranded" not in html  # nothing waits any more


def test_moving_leads_needs_two_different_existing_mailboxes(client, engine, stranded):
    token = csrf_token(client.get(f"/campaigns/{stranded}").data)
    for data in ({}, {"from_id": "1"}, {"from_id": "1", "to_id": "1"}, {"from_id": "1", "to_id": "99"}):
        response = client.post(f"/campaigns/{stranded}/move-leads", data={"csrf_token": token, "confirm": "1",
                                                                          **data}, follow_redirects=True)
        assert "Wybierz skrzynkę, do której przenieść leady." in flashes(response.get_data(as_text=True))[0]
    assert pinned(engine) == {1: 4, 2: 1}


def test_a_paused_mailbox_without_another_active_one_says_what_to_do(client, engine, stranded):
    mailboxes.pause(engine, 2, "paused by hand")
    page = client.get(f"/campaigns/{stranded}").get_data(as_text=True)
    assert "Wznów skrzynkę albo dodaj inną" in page and 'name="to_id"' not in page


# --- dashboard ---------------------------------------------------------------------------


def test_the_dashboard_shows_each_mailboxs_capacity_left_today(app, client, engine, vault, smtp):
    a = mailboxes.create(engine, vault, address="anna@firma.example", daily_cap=10)
    b = mailboxes.create(engine, vault, address="bartek@firma.example", daily_cap=40, ramp_start=20)
    mailboxes.pause(engine, b, "paused by hand")
    assert "mailbox-capacity" not in client.get("/mailboxes").get_data(as_text=True)
    cid = make_campaign(engine, 3, batch_size=3)
    send_now(app, cid)
    with immediate(engine) as conn:
        conn.execute(update(SendLog.__table__).values(mailbox_id=a, claimed_at=utcnow()))
        # Yesterday's sends (in the mailbox's zone) do not count against today.
        conn.execute(update(SendLog.__table__).where(SendLog.id == 1).values(
            claimed_at=utcnow() - timedelta(days=2)))
    html = client.get("/").get_data(as_text=True)
    table = re.search(r'<table class="mailbox-capacity">(.*?)</table>', html, re.S).group(1)
    assert "<th>Zostało na dziś</th>" in table
    rows = dict(re.findall(r'<tr data-mailbox="(\d+)">(.*?)</tr>', table, re.S))
    assert 'class="left">8 z 10<' in rows[str(a)] and "status active" in rows[str(a)]
    assert 'class="left">20 z 20<' in rows[str(b)] and "status paused" in rows[str(b)]


def test_without_mailboxes_the_dashboard_has_no_capacity_table(client):
    assert "mailbox-capacity" not in client.get("/").get_data(as_text=True)


# --- login and CSRF on every new route ----------------------------------------------------

NEW_ROUTES = [("GET", "/mailboxes"), ("GET", "/mailboxes/new"), ("POST", "/mailboxes/new"),
              ("GET", "/mailboxes/1/edit"), ("POST", "/mailboxes/1/edit"), ("POST", "/mailboxes/1/check"),
              ("POST", "/mailboxes/1/test"), ("POST", "/mailboxes/1/pause"), ("POST", "/mailboxes/1/resume"),
              ("POST", "/campaigns/1/move-leads")]


def test_every_mailbox_route_needs_a_login_and_every_post_a_csrf_token(app, engine, stranded):
    stranger = app.test_client()
    token = csrf_token(stranger.get("/login").data)
    before = row(engine)
    for method, url in NEW_ROUTES:
        data = {"csrf_token": token, **form_values(), "to": "me@example.com", "from_id": "1", "to_id": "2",
                "confirm": "1"}
        response = stranger.open(url, method=method, data=data)
        assert response.status_code == 302 and response.location.startswith("/login"), (method, url)
    client = logged_in_client(app)
    for method, url in NEW_ROUTES:
        if method == "POST":
            data = {**form_values(address="x@firma.example"), "to": "me@example.com", "from_id": "1",
                    "to_id": "2", "confirm": "1"}
            assert client.post(url, data=data).status_code == 400, url  # no token
            foreign = {**data, "csrf_token": token}  # another session's token
            assert client.post(url, data=foreign).status_code == 400, url
    assert row(engine) == before and pinned(engine) == {1: 4, 2: 1}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Mailbox)).scalar_one() == 2


# --- in a real browser: screenshots to look at --------------------------------------------


@pytest.mark.slow
def test_the_mailbox_pages_in_a_real_browser_at_both_sizes_in_both_languages(page, live_server, admin,  # noqa: F811
                                                                             app, engine, smtp, screenshot):
    vault = Vault(app.config["MAILBOX_KEY_FILE"])
    anna = mailboxes.create(engine, vault, name="Anna Nowak", address="anna.nowak@firma.example",
                            smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none", daily_cap=60,
                            ramp_start=10, ramp_step=10, signature="Anna Nowak\nFirma sp. z o.o.")
    bartek = mailboxes.create(engine, vault, name="Bartłomiej Wiśniewski-Kowalczyk",
                              address="bartlomiej.wisniewski-kowalczyk@bardzo-dluga-domena-firmy.example",
                              smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none")
    mailboxes.create(engine, vault, address="outbox@firma.example", backend="outbox")
    cid = make_campaign(engine, 6, batch_size=3, name="Jesień 2026")
    mailboxes.link(engine, cid, [anna, bartek])
    send_now(app, cid)
    with immediate(engine) as conn:
        conn.execute(update(SendLog.__table__).values(mailbox_id=anna, claimed_at=utcnow()))
        conn.execute(update(CampaignLead.__table__).values(mailbox_id=bartek))
        conn.execute(update(Mailbox.__table__).where(Mailbox.id == anna).values(last_send_at=utcnow()))
    mailboxes.pause(engine, bartek, "3 failed sends in a row; last: 535 5.7.8 Authentication failed")
    with immediate(engine) as conn:
        conn.execute(update(Mailbox.__table__).where(Mailbox.id == bartek).values(
            last_error="535 5.7.8 Authentication credentials invalid"))
    log_in(page, live_server)
    pages = {"mailboxes": "/mailboxes", "mailbox-edit": f"/mailboxes/{anna}/edit", "dashboard": "/",
             "campaign": f"/campaigns/{cid}", "campaign-settings": f"/campaigns/{cid}/edit"}
    shoot_every_page(page, live_server, pages, screenshot, "mailboxes", "Mailboxes")
    # The check button shows the server's answer on the page.
    page.goto(f"{live_server}/mailboxes/{anna}/edit")
    page.click("button >> text=Check the connection")
    expect(page.locator("#checks li[data-service=SMTP] .ok")).to_be_visible()
    screenshot("mailboxes-en-phone-checked")
    # Phones: each mailbox row is a card of labelled lines.
    page.goto(f"{live_server}/mailboxes")
    expect(page.locator("tr[data-mailbox] td.today").first).to_have_attribute("data-label", "Sent today")
