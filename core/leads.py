"""Leads: address normalization and enrollment (the CSV import is core/importer.py).

A lead's variant is chosen once, at enrollment, from a hash of (campaign, email): the
same lead always lands on the same letter, and the choice is stored, so it can only
ever receive that one variant.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from email_validator import validate_email
from sqlalchemy import Connection, Engine, delete, func, select, update

from models import CampaignLead, EnrollmentState, Lead, Suppression, Variant, lead_search_text
from storage.database import immediate, insert_for
from storage.timeutil import utcnow


def normalize_email(raw: str) -> str:
    """Trimmed and lower-cased: the form in which addresses are unique."""
    return raw.strip().lower()


def check_email(raw: str) -> str:
    """The normalized address, or EmailNotValidError with a reason (syntax only)."""
    address = normalize_email(raw)
    validate_email(address, check_deliverability=False)
    return address


def pick_variant(weights: list[tuple[str, int]], campaign_id: int, email: str, step: int = 1) -> str:
    """Deterministic weighted choice of a variant letter for one lead in one campaign (and step)."""
    total = sum(w for _, w in weights if w > 0)
    if total == 0:
        raise ValueError("the campaign has no variant with a positive weight")
    key = f"{campaign_id}:{email}" if step == 1 else f"{campaign_id}:{email}:{step}"  # step 1 as before #17
    digest = hashlib.sha256(key.encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for letter, weight in weights:
        if weight > 0 and point < weight:
            return letter
        point -= max(weight, 0)
    raise AssertionError("unreachable")


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def enroll(engine: Engine, campaign_id: int, lead_ids: Iterable[int]) -> int:
    """Enroll leads (once each; re-enrolling is a no-op); returns how many were new.

    Addresses are read and variants chosen before the write lock is taken; the write is
    then a few executemany inserts (100,000 leads in seconds, not minutes).
    """
    ids = list(dict.fromkeys(lead_ids))
    with engine.connect() as conn:
        weights = [(v.letter, v.weight) for v in conn.execute(
            select(Variant.letter, Variant.weight)
            .where(Variant.campaign_id == campaign_id, Variant.step == 1)
            .order_by(Variant.letter))]
        emails: dict[int, str] = {}
        for chunk in _chunks(ids, 500):
            emails.update(conn.execute(select(Lead.id, Lead.email).where(Lead.id.in_(chunk))).all())
    now = utcnow()
    rows = [{"campaign_id": campaign_id, "lead_id": lead_id, "state": EnrollmentState.PENDING,
             "enrolled_at": now, "variant_letter": pick_variant(weights, campaign_id, emails[lead_id])}
            for lead_id in ids]
    table = CampaignLead.__table__
    count = select(func.count()).select_from(table).where(table.c.campaign_id == campaign_id)
    with immediate(engine) as conn:
        before = conn.execute(count).scalar_one()
        for chunk in _chunks(rows, 5000):
            conn.execute(insert_for(conn, table)
                         .on_conflict_do_nothing(index_elements=["campaign_id", "lead_id"]), chunk)
        return conn.execute(count).scalar_one() - before


def field_counts(engine: Engine, campaign_id: int) -> dict[str, int]:
    """Each custom field the campaign's enrolled leads have, with how many have it, most common first."""
    counts: Counter[str] = Counter()
    with engine.connect() as conn:
        for fields in conn.execute(select(Lead.fields).join(CampaignLead, CampaignLead.lead_id == Lead.id)
                                   .where(CampaignLead.campaign_id == campaign_id)).scalars():
            # Only names a template can write as {{ name }}; others need fields["..."].
            counts.update(key for key, value in (fields or {}).items() if key.isidentifier())
    return dict(counts.most_common())


ERASED_PREFIX = "sha256:"


def erased_key(address: str) -> str:
    """What an erased address leaves behind: the sha256 of its normalized form, never the address."""
    return ERASED_PREFIX + hashlib.sha256(normalize_email(address).encode()).hexdigest()


def update_lead(engine: Engine, lead_id: int, *, first_name: str, last_name: str, company: str,
                tags: str) -> bool:
    """Change a lead's names, company and tags (its address is its identity); False if gone."""
    table = Lead.__table__
    with immediate(engine) as conn:
        email = conn.execute(select(table.c.email).where(table.c.id == lead_id)).scalar()
        if email is None or email.startswith(ERASED_PREFIX):
            return False
        values = {"first_name": first_name.strip(), "last_name": last_name.strip(),
                  "company": company.strip(), "tags": ",".join(dict.fromkeys(
                      filter(None, map(str.strip, tags.replace(";", ",").split(",")))))}
        conn.execute(update(table).where(table.c.id == lead_id).values(
            **values, search=lead_search_text({"email": email, **values})))
        return True


def unenroll(engine: Engine, campaign_id: int, lead_id: int) -> bool:
    """Take a lead out of a campaign before it is sent: its pending enrollment becomes `skipped`.

    Only a pending one: a claim moves the row to `sending` in its own write transaction, so
    this conditional update and a claim cannot both win. False when it was not pending.
    """
    table = CampaignLead.__table__
    with immediate(engine) as conn:
        return conn.execute(update(table).where(
            table.c.campaign_id == campaign_id, table.c.lead_id == lead_id,
            table.c.state == EnrollmentState.PENDING).values(state=EnrollmentState.SKIPPED)).rowcount == 1


def erase(engine: Engine, lead_id: int, now: datetime) -> bool:
    """GDPR/RODO erasure: anonymise the lead in place, keep only the sha256 of its address.

    The row stays (with the address replaced by its hash), so the send history keeps its
    counts; its pending enrollments are skipped; the suppression list holds the same hash,
    so the claim's suppression check (lead.email = suppression.email) still matches this
    row, and the importer refuses the address if it comes back. False if no such lead.
    """
    table, suppression = Lead.__table__, Suppression.__table__
    with immediate(engine) as conn:
        email = conn.execute(select(table.c.email).where(table.c.id == lead_id)).scalar()
        if email is None:
            return False
        key = email if email.startswith(ERASED_PREFIX) else erased_key(email)
        conn.execute(update(CampaignLead.__table__).where(
            CampaignLead.lead_id == lead_id, CampaignLead.state == EnrollmentState.PENDING)
            .values(state=EnrollmentState.SKIPPED))
        conn.execute(delete(suppression).where(suppression.c.email == email))
        conn.execute(insert_for(conn, suppression)
                     .values(email=key, reason="erased", detail="", created_at=now)
                     .on_conflict_do_nothing(index_elements=["email"]))
        conn.execute(update(table).where(table.c.id == lead_id).values(
            email=key, first_name="", last_name="", company="", tags="", fields={}, search=""))
        return True


def erased_keys(conn: Connection) -> set[str]:
    """The sha256 keys of every erased address."""
    suppression = Suppression.__table__
    return set(conn.execute(select(suppression.c.email)
                            .where(suppression.c.email.startswith(ERASED_PREFIX))).scalars())
