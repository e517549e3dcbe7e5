"""Admin pages: login everywhere, CSRF on every POST, the idempotent send button, healthz."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select, text

from app import create_app
from conftest import ON_POSTGRES
from core import campaigns
from helpers import csrf_token, make_campaign, send_key, serve_requests
from models import Campaign, SendRequest, User, db
from storage.database import write_session
from storage.revision import HEAD

pytestmark = pytest.mark.postgres  # runs again on PostgreSQL (make test)

PUBLIC = {"static", "auth.login", "unsubscribe.unsubscribe", "views.healthz", "i18n.set_language"}


@pytest.fixture
def login(app, client):
    with app.app_context(), write_session(db.engine) as session:
        user = User(email="admin@example.com")
        user.set_password("correct horse")
        session.add(user)

    def do(password: str = "correct horse"):
        token = csrf_token(client.get("/login").data)
        return client.post("/login", data={"email": "admin@example.com", "password": password,
                                           "csrf_token": token})
    return do


def admin_urls(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC:
            continue
        values = {arg: 1 for arg in rule.arguments}
        if "action" in rule.arguments:
            values["action"] = "pause"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            yield method, rule.build(values)[1]


def test_every_admin_route_requires_login(app, client):
    urls = list(admin_urls(app))
    assert len(urls) >= 5
    token = csrf_token(client.get("/login").data)  # a valid token: only the login is missing
    for method, url in urls:
        response = client.open(url, method=method, data={"csrf_token": token, "key": "k"})
        assert response.status_code == 302 and "/login" in response.location, (method, url)


def test_every_post_without_csrf_token_is_rejected(app, client, login, engine):
    make_campaign(engine, 1)
    login()
    posts = [url for method, url in admin_urls(app) if method == "POST"]
    assert posts
    for url in posts:
        assert client.post(url).status_code == 400, url


def test_wrong_password_says_so_without_saying_which_half(client, login):
    page = login("wrong")
    assert "Nieprawidłowy e-mail lub hasło." in page.get_data(as_text=True)
    assert login().status_code == 302


def test_login_next_cannot_leave_the_site(client, login, app):
    token = csrf_token(client.get("/login").data)
    response = client.post("/login?next=https://evil.example/x", data={
        "email": "admin@example.com", "password": "correct horse", "csrf_token": token})
    assert response.location == "/"


def test_double_submit_of_the_send_button_records_one_request_and_sends_one_batch(app, client, login, engine,
                                                                                  smtp):
    cid = make_campaign(engine, 10, batch_size=3, interval=3600)
    login()
    page = client.get(f"/campaigns/{cid}").data
    form = {"csrf_token": csrf_token(page), "key": send_key(page)}
    first = client.post(f"/campaigns/{cid}/send", data=form)
    second = client.post(f"/campaigns/{cid}/send", data=form)
    assert first.status_code == second.status_code == 302
    assert first.location == second.location == f"/campaigns/{cid}?request=1"  # one request
    assert smtp.recorder.messages == []  # nothing is sent inside the web request
    assert "Czekam na proces wysyłający…" in client.get(first.location).get_data(as_text=True)
    assert serve_requests(app) == 1  # the sending process carries it out
    done = client.get(first.location).get_data(as_text=True)
    assert "Zakończono: wysłano 3" in done and "lead0000@example.com" in done
    replayed = client.post(f"/campaigns/{cid}/send", data=form)  # F5 on the result, later
    assert replayed.location == first.location and serve_requests(app) == 0
    assert sum(smtp.recorder.received.values()) == 3
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(SendRequest)).scalar() == 1


def test_paused_campaign_shows_the_button_disabled(client, login, engine):
    cid = make_campaign(engine, 2)
    campaigns.pause(engine, cid)
    login()
    html = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert re.search(r'<button type="submit" id="send-now" disabled>Wyślij kampanię</button>', html)
    assert "Wznów kampanię, aby wysyłać." in html


def test_lead_and_campaign_data_are_escaped(client, login, engine, app, smtp):
    cid = make_campaign(engine, 1, name='<script>alert("x")</script>', from_name="\"'><img src=x>")
    login()
    token = csrf_token(client.get(f"/campaigns/{cid}").data)
    del token
    for url in ("/", f"/campaigns/{cid}"):
        html = client.get(url).get_data(as_text=True)
        assert "<script>alert" not in html and "<img src=x>" not in html
        assert "&lt;script&gt;" in html


def test_healthz_reports_database_and_lease_without_login(client):
    data = client.get("/healthz").get_json()
    assert data == {"database": "ok", "scheduler": {"epoch": 0, "fresh": False, "heartbeat_at": None},
                    "schema": HEAD, "schema_expected": HEAD,  # no backup taken yet:
                    "last_backup_at": None, "last_backup_age_seconds": None}


def test_healthz_is_503_when_the_database_is_unreachable(config, tmp_path):
    app = create_app({**config, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/missing/dir/x.db"})
    assert app.test_client().get("/healthz").status_code == 503


@pytest.mark.skipif(not ON_POSTGRES, reason="a read-only PostgreSQL database (SQLite's: test_bad_input)")
def test_a_read_only_postgresql_database_is_one_line_in_the_cli_and_a_503_page(app, engine, client, login):
    cid = make_campaign(engine, 2)
    login()
    token = csrf_token(client.get(f"/campaigns/{cid}").data)
    with engine.connect() as conn:  # as on a standby, or a database an administrator froze
        conn.execute(text(f"ALTER DATABASE {engine.url.database} SET default_transaction_read_only = on"))
        conn.commit()
    engine.dispose()
    result = app.test_cli_runner().invoke(args=["campaign", "pause", str(cid)])
    assert result.exit_code == 1 and "the database cannot be written" in result.output
    assert "the PostgreSQL server accepts writes" in result.output and "Traceback" not in result.output
    response = client.post(f"/campaigns/{cid}/pause", data={"csrf_token": token, "action": "pause"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "Serwer bazy danych nie przyjmuje teraz zmian" in response.get_data(as_text=True)
    assert client.get("/healthz").status_code == 200  # reading still works


def test_session_cookie_is_httponly_and_samesite(client, login):
    response = login()
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_dashboard_shows_a_missing_scheduler_in_red(client, login, engine):
    make_campaign(engine, 1)
    login()
    html = client.get("/").get_data(as_text=True)
    assert 'class="scheduler bad"' in html
    with engine.connect() as conn:
        assert conn.execute(select(Campaign.name)).scalar() in html
