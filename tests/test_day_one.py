"""Issue #14, a Polish sales team's day one: error pages, texts in Polish, forms that keep work."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel.messages.pofile import read_po
from sqlalchemy import func, select, update

from conftest import ROOT
from core import campaigns, importer, leads, stats
from delivery.lease import LEASE_NAME
from delivery.tokens import make_token
from helpers import lead_csv, make_campaign
from models import Campaign, CampaignLead, Lead, SchedulerLease, SendLog, Suppression, Variant, db
from storage.database import immediate
from storage.timeutil import utcnow
from test_security import requests_from_url_map, send_now, world  # noqa: F401 - the world fixture
from test_web import csrf_token, login  # noqa: F401 - the login fixture
from web.common import BOM

# --- error pages: styled, in Polish, and an expired session keeps the draft ------------------


def test_http_errors_are_styled_polish_pages(app, client, login):  # noqa: F811
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.route("/boom")
    def boom():
        raise RuntimeError("a bug")

    app.config["MAX_CONTENT_LENGTH"] = 1000
    login()
    token = csrf_token(client.get("/").data)
    pages = {404: client.get("/no-such-page"), 405: client.get("/logout"), 500: client.get("/boom"),
             413: client.post("/leads/import", data={"csrf_token": token,
                                                      "file": (io.BytesIO(b"x" * 5000), "a.csv")})}
    titles = {404: "Nie ma takiej strony", 405: "Tej czynności nie można wykonać w ten sposób",
              413: "Plik jest za duży", 500: "Coś poszło nie tak po naszej stronie"}
    for code, response in pages.items():
        page = response.get_data(as_text=True)
        assert response.status_code == code
        assert f"<h1>{titles[code]}</h1>" in page and "style.css" in page, code
        assert "Not Found" not in page and "Method Not Allowed" not in page and "a bug" not in page


def test_an_expired_token_shows_the_draft_in_polish_and_never_the_password(client, login, engine):  # noqa: F811
    cid = make_campaign(engine, 1, start=False, variants="A")
    login()
    response = client.post(f"/campaigns/{cid}/variants/A", data={
        "csrf_token": "expired", "subject": "Temat", "body": "Długi <b>tekst</b>\nw dwóch liniach"})
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Sesja wygasła" in page and "The CSRF token" not in page
    assert "Długi &lt;b&gt;tekst&lt;/b&gt;\nw dwóch liniach</textarea>" in page  # kept, escaped
    assert "Zapisz ponownie" in page  # still logged in: a fresh token saves it again
    stale = client.post("/login", data={"csrf_token": "old", "email": "a@example.com",
                                        "password": "tajne-hasło"}).get_data(as_text=True)
    assert "tajne-hasło" not in stale


def test_an_expired_session_offers_a_new_login_back_to_the_form(app, engine):
    cid = make_campaign(engine, 1, start=False, variants="A")
    stranger = app.test_client()
    response = stranger.post(f"/campaigns/{cid}/variants/A", data={"csrf_token": "x", "body": "mój szkic"},
                             headers={"Referer": f"http://localhost/campaigns/{cid}/variants/A"})
    page = response.get_data(as_text=True)
    assert "zaloguj się ponownie" in page and "mój szkic" in page
    assert f'href="/login?next=/campaigns/{cid}/variants/A"' in page


@pytest.mark.parametrize("referer", ["https://evil.example/x", None])
def test_the_way_back_never_leaves_the_site(app, referer):
    headers = {"Referer": referer} if referer else {}
    page = app.test_client().post("/campaigns/1/start", data={"csrf_token": "x"},
                                  headers=headers).get_data(as_text=True)
    assert "evil.example" not in page


# --- the new-campaign form pre-fills only what it accepts (item 8) ---------------------------


@pytest.mark.parametrize(("mail_from", "prefilled"), [("sendonce@localhost", ""),
                                                      ("zespol@firma.pl", "zespol@firma.pl")])
def test_the_new_campaign_form_prefills_only_an_address_it_accepts(app, client, login, mail_from,  # noqa: F811
                                                                   prefilled):
    app.config["MAIL_FROM"] = mail_from
    login()
    page = client.get("/campaigns/new").get_data(as_text=True)
    field = re.search(r'<input[^>]*name="from_address"[^>]*>', page).group(0)
    assert re.search(r'value="([^"]*)"', field).group(1) == prefilled
    # Saving the form as shown (with a name) works whenever it pre-filled an address.
    response = client.post("/campaigns/new", data={
        "csrf_token": csrf_token(page.encode()), "name": "Jesień", "from_address": prefilled,
        "interval_seconds": "300", "batch_size": "1", "window_weekdays": ["0", "1"],
        "window_start_hour": "9", "window_end_hour": "17", "timezone": "Europe/Warsaw"})
    assert response.status_code == (302 if prefilled else 200)


# --- empty and finished campaigns offer no start that would do nothing (item 16) -----------


def test_an_empty_or_finished_campaign_offers_no_start_but_says_what_to_do(client, login, engine):  # noqa: F811
    empty = make_campaign(engine, 0, start=False)
    done = make_campaign(engine, 1, start=False)
    with immediate(engine) as conn:
        conn.execute(update(CampaignLead.__table__).where(CampaignLead.campaign_id == done)
                     .values(state="sent"))
        conn.execute(update(Campaign.__table__).where(Campaign.id == done).values(status="finished"))
    login()
    page = client.get(f"/campaigns/{empty}").get_data(as_text=True)
    assert "Sprawdź i uruchom" not in page and "nie ma jeszcze leadów" in page
    page = client.get(f"/campaigns/{done}").get_data(as_text=True)
    assert "Sprawdź i uruchom" not in page and "Dodaj nowe leady" in page
    # The POST itself still refuses (a stale tab), in Polish, and the campaign stays finished.
    token = csrf_token(page.encode())
    page = client.post(f"/campaigns/{done}/start", data={"csrf_token": token},
                       follow_redirects=True).get_data(as_text=True)
    assert "nie ma czego wysyłać" in page
    with engine.connect() as conn:
        assert conn.execute(select(Campaign.status).where(Campaign.id == done)).scalar() == "finished"


# --- every page in Polish: no English catalog text left (item 5) ------------------------------

PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|%%|\{\{.*?\}\}")


class _VisibleText(HTMLParser):
    """The texts a person reads on a page: text nodes and the attributes a browser shows."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "title"):
            self._hidden += 1
        attrs = dict(attrs)
        for name in ("placeholder", "title", "aria-label", "data-confirm", "data-notice"):
            if attrs.get(name):
                self.texts.append(attrs[name])

    def handle_endtag(self, tag):
        if tag in ("script", "style", "title"):
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.texts += [line.strip() for line in data.splitlines() if line.strip()]


