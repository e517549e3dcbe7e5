"""Building campaigns for tests through the same functions the CLI uses."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from core import campaigns, importer, leads
from models import SendLog
from storage.database import immediate
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
