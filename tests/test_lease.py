"""The scheduler lease: one holder, epochs that only grow, dead holders replaced at once."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from delivery.lease import HOST, Lease, acquire, fence, release
from helpers import make_campaign
from storage.database import immediate

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 25, 10, 0, 0)


def at(offset: int) -> datetime:
    """A moment `offset` s after NOW: logical time injected into the code, not a clock."""
    return NOW + timedelta(seconds=offset)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_first_taker_gets_epoch_one_and_renews_without_a_new_epoch(engine):
    assert acquire(engine, "a", NOW, 10) == Lease("a", 1)
    assert acquire(engine, "a", at(5), 10) == Lease("a", 1)


def test_a_live_holder_keeps_the_lease_until_it_expires(engine):
    holder = f"{HOST}:1:x"  # pid 1 is always alive
    acquire(engine, holder, NOW, 10)
    assert acquire(engine, "b", at(9), 10) is None
    assert acquire(engine, "b", at(10), 10) == Lease("b", 2)


def test_a_holder_on_this_host_whose_pid_is_gone_is_replaced_at_once(engine):
    acquire(engine, f"{HOST}:{dead_pid()}:x", NOW, 60)
    assert acquire(engine, "b", at(1), 60) == Lease("b", 2)


def test_a_holder_on_another_host_is_waited_out(engine):
    acquire(engine, f"elsewhere:{dead_pid()}:x", NOW, 60)
    assert acquire(engine, "b", at(1), 60) is None


def test_release_lets_the_next_process_in_with_a_new_epoch(engine):
    lease = acquire(engine, "a", NOW, 60)
    release(engine, lease, NOW)
    assert acquire(engine, "b", NOW, 60) == Lease("b", 2)


def test_fence_rejects_an_old_epoch_and_an_expired_lease(engine):
    old = acquire(engine, "a", NOW, 10)
    with immediate(engine) as conn:
        assert fence(conn, old, at(1), 10)
    new = acquire(engine, "b", at(12), 10)
    with immediate(engine) as conn:
        assert not fence(conn, old, at(12), 10)
        assert fence(conn, new, at(12), 10)
        assert not fence(conn, new, at(30), 10)  # expired


def test_only_the_holder_ticks(app, engine, smtp):
    from scheduler import Ticker

    make_campaign(engine, 3)
    first, second = Ticker(app), Ticker(app)
    assert first.tick() is not None
    assert second.tick() is None
    first.release()
    assert second.tick() is not None
    second.release()
    assert sum(smtp.recorder.received.values()) == 2


def test_lease_must_outlive_a_tick(config):
    import pytest

    from app import create_app

    with pytest.raises(ValueError, match="LEASE_SECONDS"):
        create_app({**config, "TICK_SECONDS": 60, "LEASE_SECONDS": 30})