def visible_texts(page: str) -> list[str]:
    parser = _VisibleText()
    parser.feed(page)
    return parser.texts


def english_catalog() -> tuple[set[str], list[str]]:
    """Short English msgids (matched as a whole text) and the long literal pieces of the others,
    for every message whose Polish differs from its English."""
    with (ROOT / "translations/pl/LC_MESSAGES/messages.po").open("rb") as f:
        catalog = read_po(f, locale="pl")
    whole, pieces = set(), []
    for message in catalog:
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        if not message.id or ids[0] in strings:
            continue
        for msgid in ids:
            whole.add(msgid)
            pieces += [p.strip() for p in PLACEHOLDER.split(msgid) if len(p.strip()) >= 16]
    return whole, pieces


def rendered_pages(app, names: dict, client) -> dict[str, str]:
    pages = {}
    for rule, method, url in requests_from_url_map(app, names):
        if method != "GET" or rule.startswith("/static"):
            continue
        response = client.get(url)
        if response.mimetype == "text/html":
            pages[url] = response.get_data(as_text=True)
    pages["404"] = client.get("/no-such-page").get_data(as_text=True)
    pages["expired"] = client.post("/campaigns/1/variants/A", data={
        "csrf_token": "old", "subject": "a b", "body": "c d"}).get_data(as_text=True)
    return pages


