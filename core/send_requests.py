""""Send now" requests: the button records one, the scheduler lease holder carries it out.

The click never sends in the web worker (gunicorn may kill it mid-send, and a slow SMTP
server held the page for the whole batch). It records a `send_request` row keyed by the
form's one-time key; the process holding the scheduler lease picks it up, sends one batch
with that key (`Trigger.BUTTON`, fenced by the lease) and writes how it ended. The page
reads the progress from here. Contracts, per function:

- record: one row per key, whatever the number of POSTs (the UNIQUE key decides).
- pick: one picker per request (a conditional UPDATE confirmed by rowcount).
- finish / abandon_stale: the first ending wins; a later one changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from models import Campaign, Lead, SendLog, SendRequest, SendStatus, Trigger
from storage.database import immediate

_request = SendRequest.__table__
_log = SendLog.__table__
INTERRUPTED = "interrupted"  # outcome of a request whose sending process died mid-batch
MAX_ROWS = 500  # per-lead rows a progress answer lists (a batch is rarely larger)


def record(engine: Engine, campaign_id: int, key: str, who: str, now: datetime) -> int:
    """Record a request for `key` and return its id; a repeated key returns the first one's id."""
    try:
        with immediate(engine) as conn:
            # Under BEGIN IMMEDIATE the read and the insert cannot interleave with another
            # POST of the same key; the UNIQUE key still decides on a database without it.
            found = _by_key(conn, key)
            if found is not None:
                return found
            return conn.execute(insert(_request).values(
                key=key, campaign_id=campaign_id, requested_by=who[:320], created_at=now)
                .returning(_request.c.id)).scalar_one()
    except IntegrityError:
        with engine.connect() as conn:
            found = _by_key(conn, key)
        if found is None:
            raise  # not the key: the campaign does not exist
        return found


def _by_key(conn: Connection, key: str) -> int | None:
    return conn.execute(select(_request.c.id).where(_request.c.key == key)).scalar()


def open_requests(conn: Connection) -> list[Any]:
    """Requests nobody has picked yet, oldest first (id, campaign_id, key)."""
    return conn.execute(select(_request.c.id, _request.c.campaign_id, _request.c.key)
                        .where(_request.c.finished_at.is_(None), _request.c.picked_at.is_(None))
                        .order_by(_request.c.id)).all()


def unfinished(conn: Connection) -> bool:
    """Whether any request is waiting or being carried out (a cheap read for the poll)."""
    query = select(_request.c.id).where(_request.c.finished_at.is_(None)).limit(1)
    return conn.execute(query).first() is not None


def pick(conn: Connection, request_id: int, now: datetime) -> bool:
    """Mark a request taken by this process; False if someone picked it first."""
    return conn.execute(update(_request).where(_request.c.id == request_id,
                                               _request.c.picked_at.is_(None))
                        .values(picked_at=now)).rowcount == 1


def finish(engine: Engine, request_id: int, sent: int, outcome: str, now: datetime) -> bool:
    """Record how a picked request ended; False if it had ended already (abandoned meanwhile)."""
    with immediate(engine) as conn:
        return conn.execute(update(_request).where(_request.c.id == request_id,
                                                   _request.c.finished_at.is_(None))
                            .values(finished_at=now, sent=sent, outcome=outcome[:1000])).rowcount == 1


def abandon_stale(engine: Engine, older_than: datetime, now: datetime) -> int:
    """End requests picked before `older_than` and never finished as "interrupted"; how many.

    Their process died or lost the lease mid-batch. Nothing is sent again for them: the
    one-time key was consumed by the batch's first claim (button_press), and a claim the
    dead process left `sending` becomes `unknown` for a person to decide (sender.recover).
    """
    with immediate(engine) as conn:
        return conn.execute(update(_request).where(
            _request.c.picked_at.is_not(None), _request.c.picked_at < older_than,
            _request.c.finished_at.is_(None)).values(finished_at=now, outcome=INTERRUPTED)).rowcount


def state_of(picked_at: datetime | None, finished_at: datetime | None) -> str:
    """waiting (nobody picked it), sending, or done."""
    return "done" if finished_at is not None else "sending" if picked_at is not None else "waiting"


def progress(conn: Connection, request_id: int) -> dict[str, Any] | None:
    """Where a request stands: state, sent so far of the batch size, and each lead as it goes."""
    row = conn.execute(select(_request, Campaign.batch_size, Campaign.timezone)
                       .join(Campaign, Campaign.id == _request.c.campaign_id)
                       .where(_request.c.id == request_id)).first()
    if row is None:
        return None
    leads = _lead_rows(conn, row) if row.picked_at is not None else []
    state = state_of(row.picked_at, row.finished_at)
    counted = sum(1 for lead in leads if lead["status"] == SendStatus.SENT)
    # An abandoned request never learnt its count: what its rows say is the truth.
    sent = row.sent if state == "done" and row.outcome != INTERRUPTED else counted
    return {"id": row.id, "campaign_id": row.campaign_id, "state": state, "sent": sent,
            "batch_size": row.batch_size, "outcome": row.outcome, "requested_by": row.requested_by,
            "created_at": row.created_at, "picked_at": row.picked_at, "finished_at": row.finished_at,
            "timezone": row.timezone, "rows": leads}


def _lead_rows(conn: Connection, request: Any) -> list[dict[str, Any]]:
    """The campaign's button claims from the pick on (until the finish): this request's sends.

    Requests are carried out one at a time by the lease holder, so no other button batch
    of the campaign claims inside that period.
    """
    period = [_log.c.claimed_at >= request.picked_at]
    if request.finished_at is not None:
        period.append(_log.c.claimed_at <= request.finished_at)
    rows = conn.execute(select(Lead.email, _log.c.status, _log.c.claimed_at, _log.c.sent_at)
                        .join(Lead, Lead.id == _log.c.lead_id)
                        .where(and_(_log.c.campaign_id == request.campaign_id,
                                    _log.c.trigger == Trigger.BUTTON, *period))
                        .order_by(_log.c.claimed_at, _log.c.id).limit(MAX_ROWS)).all()
    return [{"email": r.email, "status": r.status, "at": r.sent_at or r.claimed_at} for r in rows]


def latest_open(conn: Connection, campaign_id: int) -> int | None:
    """The newest unfinished request of a campaign, so a reloaded page keeps showing it."""
    return conn.execute(select(func.max(_request.c.id)).where(
        _request.c.campaign_id == campaign_id, _request.c.finished_at.is_(None))).scalar()
