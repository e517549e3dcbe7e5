"""The suppression list: addresses that must never be mailed again."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Connection

from models import Suppression


def suppress(conn: Connection, email: str, reason: str, detail: str, now: datetime) -> None:
    """Add a normalized address (no-op if it is there already); claims skip it from now on."""
    conn.execute(insert(Suppression.__table__).values(
        email=email.strip().lower(), reason=reason, detail=detail[:500], created_at=now)
        .on_conflict_do_nothing(index_elements=["email"]))