def test_every_page_in_polish_shows_no_english_catalog_text(app, world, client, login, engine):  # noqa: F811
    campaigns.pause(engine, world["campaign_id"])  # a pause reason on the campaign page
    login()
    polish = rendered_pages(app, world, client)
    token = csrf_token(client.get("/").data)
    client.post("/language", data={"language": "en", "back": "/", "csrf_token": token})
    english = rendered_pages(app, world, client)
    assert "Campaigns" in english["/"] and "Kampanie" in polish["/"]
    whole, pieces = english_catalog()
    left = []
    for url, page in polish.items():
        shown_in_english = set(visible_texts(english[url]))
        for text in visible_texts(page):
            if text in shown_in_english and (text in whole or any(piece in text for piece in pieces)):
                left.append((url, text))
    assert left == [], "\n".join(map(str, left))


# --- outside the send window the page says so, and the time does not move (item 4) -----------

SUNDAY_EVENING = datetime(2026, 11, 29, 19, 0)  # UTC: 20:00 in Warsaw, a Sunday
MONDAY_NINE = datetime(2026, 11, 30, 8, 0)  # UTC: 09:00 in Warsaw


def office_hours(**values) -> Campaign:
    defaults = {"status": "active", "timezone": "Europe/Warsaw", "window_weekdays": "0,1,2,3,4",
                "window_start_hour": 9, "window_end_hour": 17, "interval_seconds": 60,
                "last_claim_at": SUNDAY_EVENING - timedelta(seconds=30), "daily_cap": None}
    return Campaign(**(defaults | values))


@pytest.mark.parametrize(("values", "now", "sent_today", "expected"), [
    ({}, SUNDAY_EVENING, 0, (MONDAY_NINE, "outside_window")),
    ({}, SUNDAY_EVENING + timedelta(seconds=45), 0, (MONDAY_NINE, "outside_window")),  # does not move
    ({"last_claim_at": None}, datetime(2026, 11, 30, 10, 0), 0, (datetime(2026, 11, 30, 10, 0), "due")),
    ({"last_claim_at": datetime(2026, 11, 30, 10, 0)}, datetime(2026, 11, 30, 10, 0, 20), 0,
     (datetime(2026, 11, 30, 10, 1), "due")),
    ({"daily_cap": 5, "last_claim_at": None}, datetime(2026, 11, 30, 10, 0), 5,
     (datetime(2026, 12, 1, 8, 0), "daily_cap")),  # Tuesday 09:00 Warsaw
    ({"daily_cap": 5, "last_claim_at": None}, datetime(2026, 12, 4, 10, 0), 5,
     (datetime(2026, 12, 7, 8, 0), "daily_cap")),  # Friday's cap: Monday
    ({"status": "paused"}, SUNDAY_EVENING, 0, (None, "paused")),
    ({"window_end_hour": 24, "window_weekdays": "6"}, SUNDAY_EVENING, 0,
     (SUNDAY_EVENING + timedelta(seconds=30), "due")),  # inside a window that runs to midnight
    ({"window_start_hour": 9, "window_end_hour": 17, "timezone": "America/New_York", "window_weekdays": "6"},
     SUNDAY_EVENING, 0, (SUNDAY_EVENING + timedelta(seconds=30), "due")),  # 14:00 in New York
    ({"window_weekdays": "", "last_claim_at": None}, SUNDAY_EVENING, 0, (None, "outside_window")),
])
def test_next_send_is_what_the_claim_would_decide(values, now, sent_today, expected):
    found = stats.next_send(office_hours(**values), now, sent_today)
    assert (found.at, found.why) == expected


