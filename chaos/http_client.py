"""A logged-in admin in a few HTTP calls: the "Wyślij kampanię" button, pause, resume.

Cookies are handled by hand rather than by a cookie jar: the session cookie after login
is kept as the base, and every POST is sent with it, so the cookie a POST's redirect
sets carries that POST's flash messages only (decoded with Flask's signed cookie session
and the run's SECRET_KEY). A press only records a "send now" request; whether a key sent
a batch is read from the database afterwards (reconcile.check_double_submits).
"""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import urlencode

_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
_KEY = re.compile(r'name="key"[^>]*value="([^"]+)"')


class HttpError(RuntimeError):
    """A request that did not get the expected answer (status or missing form)."""


@dataclass(frozen=True)
class Response:
    status: int
    body: str
    session_cookie: str | None  # the `session` value the response set, if any


@dataclass(frozen=True)
class SendForm:
    csrf_token: str
    key: str


class AdminClient:
    """One browser session of one admin user."""

    def __init__(self, port: int, load_session, timeout: float = 60) -> None:
        self.port = port
        self.timeout = timeout
        self.cookie: str | None = None
        self._load_session = load_session  # signed cookie value -> dict

    def request(self, method: str, path: str, form: dict | None = None,
                cookie: str | None = None) -> Response:
        """One request on a fresh connection; redirects are not followed."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            headers = {}
            body = None
            if cookie:
                headers["Cookie"] = f"session={cookie}"
            if form is not None:
                body = urlencode(form)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            return Response(resp.status, text, _session_cookie(resp.getheader("Set-Cookie")))
        finally:
            conn.close()

    def login(self, email: str, password: str) -> None:
        """GET the form for its CSRF token, POST the credentials, keep the session."""
        page = self.request("GET", "/login")
        token = _find(_CSRF, page.body, "login form without csrf_token")
        done = self.request("POST", "/login", {"email": email, "password": password,
                                               "csrf_token": token}, page.session_cookie)
        if done.status != 302 or not done.session_cookie:
            raise HttpError(f"login failed: HTTP {done.status}")
        self.cookie = done.session_cookie

    def send_form(self, campaign_id: int) -> SendForm:
        """Open the campaign page: its CSRF token and the one-time key of its button."""
        page = self.request("GET", f"/campaigns/{campaign_id}", cookie=self.cookie)
        if page.status != 200:
            raise HttpError(f"campaign page: HTTP {page.status}")
        if page.session_cookie:  # the page put a fresh CSRF secret in the session: a browser keeps it
            self.cookie = page.session_cookie
        return SendForm(_find(_CSRF, page.body, "no csrf_token"), _find(_KEY, page.body, "no send key"))

    def press_send(self, campaign_id: int, form: SendForm) -> tuple[int, list[str]]:
        """POST the button; (HTTP status, categories of the flashes it set)."""
        resp = self.request("POST", f"/campaigns/{campaign_id}/send",
                            {"csrf_token": form.csrf_token, "key": form.key}, self.cookie)
        return resp.status, self._flash_categories(resp.session_cookie)

    def change_status(self, campaign_id: int, action: str) -> bool:
        """POST pause or resume with a fresh CSRF token; whether it was done ("ok" flash)."""
        form = self.send_form(campaign_id)
        resp = self.request("POST", f"/campaigns/{campaign_id}/{action}",
                            {"csrf_token": form.csrf_token}, self.cookie)
        return resp.status == 302 and "ok" in self._flash_categories(resp.session_cookie)

    def _flash_categories(self, cookie: str | None) -> list[str]:
        if not cookie:
            return []
        session = self._load_session(cookie)
        return [category for category, _ in session.get("_flashes", [])]


def _find(pattern: re.Pattern, text: str, error: str) -> str:
    found = pattern.search(text)
    if not found:
        raise HttpError(error)
    return found[1]


def _session_cookie(header: str | None) -> str | None:
    if not header:
        return None
    cookie = SimpleCookie()
    cookie.load(header)
    morsel = cookie.get("session")
    return morsel.value if morsel else None
