"""Building campaigns for tests through the same functions the CLI uses; logging a client in."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select, update

from core import campaigns, importer, leads
from models import SendLog, User, db
from storage.database import immediate, write_session
from storage.timeutil import utcnow


def lead_csv(n: int, domain: str = "example.com") -> bytes:
    """CSV bytes with n distinct leads lead0000@domain …"""
    rows = ["email,first_name,last_name,company"]
    rows += [f"lead{i:04d}@{domain},First{i},Last{i},Company {i}" for i in range(n)]
    return ("\n".join(rows) + "\n").encode()


DEFAULT_BODY = "Hi {{ first_name }} from {{ company }}.\n{{ unsubscribe_url }}\n"


def make_campaign(engine, n_leads: int, *, interval: int = 0, batch_size: int = 1,
                  start: bool = True, variants: str = "AB", subject: str | None = None,
                  body: str = DEFAULT_BODY, **values) -> int:
    """A campaign with `n_leads` enrolled leads and simple variants, started by default."""
    values = {"name": f"test {n_leads}", "from_address": "team@sendonce.test", "from_name": "Team",
              **values}
    campaign_id = campaigns.create(engine, interval_seconds=interval, batch_size=batch_size, **values)
    for letter in variants:
        campaigns.add_variant(engine, campaign_id, letter,
                              subject or f"{letter}: hello {{{{ first_name }}}}", body)
    report = importer.import_leads(engine, lead_csv(n_leads))
    leads.enroll(engine, campaign_id, report.lead_ids)
    if start:
        campaigns.start(engine, campaign_id)
    return campaign_id


def make_unknown(engine, *, claimed_seconds_ago: float = 86_400) -> None:
    """Every send_log row `unknown`, as the sweep leaves a crashed claim: claimed long
    enough ago (by default) that its process can no longer be sending it."""
    with immediate(engine) as conn:
        conn.execute(update(SendLog.__table__).values(
            status="unknown", claimed_at=utcnow() - timedelta(seconds=claimed_seconds_ago)))


def serve_requests(app) -> int | None:
    """Carry out recorded "send now" requests as the sending process does, then let the lease go
    (as `flask send-due` does), so the test's later processes can take it."""
    ticker = app.extensions["sendonce_ticker"]
    try:
        return ticker.serve_requests()
    finally:
        ticker.release()


def send_key(html: bytes) -> str:
    """The one-time key of the campaign page's send button."""
    return re.search(rb'name="key" type="hidden" value="([0-9a-f]+)"', html).group(1).decode()


def csrf_token(html: bytes) -> str:
    """The CSRF token a rendered form carries."""
    return re.search(rb'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1).decode()


def log_in(app, client, email: str = "admin@example.com", password: str = "correct horse"):
    """Log `client` in as `email`, making that user first if it does not exist."""
    with app.app_context(), write_session(db.engine) as session:
        if not session.scalar(select(User).where(User.email == email)):
            user = User(email=email)
            user.set_password(password)
            session.add(user)
    token = csrf_token(client.get("/login").data)
    client.post("/login", data={"email": email, "password": password, "csrf_token": token})
    return client


def logged_in_client(app, email: str = "admin@example.com", password: str = "correct horse"):
    """A new test client of `app`, logged in as `email`."""
    return log_in(app, app.test_client(), email, password)
