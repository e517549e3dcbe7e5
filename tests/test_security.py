"""Security: access rules from the URL map, CSRF, redirects, passwords, secrets, tokens,
escaping, CSV formula injection, search parameters and response headers."""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import logging
import re
import sqlite3
import xml.etree.ElementTree as ET
from datetime import timedelta
from html.parser import HTMLParser
from urllib.parse import quote, urljoin, urlsplit

import pytest
from sqlalchemy import func, select, update
from werkzeug.security import generate_password_hash

from app import SECURITY_HEADERS, create_app
from conftest import app_config
from core import campaigns, importer, leads, mailboxes, send_requests
from core.csvfile import quoted
from delivery.tokens import make_token
from delivery.transport import make_transport
from helpers import logged_in_client, make_campaign, make_unknown, serve_requests
from models import Campaign, Lead, Mailbox, SendLog, Suppression, Trigger, User, db
from sender import Settings, send_batch
from storage.database import immediate, write_session
from storage.secrets import Vault
from storage.timeutil import utcnow
from test_timeline import INCIDENT_CSV
from test_web import csrf_token, login  # noqa: F401 - the login fixture
from tests.smtp_sink import SmtpSink, free_port

WRONG = "Nieprawidłowy e-mail lub hasło."


def send_now(app, campaign_id: int) -> None:
    with app.app_context():
        transport = make_transport(app.config)
        try:
            send_batch(db.engine, Settings.from_config(app.config), transport, campaign_id, Trigger.BUTTON)
        finally:
            transport.close()


def upload(client, url: str, data: bytes, name: str, **form) -> str:
    """POST a file the way the browser's form does; the redirect's target."""
    token = csrf_token(client.get("/leads/import" if "leads" in url else "/timeline").data)
    response = client.post(url, data={"csrf_token": token, "file": (io.BytesIO(data), name), **form})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return response.location


# --- every route's access rule ---------------------------------------------------------------

