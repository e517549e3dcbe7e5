"""Accounts (#13 finding 3): revocable sessions, lifetimes, a password policy, set-password,
and the account and users pages."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core import accounts
from models import User
from storage.database import write_session
from test_web import csrf_token, login  # noqa: F401 - the login fixture

GOOD = "a long enough passphrase"


def logged_in(client) -> bool:
    return client.get("/").status_code == 200


def cookie_of(client) -> str:
    return client.get_cookie("session").value


def with_cookie(app, value: str):
    """Another browser (an attacker's) holding a copy of a session cookie."""
    thief = app.test_client()
    thief.set_cookie("session", value)
    return thief


def test_a_cookie_captured_before_logout_is_dead_after_it(app, client, login):  # noqa: F811
    login()
    stolen = cookie_of(client)
    assert logged_in(with_cookie(app, stolen))
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/").data)})
    assert not logged_in(client)
    assert not logged_in(with_cookie(app, stolen))


def test_login_starts_a_new_session_and_a_pre_login_csrf_token_dies(app, client, login):  # noqa: F811
    with client.session_transaction() as session:
        session["planted"] = "by someone else"
    before = csrf_token(client.get("/login").data)
    login()
    with client.session_transaction() as session:
        assert "planted" not in session
    response = client.post("/language", data={"language": "en", "back": "/", "csrf_token": before})
    assert response.status_code == 400  # the token from before the login is no longer valid
    assert client.post("/language", data={"language": "en", "back": "/",
                                          "csrf_token": csrf_token(client.get("/").data)}).status_code == 302


def test_a_password_change_and_log_out_everywhere_end_other_sessions(app, client, login, engine):  # noqa: F811
    login()
    other = app.test_client()
    assert other.post("/login", data={"email": "admin@example.com", "password": "correct horse",
                                      "csrf_token": csrf_token(other.get("/login").data)}).status_code == 302
    page = client.get("/account").data
    response = client.post("/account/password", data={
        "csrf_token": csrf_token(page), "pw-current": "correct horse", "pw-new": GOOD, "pw-repeat": GOOD})
    assert response.status_code == 302
    assert logged_in(client)  # this browser goes on ...
    assert not logged_in(other)  # ... every other one is logged out
    with engine.connect() as conn:
        user = conn.execute(select(User.password_hash)).scalar()
    assert User(password_hash=user).check_password(GOOD)
    assert login("correct horse").status_code == 200  # the old password no longer works
    assert login(GOOD).status_code == 302
    third = app.test_client()
    third.set_cookie("session", cookie_of(client))
    assert logged_in(third)
    client.post("/account/logout-everywhere", data={"csrf_token": csrf_token(client.get("/account").data)})
    assert logged_in(client) and not logged_in(third)


def test_the_account_page_refuses_a_wrong_current_password_and_weak_or_differing_new_ones(
        client, login, engine):  # noqa: F811
    login()
    token = csrf_token(client.get("/account").data)
    before = user_hash(engine)
    for current, new, repeat, message in [
            ("wrong password", GOOD, GOOD, "Obecne hasło jest nieprawidłowe."),
            ("correct horse", "short1", "short1", "co najmniej 12 znaków"),
            ("correct horse", "password1234", "password1234", "zbyt łatwe do odgadnięcia"),
            ("correct horse", GOOD, GOOD + "x", "Hasła się różnią.")]:
        response = client.post("/account/password", data={
            "csrf_token": token, "pw-current": current, "pw-new": new, "pw-repeat": repeat})
        assert response.status_code == 400 and message in response.get_data(as_text=True), new
    assert user_hash(engine) == before


def user_hash(engine) -> str:
    with engine.connect() as conn:
        return conn.execute(select(User.password_hash)).scalar()


def test_changing_my_e_mail_address(app, client, login, engine):  # noqa: F811
    login()
    accounts.create_user(engine, "taken@example.com", GOOD)
    token = csrf_token(client.get("/account").data)
    taken = client.post("/account/email", data={"csrf_token": token, "em-current": "correct horse",
                                                "em-email": "Taken@example.com"})
    assert taken.status_code == 400 and "istnieje już" in taken.get_data(as_text=True)
    moved = client.post("/account/email", data={"csrf_token": token, "em-current": "correct horse",
                                                "em-email": " New.Admin@Example.com "})
    assert moved.status_code == 302
    with engine.connect() as conn:
        emails = set(conn.execute(select(User.email)).scalars())
    assert emails == {"new.admin@example.com", "taken@example.com"}


def test_idle_and_absolute_session_lifetimes(app, client, login):  # noqa: F811
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=1)
    login()
    assert logged_in(client)
    time.sleep(2.5)  # the cookie's signed timestamp is older than the idle lifetime
    assert not logged_in(client)
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=12)
    login()
    with client.session_transaction() as session:
        session["login_at"] -= 14 * 86400 + 1  # logged in more than 14 days ago, active all along
    assert not logged_in(client)
    login()
    cookie = client.get("/").headers.get("Set-Cookie", "")
    assert "Expires=" in cookie  # a persistent cookie, renewed by each request (the idle timeout)