def test_the_campaign_page_says_outside_the_window_and_when_it_opens(app, client, login, engine):  # noqa: F811
    today = utcnow().replace(tzinfo=UTC).astimezone(ZoneInfo("Europe/Warsaw")).weekday()
    cid = make_campaign(engine, 2, window_weekdays=str((today + 2) % 7), window_start_hour=9,
                        window_end_hour=17, timezone="Europe/Warsaw")
    with immediate(engine) as conn:  # a heartbeat: the scheduler is running
        conn.execute(SchedulerLease.__table__.insert().values(
            name=LEASE_NAME, holder="vm:1:abc", epoch=1, heartbeat_at=utcnow(),
            expires_at=utcnow() + timedelta(minutes=3)))
    login()
    first = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert "Poza oknem wysyłki — następna wysyłka" in first and "09:00 (Europe/Warsaw)" in first
    assert re.search(r'class="next-send">([^<]*)<', first)[1] == re.search(
        r'class="next-send">([^<]*)<', client.get(f"/campaigns/{cid}").get_data(as_text=True))[1]
    dashboard = client.get("/").get_data(as_text=True)
    assert "Poza oknem wysyłki" in dashboard and "epoka" not in dashboard and "Scheduler" not in dashboard


# --- lead search folds Polish letters (item 9) --------------------------------------------------

POLISH_LEADS = b"email;imi\xc4\x99;nazwisko\nl.nowak@example.com;\xc5\x81ukasz;Nowak\n" \
    b"zaneta@example.com;\xc5\xbbaneta;D\xc4\x85browska\nother@example.com;Jan;Kowalski\n"


def shown_emails(page: str) -> set[str]:
    return set(re.findall(r'<a href="/leads/\d+">([^<]+)</a>', page))


@pytest.mark.parametrize(("q", "expected"), [
    ("łukasz", {"l.nowak@example.com"}), ("ŁUKASZ", {"l.nowak@example.com"}),
    ("żaneta", {"zaneta@example.com"}), ("DĄBROWSKA", {"zaneta@example.com"}),
    ("dąbrowska", {"zaneta@example.com"}), ("NOWAK", {"l.nowak@example.com"}), ("ł", {"l.nowak@example.com"}),
])
def test_lead_search_ignores_the_case_of_polish_letters(client, login, engine, q, expected):  # noqa: F811
    importer.run_import(engine, POLISH_LEADS)
    login()
    assert shown_emails(client.get("/leads", query_string={"q": q}).get_data(as_text=True)) == expected


def test_an_older_database_gains_the_search_column_filled_in(app, engine, client, login):  # noqa: F811
    with immediate(engine) as conn:  # as a database at revision 0004, made before the column
        conn.exec_driver_sql("ALTER TABLE lead DROP COLUMN search")
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0004'")
        conn.exec_driver_sql("INSERT INTO lead (email, first_name, last_name, company, tags, fields, "
                             "created_at) VALUES ('old@example.com', 'Łucja', 'Źrebię', '', '', '{}', "
                             "'2026-01-01')")
    for _ in range(2):  # the upgrade (migration 0005 adds and fills the column), then again: idempotent
        result = app.test_cli_runner().invoke(args=["init-db"])
        assert result.exit_code == 0, result.output
    login()
    assert shown_emails(client.get("/leads?q=łucja").get_data(as_text=True)) == {"old@example.com"}
    # An import that changes the lead keeps the column right.
    importer.run_import(engine, "email,nazwisko\nold@example.com,Żak\n".encode())
    assert shown_emails(client.get("/leads?q=ŻAK").get_data(as_text=True)) == {"old@example.com"}
    assert shown_emails(client.get("/leads?q=źrebię").get_data(as_text=True)) == set()  # replaced


# --- merge fields: the real columns, and one grouped error (item 11); tests to any address (10) --