# (rule, method) -> (status logged out, status logged in). A route missing here fails the test:
# whoever adds one decides its rule. 302 logged out means "to the login page" (checked below).
ACCESS = {
    ("/", "GET"): (302, 200),
    ("/status.json", "GET"): (302, 200),
    ("/healthz", "GET"): (200, 200),
    ("/login", "GET"): (200, 200),
    ("/login", "POST"): (200, 200),  # no credentials in the form: the form again
    ("/logout", "POST"): (302, 302),
    ("/language", "POST"): (302, 302),
    ("/static/<path:filename>", "GET"): (200, 200),
    ("/u/<token>", "GET"): (200, 200),
    ("/u/<token>", "POST"): (200, 200),
    ("/campaigns/new", "GET"): (302, 200),
    ("/campaigns/new", "POST"): (302, 200),  # invalid form: shown again
    ("/campaigns/<int:campaign_id>", "GET"): (302, 200),
    ("/campaigns/<int:campaign_id>/edit", "GET"): (302, 200),
    ("/campaigns/<int:campaign_id>/edit", "POST"): (302, 200),
    ("/campaigns/<int:campaign_id>/<any(pause, resume):action>", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/send", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/requests/<int:request_id>.json", "GET"): (302, 200),
    ("/campaigns/<int:campaign_id>/start", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/enroll", "POST"): (302, 200),  # no confirm: the count to confirm
    ("/campaigns/<int:campaign_id>/duplicate", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/delete", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/archive", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/unarchive", "POST"): (302, 302),
    ("/leads/<int:lead_id>/edit", "GET"): (302, 200),
    ("/leads/<int:lead_id>/edit", "POST"): (302, 302),
    ("/leads/<int:lead_id>/erase", "POST"): (302, 302),
    ("/leads/<int:lead_id>/unenroll/<int:campaign_id>", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/preview", "POST"): (302, 200),
    ("/campaigns/<int:campaign_id>/log", "GET"): (302, 200),
    ("/campaigns/<int:campaign_id>/timeline", "GET"): (302, 200),
    ("/campaigns/<int:campaign_id>/variants/<letter>", "GET"): (302, 200),
    ("/campaigns/<int:campaign_id>/variants/<letter>", "POST"): (302, 200),
    ("/campaigns/<int:campaign_id>/variants/<letter>/delete", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/variants/<letter>/test", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/sequence", "GET"): (302, 200),
    ("/campaigns/<int:campaign_id>/sequence/steps", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/sequence/variant", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/sequence/archive", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/sequence/remove", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/sequence/settings", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/leads/<int:lead_id>/timeline", "GET"): (302, 200),
    ("/campaigns/<int:campaign_id>/leads/<int:lead_id>/stop", "POST"): (302, 302),
    ("/sends/<int:send_log_id>/resolve", "GET"): (302, 200),
    ("/sends/<int:send_log_id>/resolve", "POST"): (302, 302),
    ("/leads", "GET"): (302, 200),
    ("/leads/<int:lead_id>", "GET"): (302, 200),
    ("/leads/import", "GET"): (302, 200),
    ("/leads/import", "POST"): (302, 200),  # no file: the form again
    ("/leads/import/<token>", "GET"): (302, 200),
    ("/leads/import/<token>", "POST"): (302, 200),  # no campaign choice: the form again
    ("/leads/import/<token>/rejected.csv", "GET"): (302, 200),
    ("/suppressions", "GET"): (302, 200),
    ("/suppressions", "POST"): (302, 200),  # no address: the list again
    ("/suppressions/import", "POST"): (302, 302),
    ("/suppressions/<int:suppression_id>/remove", "GET"): (302, 200),
    ("/suppressions/<int:suppression_id>/remove", "POST"): (302, 302),
    ("/timeline", "GET"): (302, 200),
    ("/timeline/export.csv", "GET"): (302, 200),
    ("/timeline/legacy", "POST"): (302, 400),  # no file
    ("/timeline/legacy/<token>", "GET"): (302, 200),
    ("/timeline/legacy/map/<token>", "POST"): (302, 404),  # the world's token names no waiting upload
    ("/timeline/legacy/<token>/delete", "POST"): (302, 302),
    ("/account", "GET"): (302, 200),
    ("/account/password", "POST"): (302, 400),  # no passwords: the form again, with errors
    ("/account/email", "POST"): (302, 400),
    ("/account/logout-everywhere", "POST"): (302, 302),
    ("/users", "GET"): (302, 200),
    ("/users", "POST"): (302, 400),  # no address or password: the form again
    ("/users/<int:user_id>/disable", "POST"): (302, 302),  # refused: the last active user
    ("/users/<int:user_id>/enable", "POST"): (302, 302),
    ("/users/<int:user_id>/remove", "POST"): (302, 302),  # refused: the last active user
    ("/alerts/<int:alert_id>/dismiss", "POST"): (302, 302),  # none open: "closed already"
    ("/mailboxes", "GET"): (302, 200),
    ("/mailboxes/new", "GET"): (302, 200),
    ("/mailboxes/new", "POST"): (302, 200),  # no address: the form again
    ("/mailboxes/<int:mailbox_id>/edit", "GET"): (302, 200),
    ("/mailboxes/<int:mailbox_id>/edit", "POST"): (302, 200),  # no address: the form again
    ("/mailboxes/<int:mailbox_id>/check", "POST"): (302, 200),  # the answers on the mailbox's page
    ("/mailboxes/<int:mailbox_id>/test", "POST"): (302, 302),  # no address typed: back, with why
    ("/mailboxes/<int:mailbox_id>/<any(pause, resume):action>", "POST"): (302, 302),
    ("/campaigns/<int:campaign_id>/move-leads", "POST"): (302, 302),  # no mailboxes chosen: back, with why
    ("/replies", "GET"): (302, 200),
    ("/replies/<int:inbound_id>/label", "POST"): (302, 404),  # nothing was read: no message 1
}
PUBLIC = {"/healthz", "/login", "/language", "/static/<path:filename>", "/u/<token>"}


@pytest.fixture
def world(app, engine, client, login, smtp):  # noqa: F811
    """One of everything a URL can name: campaign 1, lead 1, an unknown send 1, a suppression,
    an upload waiting for its mapping, an import's rejected rows and a legacy log."""
    cid = make_campaign(engine, 3, interval=3600)
    send_now(app, cid)
    make_unknown(engine)
    send_requests.record(engine, cid, "w" * 32, "admin@example.com", utcnow())  # a waiting "send now"
    with immediate(engine) as conn:
        conn.execute(Suppression.__table__.insert().values(email="gone@example.com", reason="manual"))
    mailboxes.create(engine, Vault(app.config["MAILBOX_KEY_FILE"]), address="box@example.com",
                     backend="outbox", smtp_password="box-secret")
    login()
    waiting = token_of(upload(client, "/leads/import", b"email\nnew@example.com\n", "a.csv"))
    done = token_of(upload(client, "/leads/import", b"email\nnot-an-address\n", "b.csv"))
    imported = client.post(f"/leads/import/{done}", data={"csrf_token": csrf_token(client.get("/").data),
                                                          "campaign": "0", "column-0": "email"})
    assert imported.status_code == 200  # its rejected rows are now a CSV to download
    legacy = token_of(upload(client, "/timeline/legacy", INCIDENT_CSV.read_bytes(), "log.csv", tz="UTC"))
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/").data)})
    unsubscribe = make_token(app.config["SECRET_KEY"], "lead0002@example.com", cid)
    return {"campaign_id": cid, "lead_id": 1, "letter": "A", "send_log_id": 1, "suppression_id": 1,
            "user_id": 1, "request_id": 1, "alert_id": 1, "inbound_id": 1, "action": "pause",
            "filename": "style.css", "mailbox_id": 1,
            "tokens": {"leads.mapping": waiting, "leads.rejected": done, "timeline.legacy": legacy,
                       "timeline.map_legacy": legacy, "timeline.delete_legacy": legacy,
                       "unsubscribe.unsubscribe": unsubscribe}}


def token_of(location: str) -> str:
    return urlsplit(location).path.rsplit("/", 1)[1]


def requests_from_url_map(app, world):
    """(rule, method, url) for every route, GETs first (POSTs change what later URLs name)."""
    found = []
    for rule in app.url_map.iter_rules():
        values = {k: v for k, v in world.items() if k in rule.arguments}
        if "token" in rule.arguments:
            values["token"] = world["tokens"][rule.endpoint]
        url = rule.build(values)[1]
        if rule.endpoint == "sendlog.resolve":
            url += "?action=mark-sent"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, method, url))
    return sorted(found, key=lambda r: (r[1] != "GET", r[0] == "/logout"))


def test_every_route_has_an_access_rule_and_keeps_it(app, world, client, login):  # noqa: F811
    requests = requests_from_url_map(app, world)
    assert {(rule, method) for rule, method, _ in requests} == set(ACCESS)
    stranger = app.test_client()
    token = csrf_token(stranger.get("/login").data)  # valid: only the login is missing
    for rule, method, url in requests:
        with stranger.open(url, method=method, data={"csrf_token": token, "key": "k1"}) as response:
            assert response.status_code == ACCESS[rule, method][0], (method, url, response.status_code)
            if rule not in PUBLIC:
                assert urlsplit(response.location).path == "/login", (method, url)
    login()
    token = csrf_token(client.get("/").data)
    for rule, method, url in requests:
        with client.open(url, method=method, data={"csrf_token": token, "key": "k2",
                                                   "action": "mark-sent"}) as response:
            assert response.status_code == ACCESS[rule, method][1], (method, url, response.status_code)
            if response.status_code == 302 and rule != "/logout":
                assert urlsplit(response.location).path != "/login", (method, url)
        if rule == "/account/logout-everywhere":  # a new session, so a new token
            token = csrf_token(client.get("/").data)


SWEEP_METHODS = ("GET", "HEAD", "POST", "OPTIONS")


def every_url(app, world) -> list[tuple[str, set[str], str]]:
    """(rule, methods it allows, url) for every route, in URL-map order."""
    found = []
    for rule in app.url_map.iter_rules():
        values = {k: v for k, v in world.items() if k in rule.arguments}
        if "token" in rule.arguments:
            values["token"] = world["tokens"][rule.endpoint]
        url = rule.build(values)[1] + ("?action=mark-sent" if rule.endpoint == "sendlog.resolve" else "")
        found.append((rule.rule, set(rule.methods), url))
    return found


def expected_status(rule: str, allowed: set[str], method: str, logged_in: bool, with_csrf: bool) -> int:
    """What each (route, method, login, CSRF) combination must answer."""
    if method == "OPTIONS":
        return 200  # the Allow header only; the view does not run
    if method not in allowed:
        return 405
    if method == "POST" and not with_csrf and rule != "/u/<token>":
        return 400  # CSRF is checked before anything else, logged in or not
    return ACCESS[rule, "GET" if method == "HEAD" else method][logged_in]


def database_rows(engine) -> dict[str, list]:
    """Every row of every table, in a stable order: what "nothing changed" is compared on."""
    with engine.connect() as conn:
        return {table.name: sorted(map(repr, conn.execute(select(table)).all()))
                for table in db.metadata.sorted_tables}


def test_every_route_and_method_logged_out_and_in_with_and_without_csrf(app, world, client, login,  # noqa: F811
                                                                       engine):
    """GET, HEAD, POST and OPTIONS on every route, logged out and in, with and without a
    CSRF token: each answers its expected status, and nothing but a logged-in POST with a
    valid token (or the one-click unsubscribe POST) changes the database."""
    urls = every_url(app, world)
    assert {(rule, m) for rule, allowed, _ in urls for m in allowed - {"HEAD", "OPTIONS"}} == set(ACCESS)
    stranger = app.test_client()
    states = [("logged out", stranger, False), ("logged in", client, True)]
    login()
    checked = 0
    for name, browser, logged_in in states:
        token = csrf_token(browser.get("/login").data)
        for with_csrf in (False, True):
            for rule, allowed, url in urls:
                for method in SWEEP_METHODS:
                    if method == "POST" and (rule == "/u/<token>" or (logged_in and with_csrf)):
                        continue  # the changes that are meant to happen: last, below
                    before = database_rows(engine)
                    data = {"csrf_token": token, "key": "k"} if with_csrf else {"key": "k"}
                    with browser.open(url, method=method, data=data) as response:
                        status = response.status_code
                    assert status == expected_status(rule, allowed, method, logged_in, with_csrf), (
                        name, with_csrf, method, url, status)
                    assert database_rows(engine) == before, (name, with_csrf, method, url)
                    checked += 1
    assert checked > 4 * len(urls) * 3
    # The POSTs that may change things, with a valid token: their statuses (destructive ones last).
    token = csrf_token(client.get("/").data)
    posts = sorted([(rule, url) for rule, allowed, url in urls if "POST" in allowed],
                   key=lambda r: (r[0] == "/logout", r[0] == "/account/logout-everywhere"))
    for rule, url in posts:
        with client.post(url, data={"csrf_token": token, "key": "k3", "action": "mark-sent"}) as response:
            assert response.status_code == ACCESS[rule, "POST"][1], (url, response.status_code)
        if rule == "/account/logout-everywhere":  # a new session, so a new token
            token = csrf_token(client.get("/").data)
    unsubscribe = next(url for rule, _, url in urls if rule == "/u/<token>")
    assert stranger.post(unsubscribe).status_code == 200  # one-click: no session, no CSRF token


def test_a_token_from_another_session_is_refused_on_every_post(app, world, client, login):  # noqa: F811
    other = app.test_client()
    foreign = csrf_token(other.get("/login").data)
    login()
    posts = [(rule, url) for rule, method, url in requests_from_url_map(app, world) if method == "POST"]
    for rule, url in posts:
        if rule == "/u/<token>":
            continue  # RFC 8058 one-click: the signed token is the authority (tested below)
        assert client.post(url, data={"csrf_token": foreign, "key": "k"}).status_code == 400, url
    # The public forms too, without any token at all.
    for url in ("/login", "/language"):
        assert app.test_client().post(url, data={"email": "admin@example.com",
                                                 "password": "correct horse"}).status_code == 400


# --- redirects stay on this site -------------------------------------------------------------

OFF_SITE = [
    "//evil.example", "/\\evil.example", "\\\\evil.example", "/\\/evil.example", "///evil.example",
    "https:evil.example", "https://evil.example/x", "HTTPS://evil.example", "http:/\\evil.example",
    "javascript:alert(1)", "JavaScript:alert(1)", "java\nscript:alert(1)",
    "data:text/html,<script>x</script>",
    "/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", " //evil.example", "\t//evil.example",
    "%2F%2Fevil.example", "%2F%5Cevil.example", "/%2F%2Fevil.example", "/%5Cevil.example",
    "%252F%252Fevil.example", "/%252F%252Fevil.example", "/%09/evil.example", "/.//evil.example",
    "@evil.example", "evil.example", "\x00//evil.example",
]
C0_AND_SPACE = "".join(map(chr, range(0x21)))


def quick_login(client) -> None:
    response = client.post("/login", data={"email": "admin@example.com", "password": "correct horse",
                                           "csrf_token": csrf_token(client.get("/login").data)})
    assert response.status_code == 302


def browser_target(location: str) -> tuple[str, str]:
    """(scheme, host) a browser on http://localhost/login goes to for this Location header.

    Browsers drop tabs and newlines anywhere in a URL, trim control characters and spaces
    at its ends, and read "\\" as "/" (WHATWG URL).
    """
    cleaned = re.sub(r"[\t\n\r]", "", location).strip(C0_AND_SPACE).replace("\\", "/")
    target = urlsplit(urljoin("http://localhost/login", cleaned))
    return target.scheme, target.netloc


@pytest.fixture
def quick_user(engine):
    """A login whose hash takes milliseconds (these tests are about redirects, not the KDF)."""
    with write_session(engine) as session:
        session.add(User(email="admin@example.com",
                         password_hash=generate_password_hash("correct horse", method="scrypt:1024:8:1")))


def test_login_next_never_leaves_the_site(client, quick_user):
    for target in OFF_SITE:
        token = csrf_token(client.get("/login").data)  # each login starts a new session (and token)
        response = client.post(f"/login?next={quote(target, safe='%')}", data={
            "email": "admin@example.com", "password": "correct horse", "csrf_token": token})
        assert response.status_code == 302, target
        assert browser_target(response.location) == ("http", "localhost"), (target, response.location)
        # The language switch's "back" field goes through the same check.
        token = csrf_token(client.get("/login").data)
        back = client.post("/language", data={"language": "en", "back": target, "csrf_token": token})
        assert browser_target(back.location) == ("http", "localhost"), (target, back.location)


def test_login_next_on_the_site_is_kept(client, quick_user):
    token = csrf_token(client.get("/login").data)
    response = client.post("/login?next=/leads%3Fq%3Dx", data={
        "email": "admin@example.com", "password": "correct horse", "csrf_token": token})
    assert response.location == "/leads?q=x"
    token = csrf_token(client.get("/").data)
    back = client.post("/language", data={"language": "en", "back": "/leads?q=x", "csrf_token": token})
    assert back.location == "/leads?q=x"


# --- passwords: scrypt, throttle, one answer -------------------------------------------------


def test_password_hashes_are_salted_scrypt(app, engine):
    with write_session(engine) as session:
        for email in ("a@example.com", "b@example.com"):
            user = User(email=email)
            user.set_password("same password")
            session.add(user)
    with engine.connect() as conn:
        hashes = conn.execute(select(User.password_hash)).scalars().all()
    assert all(re.fullmatch(r"scrypt:32768:8:1\$[^$]{16}\$[0-9a-f]{128}", h) for h in hashes), hashes
    assert hashes[0] != hashes[1]  # per-user salt
    assert all("same password" not in h for h in hashes)


def login_page(client, email: str, password: str) -> str:
    """The login POST's page with its per-session parts masked, for comparing answers."""
    token = csrf_token(client.get("/login").data)
    response = client.post("/login", data={"email": email, "password": password, "csrf_token": token})
    assert response.status_code == 200
    page = response.get_data(as_text=True).replace(token, "TOKEN")
    return re.sub(r'name="csrf_token" type="hidden" value="[^"]+"', "", page).replace(email, "EMAIL")


def user_row(engine) -> tuple:
    with engine.connect() as conn:
        return tuple(conn.execute(select(User.failed_logins, User.locked_until)).one())


def test_five_failures_lock_the_account_with_the_same_answer(app, client, login, engine):  # noqa: F811
    unknown = login_page(client, "nobody@example.com", "whatever")
    wrong = login_page(client, "admin@example.com", "wrong 1")
    assert WRONG in wrong and unknown == wrong  # nothing says which half was wrong
    for attempt in range(2, 6):
        assert login_page(client, "admin@example.com", f"wrong {attempt}") == wrong
    failed, locked_until = user_row(engine)
    assert failed == 5 and locked_until > utcnow()
    # Locked: even the right password is refused, with the very same page.
    assert login_page(client, "admin@example.com", "correct horse") == wrong
    assert client.get("/").status_code == 302  # not logged in
    # The lock ends (moved into the past instead of waiting): the right password works again.
    with write_session(engine) as session:
        session.execute(update(User).values(locked_until=utcnow() - timedelta(seconds=1)))
    response = login()
    assert response.status_code == 302 and response.location == "/"
    assert user_row(engine) == (0, None)


def test_each_further_failure_waits_longer(client, login, engine):  # noqa: F811
    waits = []
    for _ in range(7):
        with write_session(engine) as session:  # let every try in, to see the wait it earns
            session.execute(update(User).values(locked_until=None))
        login("wrong")
        locked_until = user_row(engine)[1]
        waits.append(None if locked_until is None else round((locked_until - utcnow()).total_seconds()))
    assert waits == [None, None, None, None, 30, 60, 120]


@pytest.fixture
def kdf_calls(monkeypatch, config):
    """Every scrypt computation werkzeug makes, each with whether the write lock was free then."""
    path = config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    calls: list[bool] = []
    real = hashlib.scrypt

    def counting(*args, **kwargs):
        calls.append(write_lock_free(path))
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


def write_lock_free(path: str) -> bool:
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def test_every_login_attempt_costs_one_kdf_outside_the_write_lock(client, login, engine,  # noqa: F811
                                                                 kdf_calls):
    """The same work for an unknown address, a wrong password and a locked account, so
    timing cannot tell them apart; and the slow KDF (0.1-0.4 s) never runs while holding
    the database's write lock, or a guesser would stall every send."""
    counts = {}
    attempts = [("unknown", "nobody@example.com", "x"), ("wrong", "admin@example.com", "x"),
                ("right", "admin@example.com", "correct horse")]
    for name, email, password in attempts:
        before = len(kdf_calls)
        if name == "right":
            assert login(password).status_code == 302
            client.post("/logout", data={"csrf_token": csrf_token(client.get("/").data)})
        else:
            login_page(client, email, password)
        counts[name] = len(kdf_calls) - before
    with write_session(engine) as session:
        session.execute(update(User).values(locked_until=utcnow() + timedelta(minutes=5)))
    before = len(kdf_calls)
    login_page(client, "admin@example.com", "correct horse")
    counts["locked"] = len(kdf_calls) - before
    assert counts == {"unknown": 1, "wrong": 1, "right": 1, "locked": 1}
    assert kdf_calls and all(kdf_calls), "a password was hashed while holding the write lock"


# --- the SMTP password is never shown or logged ----------------------------------------------

SMTP_SECRET = "Zq8-smtp-PASSWORD-never-shown-7731"


def assert_not_logged(caplog, secret: str) -> None:
    encoded = base64.b64encode(f"\0team\0{secret}".encode()).decode()
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "") + repr(record.args)
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert secret not in text and encoded not in text, (record.name, record.getMessage())
    assert secret not in caplog.text


@pytest.mark.parametrize("server", ["wrong password", "right password", "down"])
def test_smtp_password_is_never_logged(tmp_path, caplog, server):
    caplog.set_level(logging.DEBUG)
    with SmtpSink(password="something-else" if server == "wrong password" else SMTP_SECRET) as sink:
        port = free_port() if server == "down" else sink.port
        app = create_app(app_config(tmp_path / "db.sqlite", port, SMTP_USERNAME="team",
                                    SMTP_PASSWORD=SMTP_SECRET, SMTP_ALLOW_PLAINTEXT_AUTH=True,
                                    LOG_LEVEL="DEBUG"))
        with app.app_context():
            db.create_all()
            cid = make_campaign(db.engine, 2, batch_size=2)
        send_now(app, cid)
        received = sum(sink.recorder.received.values())
    assert received == (2 if server == "right password" else 0)  # each case did what it says
    if server == "wrong password":
        assert any("paused" in r.getMessage() and "535" in r.getMessage() for r in caplog.records)
    assert_not_logged(caplog, SMTP_SECRET)


def test_smtp_password_is_never_rendered_into_a_page(tmp_path):
    with SmtpSink(password="something-else") as sink:
        app = create_app(app_config(tmp_path / "db.sqlite", sink.port, SMTP_USERNAME="team",
                                    SMTP_PASSWORD=SMTP_SECRET, SMTP_ALLOW_PLAINTEXT_AUTH=True))
        with app.app_context():
            db.create_all()
            engine = db.engine
            cid = make_campaign(engine, 2, interval=3600)
        vault = Vault(app.config["MAILBOX_KEY_FILE"])
        mailboxes.create(engine, vault, address="box@example.com", smtp_host="127.0.0.1", smtp_port=sink.port,
                         smtp_security="none", smtp_username="box", smtp_password=SMTP_SECRET,
                         imap_password=SMTP_SECRET)
        with engine.connect() as conn:
            sealed = conn.execute(select(Mailbox.smtp_secret, Mailbox.imap_secret)).one()
        client = logged_in_client(app)
        page = client.get(f"/campaigns/{cid}").data
        key = re.search(rb'name="key" type="hidden" value="([0-9a-f]+)"', page).group(1).decode()
        pressed = client.post(f"/campaigns/{cid}/send", data={"csrf_token": csrf_token(page), "key": key})
        serve_requests(app)
        sent = client.get(pressed.location).get_data(as_text=True)
        assert "535" in sent  # the server's refusal is shown ...
        pages = {"after send": sent}
        for rule in app.url_map.iter_rules():
            if "GET" in rule.methods and rule.endpoint not in ("static", "leads.mapping", "leads.rejected",
                                                               "timeline.legacy", "unsubscribe.unsubscribe"):
                values = {"campaign_id": cid, "lead_id": 1, "letter": "A", "send_log_id": 1,
                          "suppression_id": 1, "request_id": 1, "mailbox_id": 1}
                url = rule.build({k: v for k, v in values.items() if k in rule.arguments})[1]
                pages[url] = client.get(url + "?action=mark-sent").get_data(as_text=True)
    with app.app_context():
        assert "535" in db.session.get(Campaign, cid).pause_reason  # ... and why it paused
    assert len(pages) >= 15
    for url, text in pages.items():
        assert SMTP_SECRET not in text, url
        assert sealed[0] not in text and sealed[1] not in text, url


# --- unsubscribe tokens ----------------------------------------------------------------------


def test_unsubscribe_token_cannot_be_moved_to_another_campaign_or_address(client, app, engine):
    secret = app.config["SECRET_KEY"]
    token = make_token(secret, "lead@example.com", 1)
    signature = token.rsplit(".", 1)[1]

    def with_payload(value) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode())
        return payload.decode().rstrip("=") + "." + signature

    assert with_payload(["lead@example.com", 1]) == token  # the forgery is built right ...
    for forged in (with_payload(["lead@example.com", 2]), with_payload(["boss@example.com", 1]),
                   with_payload(["lead@example.com", "1 OR 1=1"]),
                   csrf_token(client.get("/login").data)):  # signed with our key, for another use
        assert client.post(f"/u/{forged}").status_code == 404, forged
        assert client.get(f"/u/{forged}").status_code == 404, forged
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Suppression)).scalar() == 0
    assert client.post(f"/u/{token}").status_code == 200  # ... and the real token still works