@pytest.mark.parametrize("password", ["short", "elevenchars", "password1234", "Password1234 ",
                                      "aaaaaaaaaaaaaaa", "ababababababab", "admin-example-admin@x"])
def test_the_password_policy_refuses(password):
    with pytest.raises(accounts.AccountError):
        accounts.check_password(password, "admin@example.com" if "admin" in password else "")


def test_the_common_password_list_is_shipped_and_read():
    assert len(accounts.COMMON) >= 100 and "correct horse battery staple" in accounts.COMMON
    accounts.check_password("tęczowy-kot-pije-herbatę")  # a passphrase of its own is fine


def test_set_password_cli_and_create_user_messages(runner, app, engine):
    result = runner.invoke(args=["create-user", "admin@example.com", "--password", "x"])
    assert result.exit_code == 1 and "at least 12 characters" in result.output
    assert runner.invoke(args=["create-user", "admin@example.com", "--password", GOOD]).exit_code == 0
    again = runner.invoke(args=["create-user", "admin@example.com", "--password", GOOD])
    assert again.exit_code == 1 and "set-password" in again.output  # says what to use instead
    weak = runner.invoke(args=["set-password", "admin@example.com", "--password", "qwerty123456"])
    assert weak.exit_code == 1 and "too easy to guess" in weak.output
    nobody = runner.invoke(args=["set-password", "nobody@example.com", "--password", GOOD + "!"])
    assert nobody.exit_code == 1 and "no user nobody@example.com" in nobody.output
    with engine.connect() as conn:
        generation = conn.execute(select(User.session_generation)).scalar()
    done = runner.invoke(args=["set-password", "Admin@Example.com", "--password", GOOD + "!"])
    assert done.exit_code == 0, done.output
    with engine.connect() as conn:
        row = conn.execute(select(User.password_hash, User.session_generation)).one()
    assert User(password_hash=row.password_hash).check_password(GOOD + "!")
    assert row.session_generation == generation + 1  # its sessions ended


def test_first_run_points_to_set_password(runner, app):
    result = runner.invoke(args=["first-run"])
    assert result.exit_code == 0 and "change it with set-password" in result.output


# --- the users page ---------------------------------------------------------------------------


def users_page(client) -> str:
    return client.get("/users").get_data(as_text=True)


def act(client, user_id: int, action: str):
    token = csrf_token(client.get("/users").data)
    return client.post(f"/users/{user_id}/{action}", data={"csrf_token": token}, follow_redirects=True)


def test_users_page_adds_disables_and_removes(app, client, login, engine):  # noqa: F811
    login()
    token = csrf_token(client.get("/users").data)
    weak = client.post("/users", data={"csrf_token": token, "email": "ola@example.com", "password": "short"})
    assert weak.status_code == 400 and "co najmniej 12 znaków" in weak.get_data(as_text=True)
    added = client.post("/users", data={"csrf_token": token, "email": "Ola@Example.com", "password": GOOD})
    assert added.status_code == 302 and "ola@example.com" in users_page(client)
    ola_id = accounts.user_id_of(engine, "ola@example.com")
    ola = app.test_client()
    ola.post("/login", data={"email": "ola@example.com", "password": GOOD,
                             "csrf_token": csrf_token(ola.get("/login").data)})
    assert logged_in(ola)
    assert "jest wyłączony" in act(client, ola_id, "disable").get_data(as_text=True)
    assert not logged_in(ola)  # disabled: the session ended ...
    refused = ola.post("/login", data={"email": "ola@example.com", "password": GOOD,
                                       "csrf_token": csrf_token(ola.get("/login").data)})
    assert refused.status_code == 200 and "Nieprawidłowy e-mail lub hasło." in refused.get_data(as_text=True)
    act(client, ola_id, "enable")
    assert ola.post("/login", data={"email": "ola@example.com", "password": GOOD,
                                    "csrf_token": csrf_token(ola.get("/login").data)}).status_code == 302
    act(client, ola_id, "remove")
    assert not logged_in(ola)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(User)).scalar() == 1


def test_the_last_active_user_can_be_neither_disabled_nor_removed(app, client, login, engine):  # noqa: F811
    login()
    me = accounts.user_id_of(engine, "admin@example.com")
    other = accounts.create_user(engine, "other@example.com", GOOD)
    accounts.set_disabled(engine, other, True)
    for action in ("disable", "remove"):
        page = act(client, me, action).get_data(as_text=True)
        assert "Ostatniego aktywnego użytkownika nie można wyłączyć ani usunąć" in page, action
        assert logged_in(client)
    with engine.connect() as conn:
        assert conn.execute(select(User.disabled).where(User.id == me)).scalar() is False
    accounts.set_disabled(engine, other, False)  # with another active user, it is allowed
    act(client, me, "disable")
    assert not logged_in(client)
    with write_session(engine) as session:
        assert session.get(User, me).disabled