def test_the_editor_lists_the_imported_columns_and_groups_an_unknown_field(client, login, engine):  # noqa: F811
    cid = make_campaign(engine, 0, start=False, variants="A")
    data = "email,Stanowisko,Miasto\n" + "".join(
        f"l{i}@example.com,{'Szef' if i < 3 else ''},Łódź\n" for i in range(12))
    importer.run_import(engine, data.encode(), campaign_id=cid)
    with immediate(engine) as conn:  # only 3 of 12 have Stanowisko (the others' cell was empty)
        conn.execute(update(Lead.__table__).where(Lead.email.notin_(["l0@example.com", "l1@example.com",
                                                                     "l2@example.com"]))
                     .values(fields={"Miasto": "Łódź"}))
    login()
    page = client.get(f"/campaigns/{cid}/variants/A").get_data(as_text=True)
    assert "{{ Miasto }} <span class=\"muted\">(12)</span>" in page
    assert "{{ Stanowisko }} <span class=\"muted\">(3)</span>" in page
    assert 'data-insert="{{ Stanowisko|default(&#34;&#34;) }}"' in page  # not every lead has it
    assert "{{ city }}" not in page  # no made-up example
    token = csrf_token(page.encode())
    page = client.post(f"/campaigns/{cid}/variants/A", data={
        "csrf_token": token, "letter": "A", "subject": "Hej", "weight": "1",
        "body": "Dzień dobry, {{ Stanowisko }}"}).get_data(as_text=True)
    assert page.count("nieznane pole {{ Stanowisko }}") == 1  # once, not once per lead
    assert "9 leadów" in page and "{{ Stanowisko }} (3)" in page and "{{ Miasto }} (12)" in page


def test_a_test_send_goes_to_the_typed_addresses_only(client, login, engine, smtp):  # noqa: F811
    cid = make_campaign(engine, 1, start=False, variants="A")
    login()
    token = csrf_token(client.get(f"/campaigns/{cid}/variants/A").data)
    page = client.post(f"/campaigns/{cid}/variants/A/test", data={
        "csrf_token": token, "to": "szef@firma.pl; Handlowiec@Firma.pl"}, follow_redirects=True)
    assert sorted(smtp.recorder.received) == ["handlowiec@firma.pl", "szef@firma.pl"]
    assert "Test wysłany" in page.get_data(as_text=True) or "szef@firma.pl" in page.get_data(as_text=True)
    page = client.post(f"/campaigns/{cid}/variants/A/test", data={"csrf_token": token, "to": "zły-adres"},
                       follow_redirects=True).get_data(as_text=True)
    assert "zły-adres nie jest poprawnym adresem." in page
    assert sum(smtp.recorder.received.values()) == 2  # nothing sent for the bad one


# --- day-one controls: enroll with a count, un-enroll, edit, erase, archive/copy/delete (item 12) ---


def enrollment_states(engine, cid: int) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(Lead.email, CampaignLead.state).join(
            CampaignLead, CampaignLead.lead_id == Lead.id).where(CampaignLead.campaign_id == cid)).all())


def test_enrolling_all_leads_asks_first_with_the_count(client, login, engine):  # noqa: F811
    cid = make_campaign(engine, 0, start=False)
    importer.run_import(engine, lead_csv(23))
    login()
    token = csrf_token(client.get(f"/campaigns/{cid}").data)
    page = client.post(f"/campaigns/{cid}/enroll", data={"csrf_token": token, "tag": ""})
    page = page.get_data(as_text=True)
    assert "WSZYSTKIE leady (23)" in page and "Tak, dodaj leady (23)" in page
    assert enrollment_states(engine, cid) == {}  # nothing yet
    client.post(f"/campaigns/{cid}/enroll", data={"csrf_token": token, "tag": "", "confirm": "1"})
    assert len(enrollment_states(engine, cid)) == 23


