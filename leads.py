"""Leads: address normalization, a basic CSV import, and enrollment into campaigns.

A lead's variant is chosen once, at enrollment, from a hash of (campaign, email): the
same lead always lands on the same letter, and the choice is stored, so it can only
ever receive that one variant.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Engine, select
from sqlalchemy.dialects.sqlite import insert

from database import immediate
from models import CampaignLead, Lead, Variant

_HEADER_ALIASES = {
    "email": {"email", "e-mail", "mail", "adres email", "adres e-mail"},
    "first_name": {"first_name", "firstname", "first name", "imie", "imię"},
    "last_name": {"last_name", "lastname", "last name", "nazwisko"},
    "company": {"company", "firma", "organization"},
    "tags": {"tags", "tagi"},
}


def normalize_email(raw: str) -> str:
    """Trimmed and lower-cased: the form in which addresses are unique."""
    return raw.strip().lower()


def check_email(raw: str) -> str:
    """The normalized address, or EmailNotValidError with a reason (syntax only)."""
    address = normalize_email(raw)
    validate_email(address, check_deliverability=False)
    return address


@dataclass
class ImportReport:
    imported: int = 0
    merged: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    lead_ids: list[int] = field(default_factory=list)


def decode(data: bytes) -> str:
    """UTF-8 (with or without BOM), else Windows-1250 as a Polish Excel writes it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1250")


def _column(header: str) -> str:
    key = header.strip().lower()
    for name, aliases in _HEADER_ALIASES.items():
        if key in aliases:
            return name
    return header.strip()


def read_rows(text: str, report: ImportReport) -> list[dict]:
    """Parse CSV text into lead dicts; bad rows go to report.rejected with their line."""
    sample = text[:4096]
    delimiter = ";" if sample.count(";") > sample.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [_column(h) for h in next(reader, [])]
    if "email" not in header:
        report.rejected.append((1, "no email column in the header"))
        return []
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        row = dict(zip(header, values, strict=False))
        try:
            row["email"] = check_email(row.get("email", ""))
        except EmailNotValidError as exc:
            report.rejected.append((reader.line_num, f"invalid email {row.get('email', '')!r}: {exc}"))
            continue
        rows.append(row)
    return rows


def import_leads(engine: Engine, data: bytes) -> ImportReport:
    """Insert or merge leads from CSV bytes; good rows go in, bad ones are reported."""
    report = ImportReport()
    rows = read_rows(decode(data), report)
    known = ("email", "first_name", "last_name", "company", "tags")
    with immediate(engine) as conn:
        for row in rows:
            values = {k: row.get(k, "").strip() for k in known}
            values["fields"] = {k: v for k, v in row.items() if k not in known and k}
            existing = conn.execute(select(Lead.id).where(Lead.email == values["email"])).scalar()
            if existing is None:
                lead_id = conn.execute(insert(Lead.__table__).values(**values)).inserted_primary_key[0]
                report.imported += 1
            else:
                # Merge: a later row fills in what is given and keeps what is not.
                update = {k: v for k, v in values.items() if v and k != "email"}
                if update:
                    conn.execute(Lead.__table__.update().where(Lead.id == existing).values(**update))
                lead_id = existing
                report.merged += 1
            report.lead_ids.append(lead_id)
    return report


def pick_variant(weights: list[tuple[str, int]], campaign_id: int, email: str) -> str:
    """Deterministic weighted choice of a variant letter for one lead in one campaign."""
    total = sum(w for _, w in weights if w > 0)
    if total == 0:
        raise ValueError("the campaign has no variant with a positive weight")
    digest = hashlib.sha256(f"{campaign_id}:{email}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for letter, weight in weights:
        if weight > 0 and point < weight:
            return letter
        point -= max(weight, 0)
    raise AssertionError("unreachable")


def enroll(engine: Engine, campaign_id: int, lead_ids: Iterable[int]) -> int:
    """Enroll leads (once each; re-enrolling is a no-op); returns how many were new."""
    added = 0
    with immediate(engine) as conn:
        weights = [(v.letter, v.weight) for v in conn.execute(
            select(Variant.letter, Variant.weight).where(Variant.campaign_id == campaign_id)
            .order_by(Variant.letter))]
        for lead_id in lead_ids:
            email = conn.execute(select(Lead.email).where(Lead.id == lead_id)).scalar_one()
            result = conn.execute(insert(CampaignLead.__table__).values(
                campaign_id=campaign_id, lead_id=lead_id,
                variant_letter=pick_variant(weights, campaign_id, email),
            ).on_conflict_do_nothing(index_elements=["campaign_id", "lead_id"]))
            added += result.rowcount
    return added
