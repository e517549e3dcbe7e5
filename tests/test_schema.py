"""The database itself enforces uniqueness, and every connection has our pragmas
(on PostgreSQL: our session settings)."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, inspect, text
from sqlalchemy.exc import IntegrityError

from conftest import ON_POSTGRES
from helpers import make_campaign
from models import SendLog
from storage.database import immediate

pytestmark = pytest.mark.postgres
UNIQUE = "(?i)unique"  # SQLite: "UNIQUE constraint failed"; PostgreSQL: "violates unique constraint"


def _send_log_row(campaign_id: int, lead_id: int, letter: str, step: int = 1) -> dict:
    return dict(campaign_id=campaign_id, lead_id=lead_id, variant_letter=letter, step=step,
                status="sent", trigger="cli", worker="test:1")


def test_db_rejects_second_row_for_same_campaign_lead_variant(engine):
    cid = make_campaign(engine, 1)
    with immediate(engine) as conn:
        conn.execute(insert(SendLog.__table__).values(_send_log_row(cid, 1, "A")))
    with pytest.raises(IntegrityError, match=UNIQUE), immediate(engine) as conn:
        conn.execute(insert(SendLog.__table__).values(_send_log_row(cid, 1, "A")))


def test_db_rejects_second_row_even_with_another_variant(engine):
    cid = make_campaign(engine, 1)
    with immediate(engine) as conn:
        conn.execute(insert(SendLog.__table__).values(_send_log_row(cid, 1, "A")))
    with pytest.raises(IntegrityError, match=UNIQUE), immediate(engine) as conn:
        conn.execute(insert(SendLog.__table__).values(_send_log_row(cid, 1, "B")))


def test_db_rejects_second_row_for_the_same_step_of_a_sequence(engine):
    cid = make_campaign(engine, 1)
    with immediate(engine) as conn:
        conn.execute(insert(SendLog.__table__).values(_send_log_row(cid, 1, "A", step=1)))
        conn.execute(insert(SendLog.__table__).values(_send_log_row(cid, 1, "A", step=2)))  # next step: fine
        conn.execute(insert(SendLog.__table__).values(_send_log_row(cid, 1, "B", step=3)))
    for letter in "AB":
        with pytest.raises(IntegrityError, match=UNIQUE), immediate(engine) as conn:
            conn.execute(insert(SendLog.__table__).values(_send_log_row(cid, 1, letter, step=2)))


def test_unique_index_is_declared_on_the_incidents_key(engine):
    with engine.connect() as conn:
        if ON_POSTGRES:  # PostgreSQL backs every UNIQUE constraint with a unique index
            found = inspect(conn)
            columns = {uq["name"]: uq["column_names"] for uq in found.get_unique_constraints("send_log")}
            columns.update({ix["name"]: ix["column_names"] for ix in found.get_indexes("send_log")
                            if ix["unique"]})
        else:
            columns = _sqlite_unique_indexes(conn)
    # The incident's key, per step of a sequence; and one row per (campaign, lead, step).
    assert ["campaign_id", "lead_id", "step", "variant_letter"] in columns.values()
    assert ["campaign_id", "lead_id", "step"] in columns.values()


def _sqlite_unique_indexes(conn) -> dict[str, list[str]]:
    indexes = conn.execute(text("PRAGMA index_list('send_log')")).all()
    unique = {row.name for row in indexes if row.unique}
    return {name: [c.name for c in conn.execute(text(f"PRAGMA index_info('{name}')"))] for name in unique}


@pytest.mark.skipif(ON_POSTGRES, reason="SQLite's pragmas; PostgreSQL's session settings are tested below")
def test_every_connection_has_wal_full_sync_foreign_keys_and_busy_timeout(engine):
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


@pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL's session settings")
def test_every_postgres_connection_is_utc_with_a_lock_timeout(engine):
    with engine.connect() as conn:
        assert conn.execute(text("SHOW TimeZone")).scalar() == "UTC"
        timeout = "SELECT current_setting('lock_timeout')::interval >= interval '5 s'"
        assert conn.execute(text(timeout)).scalar()
