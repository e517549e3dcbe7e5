"""The suppression list: addresses that must never be mailed again."""

from __future__ import annotations

import csv
import io
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Connection

from core import importer
from models import Suppression
from storage.database import immediate


def suppress(conn: Connection, email: str, reason: str, detail: str, now: datetime) -> bool:
    """Add a normalized address; False if it was there already. Claims skip it from now on."""
    return conn.execute(insert(Suppression.__table__).values(
        email=email.strip().lower(), reason=reason, detail=detail[:500], created_at=now)
        .on_conflict_do_nothing(index_elements=["email"])).rowcount == 1


def import_csv(engine: Engine, data: bytes, now: datetime) -> tuple[int, list[tuple[int, str]]]:
    """Suppress every address in a CSV (its email column, else its first); (added, rejected).

    A header row is optional: a first row whose cell is an address is data, not a header.
    """
    sniffed = importer.sniff(data)  # raises CsvImportError for unreadable files
    folded = [h.strip().lower() for h in sniffed.header]
    named = next((i for i, h in enumerate(folded) if h in ("email", "e-mail", "mail", "adres email")), None)
    column = 0 if named is None else named
    reader = csv.reader(io.StringIO(data.decode(sniffed.encoding), newline=""), delimiter=sniffed.delimiter)
    added, rejected, line = 0, [], 1
    with immediate(engine) as conn:
        for index, cells in enumerate(reader):
            start, line = line, reader.line_num + 1  # a quoted cell may span lines
            if (index == 0 and named is not None) or not any(c.strip() for c in cells):
                continue
            try:
                email = importer.check_address(cells[column] if column < len(cells) else "")
            except ValueError as exc:
                if index > 0:  # an unnamed first row that is not an address was a header
                    rejected.append((start, str(exc)))
                continue
            added += suppress(conn, email, "manual", "imported from CSV", now)
    return added, rejected