def test_a_lead_taken_out_of_a_campaign_is_never_sent_it(app, client, login, engine, smtp):  # noqa: F811
    cid = make_campaign(engine, 2, batch_size=5)
    login()
    token = csrf_token(client.get("/leads/1").data)
    client.post(f"/leads/1/unenroll/{cid}", data={"csrf_token": token})
    send_now(app, cid)
    assert sorted(smtp.recorder.received) == ["lead0001@example.com"]
    assert enrollment_states(engine, cid)["lead0000@example.com"] == "skipped"
    page = client.post(f"/leads/2/unenroll/{cid}", data={"csrf_token": token}, follow_redirects=True)
    assert "Za późno" in page.get_data(as_text=True)  # sent already: nothing to take back


def test_editing_a_lead_changes_its_names_and_what_search_finds(client, login, engine):  # noqa: F811
    importer.run_import(engine, b"email,first_name\nanna@example.com,Anna\n")
    login()
    token = csrf_token(client.get("/leads/1/edit").data)
    client.post("/leads/1/edit", data={"csrf_token": token, "first_name": "Łucja", "last_name": "Żak",
                                       "company": "ACME", "tags": "vip; ciepły"})
    with engine.connect() as conn:
        row = conn.execute(select(Lead.first_name, Lead.last_name, Lead.tags)).one()
    assert tuple(row) == ("Łucja", "Żak", "vip,ciepły")
    assert shown_emails(client.get("/leads?q=ŁUCJA").get_data(as_text=True)) == {"anna@example.com"}


def test_an_erased_lead_keeps_the_counts_and_is_never_mailed_or_imported_again(
        app, client, login, engine, smtp, tmp_path):  # noqa: F811
    first = make_campaign(engine, 2, batch_size=1, interval=0)
    send_now(app, first)  # lead0000 got one message
    second = make_campaign(engine, 0, start=False)
    leads.enroll(engine, second, [1, 2])
    login()
    token = csrf_token(client.get("/leads/1").data)
    page = client.post("/leads/1/erase", data={"csrf_token": token}, follow_redirects=True)
    page = page.get_data(as_text=True)
    assert "Usunięty lead" in page and "lead0000" not in page
    with engine.connect() as conn:
        sends = conn.execute(select(func.count()).select_from(SendLog).where(SendLog.lead_id == 1)).scalar()
        assert sends == 1
        assert conn.execute(select(Suppression.email, Suppression.reason)).all() == [
            (leads.erased_key("lead0000@example.com"), "erased")]
    # Nowhere in the database file any more (names, company, address).
    dump = "\n".join(sqlite3.connect(tmp_path / "sendonce.db").iterdump())
    assert "lead0000@example.com" not in dump and "First0" not in dump and "Company 0" not in dump
    assert enrollment_states(engine, second)[leads.erased_key("lead0000@example.com")] == "skipped"
    # Imported again, in another case: refused, with the reason; enrolling all skips it.
    report = importer.run_import(engine, b"email\n LEAD0000@Example.com \nnew@example.com\n")
    assert report.rejected == [(2, "this address was erased on request (GDPR) and cannot be imported again")]
    campaigns.start(engine, second)
    send_now(app, second)
    send_now(app, second)
    assert smtp.recorder.received["lead0000@example.com"] == 1  # only the one before the erasure


def test_archive_duplicate_and_delete_a_draft(client, login, engine):  # noqa: F811
    sent = make_campaign(engine, 1)
    draft = make_campaign(engine, 0, start=False, name="Szkic")
    login()
    token = csrf_token(client.get("/").data)
    copy = client.post(f"/campaigns/{sent}/duplicate", data={"csrf_token": token})
    copy_id = int(copy.location.rsplit("/", 1)[1])
    page = client.get(f"/campaigns/{copy_id}").get_data(as_text=True)
    assert "test 1 (kopia)" in page and "szkic" in page
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Variant).where(
            Variant.campaign_id == copy_id)).scalar() == 2
    page = client.post(f"/campaigns/{sent}/archive", data={"csrf_token": token}, follow_redirects=True)
    assert "Wstrzymaj kampanię przed zarchiwizowaniem." in page.get_data(as_text=True)
    assert status_of(engine, sent) == "active"  # a sending campaign is paused first
    client.post(f"/campaigns/{sent}/pause", data={"csrf_token": token})
    client.post(f"/campaigns/{sent}/archive", data={"csrf_token": token})
    assert status_of(engine, sent) == "archived"
    assert f'href="/campaigns/{sent}"' not in client.get("/").get_data(as_text=True)
    assert f'href="/campaigns/{sent}"' in client.get("/?archived=1").get_data(as_text=True)
    client.post(f"/campaigns/{sent}/delete", data={"csrf_token": token})
    assert status_of(engine, sent) == "archived"  # not a draft: kept
    client.post(f"/campaigns/{draft}/delete", data={"csrf_token": token})
    assert status_of(engine, draft) is None


