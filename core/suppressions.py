"""The suppression list: addresses that must never be mailed again, and whole domains
("@example.com": a company or a competitor; checked by the claim like an address)."""

from __future__ import annotations

import re
from datetime import datetime
from itertools import chain

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from core import csvfile, importer
from models import Suppression
from storage.database import immediate, insert_for

_EMAIL_HEADERS = {csvfile.fold_header(h) for h in ("email", "e-mail", "mail", "adres email")}


def suppress(conn: Connection, email: str, reason: str, detail: str, now: datetime) -> bool:
    """Add a normalized address; False if it was there already. Claims skip it from now on."""
    return conn.execute(insert_for(conn, Suppression.__table__).values(
        email=email.strip().lower(), reason=reason, detail=detail[:500], created_at=now)
        .on_conflict_do_nothing(index_elements=["email"])
        .execution_options(preserve_rowcount=True)).rowcount == 1


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def domain_entry(text: str) -> str:
    """A domain ("firma.pl", "@firma.pl") as its suppression entry "@firma.pl"; ValueError if not one."""
    domain = text.strip().lower().removeprefix("@")
    try:  # checked in its ASCII form; kept as written, like the leads' addresses
        ascii_form = domain.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_form = ""
    if not _DOMAIN.fullmatch(ascii_form):
        raise ValueError(f"not a domain: {text.strip()!r}")
    return "@" + domain


def suppress_domain(conn: Connection, domain: str, detail: str, now: datetime) -> bool:
    """Suppress every address of a domain; False if it was there already. ValueError for a bad domain."""
    return suppress(conn, domain_entry(domain), "domain", detail, now)


def import_csv(engine: Engine, data: bytes, now: datetime) -> tuple[int, list[tuple[int, str]]]:
    """Suppress every address in a CSV (its email column, else its first); (added, rejected).

    A header row is optional: a first row whose cell is an address is data, not a header.
    """
    table = csvfile.read_table(data)  # raises CsvFileError for unreadable files
    folded = [csvfile.fold_header(h) for h in table.header]
    named = next((i for i, h in enumerate(folded) if h in _EMAIL_HEADERS), None)
    column = 0 if named is None else named
    added, rejected = 0, []
    with immediate(engine) as conn:
        # The header line is data when no column is named like an address column.
        first = [] if named is not None else [(1, 1, table.header)]
        for index, (start, _, cells) in enumerate(chain(first, table.records)):
            try:
                email = importer.check_address(cells[column] if column < len(cells) else "")
            except ValueError as exc:
                if index > 0 or named is not None:  # an unnamed first row that is not an address was a header
                    rejected.append((start, str(exc)))
                continue
            added += suppress(conn, email, "manual", "imported from CSV", now)
    return added, rejected
