"""PostgreSQL's own locking (#19): what stands in for SQLite's BEGIN IMMEDIATE there.

storage.database: every writer takes the advisory WRITE_LOCK exclusively (BEGIN
IMMEDIATE's meaning); claims take it shared and lock their campaign and mailbox rows
(lock_claim_rows). These tests hold one side open in a thread and watch the other wait
or go through. The rest of the suite (make test's `-m postgres` run) checks that the
guarantees hold with this locking: the races, the state machine, the reply reader.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from conftest import ON_POSTGRES
from delivery import lease as leases
from helpers import make_campaign
from models import Campaign, SchedulerLease
from sender import Claim, claim_next
from storage.database import CLAIM, WRITE_LOCK, immediate, is_busy, lock_claim_rows
from storage.timeutil import utcnow

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL's locking; make test's second run")]

NOW = datetime(2026, 11, 25, 10, 0, 0)  # a Wednesday, 11:00 in Warsaw


class Held:
    """A transaction held open in a thread until released: what a slow claim or writer does."""

    def __init__(self, engine, mode, campaigns=()) -> None:
        self.engine, self.mode, self.campaigns = engine, mode, list(campaigns)
        self.inside, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with immediate(self.engine, self.mode) as conn:
            lock_claim_rows(conn, self.campaigns)
            self.inside.set()
            self.done.wait(30)

    def __enter__(self) -> Held:
        self.thread.start()
        assert self.inside.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(10)


def timed(action) -> tuple[float, object]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def claim(engine, settings, campaign_id):
    return claim_next(engine, settings, campaign_id, "button", utcnow())


def test_claims_of_different_campaigns_run_in_parallel_and_of_one_campaign_queue(engine, settings):
    first, second = make_campaign(engine, 3), make_campaign(engine, 3)
    with Held(engine, CLAIM, [first]) as held:
        waited, other = timed(lambda: claim(engine, settings, second))
        assert isinstance(other, Claim) and waited < 1.0  # not behind the held claim of `first`
        same = threading.Thread(target=lambda: claim(engine, settings, first))
        same.start()
        same.join(1.0)
        assert same.is_alive()  # the same campaign's claim waits for the held one
        held.done.set()
        same.join(10)
        assert not same.is_alive()


def exclusive_write(engine, wait_ms: int) -> None:
    """What every non-claim writer's BEGIN does on PostgreSQL, giving up after `wait_ms`."""
    with engine.connect() as conn:
        with conn.begin():
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms:d}")
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITE_LOCK})


def test_a_writer_waits_for_claims_in_flight_and_claims_wait_for_a_writer(engine, settings):
    cid = make_campaign(engine, 3)
    with Held(engine, CLAIM, [cid]):
        with pytest.raises(OperationalError) as refused:  # BEGIN IMMEDIATE's meaning: it waits
            exclusive_write(engine, 300)
        assert is_busy(refused.value)  # and, past lock_timeout, is "busy" as SQLite's BUSY is
    exclusive_write(engine, 300)  # no claim in flight: at once
    other = make_campaign(engine, 3)
    with Held(engine, True):  # a person's edit, an import, a lease take-over
        blocked = threading.Thread(target=lambda: claim(engine, settings, other))
        blocked.start()
        blocked.join(1.0)
        assert blocked.is_alive()
    blocked.join(10)
    assert not blocked.is_alive()


def test_the_claim_fences_the_lease_for_share_and_a_takeover_waits(engine, settings):
    cid = make_campaign(engine, 3)
    lease = leases.acquire(engine, "holder-a:1:x", NOW, 60)
    with immediate(engine, CLAIM) as conn:
        lock_claim_rows(conn, [cid])
        assert leases.fence(conn, lease, NOW, 60)
        modes = conn.execute(text(
            "SELECT mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'scheduler_lease' AND l.pid = pg_backend_pid()")).scalars().all()
        assert "RowShareLock" in modes  # SELECT ... FOR SHARE, not an UPDATE of the row
        # A second claim fences the same lease at the same time: shared, no wait.
        with engine.connect() as other, other.begin():
            other.exec_driver_sql("SET LOCAL lock_timeout = 500")
            assert leases.fence(other, lease, NOW, 60)


def test_send_log_ids_come_from_the_sequence(engine, settings):
    cid = make_campaign(engine, 2)
    first = claim(engine, settings, cid)
    with engine.connect() as conn:
        sequence = conn.execute(text("SELECT last_value FROM send_log_id_seq")).scalar_one()
        assert conn.execute(select(Campaign.status).where(Campaign.id == cid)).scalar_one() == "active"
    assert first.send_log_id == sequence


def test_the_first_claims_of_two_campaigns_at_once_make_one_installation_id(engine, settings):
    # Found by the bench: both first claims found no installation id and inserted one; the
    # second died on the primary key. Now it waits for the first's commit and uses its id.
    import sender

    first, second = make_campaign(engine, 2), make_campaign(engine, 2)
    made, go = threading.Event(), threading.Event()
    ids: list[str] = []

    def first_claim_in_flight() -> None:
        with immediate(engine, CLAIM) as conn:
            lock_claim_rows(conn, [first])
            ids.append(sender._installation(conn))
            made.set()
            go.wait(10)

    holder = threading.Thread(target=first_claim_in_flight)
    holder.start()
    assert made.wait(10)
    racing = threading.Thread(target=lambda: ids.append(claim(engine, settings, second)))
    racing.start()
    racing.join(0.5)
    assert racing.is_alive()  # waiting on the first's uncommitted id, not failing
    go.set()
    holder.join(10)
    racing.join(10)
    installation, other = ids
    assert isinstance(other, Claim) and f".{installation}@" in other.message_id


def test_a_claim_extends_a_lease_past_half_its_time_unless_another_claim_holds_it(engine):
    lease = leases.acquire(engine, "holder-a:1:x", NOW, 60)
    late = NOW + timedelta(seconds=40)  # 20 s left of 60: past half
    with immediate(engine, CLAIM) as conn, engine.connect() as other:
        with other.begin():  # another claim in flight (early in the lease) holds the row FOR SHARE
            assert leases.fence(other, lease, NOW + timedelta(seconds=1), 60)
            conn.exec_driver_sql("SET LOCAL lock_timeout = 500")
            assert leases.fence(conn, lease, late, 60)  # no wait (SKIP LOCKED), no extension
            assert conn.execute(select(SchedulerLease.expires_at)).scalar_one() == NOW + timedelta(seconds=60)
    with immediate(engine, CLAIM) as conn:  # alone: it extends the lease
        assert leases.fence(conn, lease, late, 60)
    with engine.connect() as conn:
        assert conn.execute(select(SchedulerLease.expires_at)).scalar_one() == late + timedelta(seconds=60)