# --- lead data escaped: timeline page, its SVG, CSV exports ----------------------------------

SCRIPT = "<script>alert(1)</script>"
ATTR = '"><svg onload=alert(1)>'


class Tags(HTMLParser):
    """Every start tag and its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def hostile_markup(page: str) -> list:
    """Event-handler attributes anywhere, and any script but our own app.js."""
    parser = Tags()
    parser.feed(page)
    return [(tag, attrs) for tag, attrs in parser.tags
            if any(name.startswith("on") for name in attrs)
            or (tag == "script" and attrs.get("src") != "/static/app.js")]


def test_legacy_log_with_hostile_cells_is_escaped_on_the_page_and_in_the_chart(client, login):  # noqa: F811
    login()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["sentAt", "lead", "campaignId", "variantLetter", "trigger", "worker"])
    for i, lead in enumerate([SCRIPT, ATTR, SCRIPT, ATTR, "ok@example.com"]):
        writer.writerow([f"2025-01-14T09:{i:02d}:00Z", lead, ATTR, "A", SCRIPT if i % 2 else "cli", ATTR])
    location = upload(client, "/timeline/legacy", out.getvalue().encode(), "log.csv", tz="UTC")
    page = client.get(location).get_data(as_text=True)
    assert '<tr><th>Razem</th><td>5</td><td>3</td><td class="dup">2</td>' in page  # read and analysed
    assert SCRIPT not in page and ATTR not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&#34;&gt;&lt;svg onload=alert(1)&gt;" in page
    assert hostile_markup(page) == []
    svg = re.search(r"<svg .*?</svg>", page, re.S).group(0)
    chart = ET.fromstring(svg)  # well-formed: nothing broke out of an attribute or a <title>
    ns = "{http://www.w3.org/2000/svg}" if chart.tag.startswith("{") else ""
    assert chart.tag == ns + "svg" and len(chart.findall(f"{ns}rect")) >= 3
    assert all(not name.startswith("on") for el in chart.iter() for name in el.attrib)
    assert page.count("<svg") == 1


FORMULA_LEADS = ["=1+1@example.com", "+48@example.com", "-2@example.com", "plain@example.com"]


def test_timeline_export_neutralizes_formula_cells(app, engine, client, login, smtp):  # noqa: F811
    cid = make_campaign(engine, 0, variants="A", interval=0, batch_size=10, start=False)
    report = importer.import_leads(engine, ("email\n" + "\n".join(FORMULA_LEADS) + "\n").encode())
    assert report.rejected == [] and report.imported == 4  # all four are valid addresses
    leads.enroll(engine, cid, report.lead_ids)
    campaigns.start(engine, cid)
    send_now(app, cid)
    login()
    rows = list(csv.reader(io.StringIO(client.get("/timeline/export.csv").get_data(as_text=True))))
    assert sorted(row[2] for row in rows[1:]) == sorted(
        ["'=1+1@example.com", "'+48@example.com", "'-2@example.com", "plain@example.com"])
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)


def test_import_rejected_rows_are_escaped_and_their_csv_neutralized(client, login, engine):  # noqa: F811
    login()
    bad = ['=HYPERLINK("http://evil.example")', "+1", "-1", "@SUM(1+1)", SCRIPT, ATTR]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["email", "first_name"])
    writer.writerows([[cell, "x"] for cell in bad] + [["good@example.com", SCRIPT]])
    mapping = upload(client, "/leads/import", out.getvalue().encode(), "bad.csv").split("?")[0]
    result = client.post(mapping, data={"csrf_token": csrf_token(client.get("/").data), "campaign": "0",
                                        "column-0": "email", "column-1": "first_name"})
    page = result.get_data(as_text=True)
    assert result.status_code == 200 and SCRIPT not in page and ATTR not in page
    assert hostile_markup(page) == []
    rejected = client.get(mapping + "/rejected.csv")
    assert rejected.mimetype == "text/csv"
    assert rejected.get_data().startswith("\ufeff".encode())  # a BOM, so Excel reads UTF-8
    rows = list(csv.reader(io.StringIO(rejected.get_data().decode("utf-8-sig"))))
    assert [row[0] for row in rows] == ["line", "2", "3", "4", "5", "6", "7"]
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)
    for cell, (_, reason) in zip(bad, rows[1:], strict=True):
        assert quoted(cell) in reason  # the reason names what was read, neutralized
    lead_page = client.get("/leads").get_data(as_text=True)
    assert SCRIPT not in lead_page and "&lt;script&gt;" in lead_page


# --- search fields: bound parameters, LIKE wildcards literal ---------------------------------

SEARCH_LEADS = [  # email, company
    ("alpha@example.com", "' OR 1=1 --"), ("b_c@example.com", "Acme"), ("100%off@example.com", "Shop"),
    ("o'brien@example.com", "O'Brien Ltd"), ("dq@example.com", '"; DROP TABLE lead; --'),
    ("back\\slash@example.com", "x"), ("plain@example.com", "Plain"),
]
PAYLOADS = ["' OR 1=1 --", "%", "_", '"; DROP TABLE lead; --', "' OR '1'='1", "%' --", "\\", "o'b",
            "100%", "b_c", "1=1", "'; DELETE FROM lead; --", "*", "[a-z]", "%_%"]


def shown_leads(page: str) -> set[str]:
    return {html.unescape(e) for e in re.findall(r'href="/leads/\d+">([^<]*)</a>', page)}


@pytest.fixture
def searchable(engine):
    with immediate(engine) as conn:
        for email, company in SEARCH_LEADS:
            conn.execute(Lead.__table__.insert().values(email=email, company=company, first_name="",
                                                        last_name="", tags="", fields={}))
            conn.execute(Suppression.__table__.insert().values(email=email, reason="manual"))


def test_lead_search_matches_only_literal_text(client, quick_user, engine, searchable):
    quick_login(client)
    for q in PAYLOADS:
        response = client.get("/leads", query_string={"q": q})
        assert response.status_code == 200, q
        expected = {email for email, company in SEARCH_LEADS
                    if q.strip().lower() in email.lower() or q.strip().lower() in company.lower()}
        assert shown_leads(response.get_data(as_text=True)) == expected, q
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Lead)).scalar() == len(SEARCH_LEADS)


def test_suppression_search_matches_only_literal_text(client, quick_user, engine, searchable):
    quick_login(client)
    for q in PAYLOADS:
        response = client.get("/suppressions", query_string={"q": q})
        assert response.status_code == 200, q
        shown = {html.unescape(e) for e in re.findall(r"<tr><td>([^<]*)</td><td>dodany ręcznie</td>",
                                                      response.get_data(as_text=True))}
        assert shown == {email for email, _ in SEARCH_LEADS if q.strip().lower() in email}, q
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Suppression)).scalar() == len(SEARCH_LEADS)


def test_send_log_filters_take_hostile_values_as_data(app, client, login, engine, smtp):  # noqa: F811
    first = make_campaign(engine, 3, batch_size=3)
    other = make_campaign(engine, 0, batch_size=3, start=False)
    with immediate(engine) as conn:  # the other campaign has a send of lead 1 too
        conn.execute(SendLog.__table__.insert().values(campaign_id=other, lead_id=1, variant_letter="A",
                                                       status="sent", trigger="cli", worker="w"))
    send_now(app, first)
    login()

    def shown(**args) -> set[str]:
        response = client.get(f"/campaigns/{first}/log", query_string=args)
        assert response.status_code == 200
        return shown_leads(response.get_data(as_text=True))

    everyone = {f"lead{i:04d}@example.com" for i in range(3)}
    assert shown() == everyone
    for payload in PAYLOADS:
        assert shown(variant=payload) == set(), payload  # no variant is called that
        for name in ("status", "trigger", "from", "to"):  # not a status/trigger/time: no filter
            assert shown(**{name: payload}) == everyone, (name, payload)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(SendLog)).scalar() == 4


# --- response headers ------------------------------------------------------------------------


def test_security_headers_on_every_kind_of_response(app, client, login, engine):  # noqa: F811
    make_campaign(engine, 1)
    token = make_token(app.config["SECRET_KEY"], "lead0000@example.com", 1)
    responses = {"login": client.get("/login"), "redirect": client.get("/"),
                 "static": client.get("/static/style.css"), "unsubscribe": client.get(f"/u/{token}"),
                 "404": client.get("/u/nonsense"), "json": client.get("/healthz")}
    login()
    token = csrf_token(client.get("/").data)
    responses |= {"page": client.get("/"), "csv": client.get("/timeline/export.csv"),
                  "400": client.post("/timeline/legacy", data={"csrf_token": token})}
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
    assert SECURITY_HEADERS["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]
    assert "'unsafe-inline'" not in SECURITY_HEADERS["Content-Security-Policy"].split("style-src")[0]
    for name, response in responses.items():
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, (name, header)
        assert response.headers["Referrer-Policy"] in ("same-origin", "strict-origin-when-cross-origin")
        response.close()
