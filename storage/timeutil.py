"""Time helpers: the database stores naive UTC; time zones apply only at the edges."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Return the current time as naive UTC, the one form stored in the database."""
    return datetime.now(UTC).replace(tzinfo=None)