def status_of(engine, cid: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(Campaign.status).where(Campaign.id == cid)).scalar()


# --- A/B results per (step, variant) (item 13) -------------------------------------------------


def test_the_campaign_page_shows_results_per_variant(app, client, login, engine, smtp):  # noqa: F811
    cid = make_campaign(engine, 6, batch_size=4)
    send_now(app, cid)
    with engine.connect() as conn:
        sent = dict(conn.execute(select(SendLog.variant_letter, func.count()).group_by(
            SendLog.variant_letter)).all())
        one = conn.execute(select(Lead.email, SendLog.variant_letter).join(
            SendLog, SendLog.lead_id == Lead.id).limit(1)).one()
    with immediate(engine) as conn:
        conn.execute(Suppression.__table__.insert().values(email=one.email, reason="unsubscribed",
                                                           detail=f"campaign {cid}"))
    login()
    page = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert "Wyniki A/B" in page
    for letter in "AB":
        row = re.search(rf'<tr data-variant="{letter}">(.*?)</tr>', page, re.DOTALL)[1]
        cells = re.findall(r"<td>(?:<b>)?([^<]*)", row)
        assert cells[0] == "1" and cells[1] == letter  # step 1, the variant
        assert int(cells[2]) == sent.get(letter, 0)
        assert cells[5].strip() == ("1" if letter == one.variant_letter else "0")
    with app.app_context():
        results = stats.variant_results(db.session, cid)
    assert [r.step for r in results] == [1, 1] and sum(r.sent for r in results) == 4


# --- every CSV download starts with the BOM (item 22) ----------------------------------------


def test_every_csv_download_has_the_bom_once(app, world, client, login):  # noqa: F811
    login()
    downloads = [url for rule, method, url in requests_from_url_map(app, world)
                 if method == "GET" and rule.endswith(".csv")]
    assert len(downloads) >= 2  # the rejected rows and the timeline export
    for url in downloads:
        response = client.get(url)
        data = response.get_data()
        assert response.mimetype == "text/csv" and data.startswith(BOM) and not data[3:].startswith(BOM), url
        data.decode("utf-8")  # the rest is plain UTF-8


# --- times in the campaign's zone, labelled (item 15) ------------------------------------------


def test_send_times_are_shown_and_filtered_in_the_campaigns_zone(app, client, login, engine, smtp):  # noqa: F811
    cid = make_campaign(engine, 1, timezone="Asia/Tokyo")
    send_now(app, cid)
    with engine.connect() as conn:
        claimed = conn.execute(select(SendLog.claimed_at)).scalar_one()
    local = claimed.replace(tzinfo=UTC).astimezone(ZoneInfo("Asia/Tokyo"))
    login()
    for url in (f"/campaigns/{cid}/log", f"/campaigns/{cid}", "/leads/1"):
        page = client.get(url).get_data(as_text=True)
        assert f"{local:%Y-%m-%d %H:%M:%S} (Asia/Tokyo)" in page, url
        assert "(UTC)" not in page, url
    before, after = (f"{(local + timedelta(minutes=m)):%Y-%m-%dT%H:%M}" for m in (-1, 1))
    assert "Wiersze: 1" in client.get(f"/campaigns/{cid}/log?from={before}").get_data(as_text=True)
    assert "Wiersze: 0" in client.get(f"/campaigns/{cid}/log?from={after}").get_data(as_text=True)


