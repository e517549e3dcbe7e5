"""The suppression list: addresses that must never be mailed again."""

from __future__ import annotations

import csv
import io
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Connection

import importer
from database import immediate
from models import Suppression


def suppress(conn: Connection, email: str, reason: str, detail: str, now: datetime) -> bool:
    """Add a normalized address; False if it was there already. Claims skip it from now on."""
    return conn.execute(insert(Suppression.__table__).values(
        email=email.strip().lower(), reason=reason, detail=detail[:500], created_at=now)
        .on_conflict_do_nothing(index_elements=["email"])).rowcount == 1


def import_csv(engine: Engine, data: bytes, now: datetime) -> tuple[int, list[tuple[int, str]]]:
    """Suppress every address in a CSV (its email column, else its first); (added, rejected)."""
    sniffed = importer.sniff(data)  # raises CsvImportError for unreadable files
    folded = [h.strip().lower() for h in sniffed.header]
    column = next((i for i, h in enumerate(folded) if h in ("email", "e-mail", "mail")), 0)
    reader = csv.reader(io.StringIO(data.decode(sniffed.encoding)), delimiter=sniffed.delimiter)
    next(reader, None)
    added, rejected = 0, []
    with immediate(engine) as conn:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            try:
                email = importer.check_address(cells[column] if column < len(cells) else "")
            except ValueError as exc:
                rejected.append((reader.line_num, str(exc)))
                continue
            added += suppress(conn, email, "manual", "imported from CSV", now)
    return added, rejected