# --- wording (item 18) --------------------------------------------------------------------------


def test_polish_wording_of_the_forms_and_the_campaign_page(client, login, engine):  # noqa: F811
    cid = make_campaign(engine, 0, start=False, from_name="")
    login()
    page = client.get("/campaigns/new").get_data(as_text=True)
    assert "Do godziny (wyłącznie)" in page and "Rozmiar partii" in page
    response = client.post("/campaigns/new", data={"csrf_token": csrf_token(page.encode()), "name": "X",
                                                   "from_address": "a@firma.pl", "interval_seconds": "999999",
                                                   "batch_size": "1", "window_weekdays": ["0"],
                                                   "window_start_hour": "9", "window_end_hour": "17",
                                                   "timezone": "Europe/Warsaw"})
    assert "Wpisz liczbę całkowitą od 0 do 604800." in response.get_data(as_text=True)
    page = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert "Nadawca: team@sendonce.test ·" in page and "&lt;team" not in page
    assert "Ostatnia wysyłka: <span class=\"last-sent\">jeszcze żadnej</span>" in page
    assert "partię" in page and "paczk" not in page
    log = client.get(f"/campaigns/{cid}/log?status=sent").get_data(as_text=True)
    assert "Żadna wysyłka nie pasuje do filtra." in log and "Wyzwalacz" not in log


# --- abandoned lead-import uploads go after a day (item 20) -------------------------------------


def test_abandoned_lead_uploads_are_removed_after_a_day(app, client, login):  # noqa: F811
    folder = Path(app.instance_path) / "uploads"
    folder.mkdir(exist_ok=True)
    old, fresh = "a" * 24, "b" * 24
    files = {name: folder / name for name in (f"{old}.csv", f"{old}.rejected.csv", f"{fresh}.csv",
                                                f"{old}.log.csv", "notes.csv")}
    for path in files.values():
        path.write_text("email\nx@example.com\n")
    two_days_ago = time.time() - 2 * 86400
    for name in (f"{old}.csv", f"{old}.rejected.csv", f"{old}.log.csv", "notes.csv"):
        os.utime(files[name], (two_days_ago, two_days_ago))
    login()
    assert client.get("/leads/import").status_code == 200
    left = {name for name, path in files.items() if path.exists()}
    assert left == {f"{fresh}.csv", f"{old}.log.csv", "notes.csv"}  # the timeline's log is not ours
    for path in files.values():
        path.unlink(missing_ok=True)


# --- the unsubscribe page shows the sender, in the recipient's language (item 21) --------------


def test_the_unsubscribe_page_shows_the_sender_in_the_recipients_language(app, engine):
    cid = make_campaign(engine, 1, from_name="Firma Nowak")
    token = make_token(app.config["SECRET_KEY"], "lead0000@example.com", cid)
    recipient = app.test_client()
    page = recipient.get(f"/u/{token}", headers={"Accept-Language": "pl-PL,pl;q=0.9"}).get_data(as_text=True)
    assert '<span class="brand">Firma Nowak</span>' in page and ">SendOnce<" not in page
    assert "Czy Firma Nowak ma przestać wysyłać wiadomości na adres lead0000@example.com?" in page
    page = app.test_client().get(f"/u/{token}", headers={"Accept-Language": "en-GB,en;q=0.8"}).get_data(
        as_text=True)
    assert "Stop all messages from Firma Nowak to lead0000@example.com?" in page
    app.config["COMPANY_NAME"] = "Nowak Sp. z o.o."
    page = app.test_client().post(f"/u/{token}").get_data(as_text=True)
    assert "Nowak Sp. z o.o. nie będzie już wysyłać wiadomości na adres lead0000@example.com." in page
