"""The scheduler lease: one row in the database decides which process may tick.

Every process may run a scheduler (reloader, gunicorn workers, cron); only the holder of
the `scheduler` row claims. Taking the lease over from someone else increments `epoch`,
the fencing token: each scheduler claim re-checks holder and epoch inside its own
BEGIN IMMEDIATE transaction, so a holder that was frozen past its expiry sends nothing
when it wakes (it finds a newer epoch or another holder).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection

from models import SchedulerLease
from storage.database import immediate

LEASE_NAME = "scheduler"
_lease = SchedulerLease.__table__
HOST = socket.gethostname()


@dataclass(frozen=True)
class Lease:
    holder: str
    epoch: int


def worker_id() -> str:
    """host:pid of this process, as recorded on every send_log row it claims."""
    return f"{HOST}:{os.getpid()}"


def new_holder_id() -> str:
    """host:pid:random: unique even if a pid is reused after a restart."""
    return f"{worker_id()}:{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def is_dead_here(worker: str) -> bool:
    """True only when `worker` (host:pid[:…]) ran on this host and its pid is gone."""
    parts = worker.split(":")
    if len(parts) < 2 or parts[0] != HOST or not parts[1].isdigit():
        return False
    return not pid_alive(int(parts[1]))


def acquire(engine: Engine, holder: str, now: datetime, seconds: float) -> Lease | None:
    """Renew our lease or take a free, expired or orphaned one; None if another holds it."""
    expires = now + timedelta(seconds=seconds)
    with immediate(engine) as conn:
        row = conn.execute(select(_lease).where(_lease.c.name == LEASE_NAME)).first()
        if row is None:
            conn.execute(insert(_lease).values(name=LEASE_NAME, holder=holder, epoch=1,
                                               heartbeat_at=now, expires_at=expires))
            return Lease(holder, 1)
        if row.holder == holder:
            _set(conn, holder=holder, epoch=row.epoch, heartbeat_at=now, expires_at=expires)
            return Lease(holder, row.epoch)
        taken = row.holder and row.expires_at > now and not is_dead_here(row.holder)
        if taken:
            return None
        _set(conn, holder=holder, epoch=row.epoch + 1, heartbeat_at=now, expires_at=expires)
        return Lease(holder, row.epoch + 1)


def _set(conn: Connection, **values) -> None:
    conn.execute(update(_lease).where(_lease.c.name == LEASE_NAME).values(**values))


def fence(conn: Connection, lease: Lease, now: datetime, seconds: float) -> bool:
    """Inside a claim transaction: is `lease` still current? Extends it if so."""
    result = conn.execute(
        update(_lease)
        .where(_lease.c.name == LEASE_NAME, _lease.c.holder == lease.holder,
               _lease.c.epoch == lease.epoch, _lease.c.expires_at > now)
        .values(heartbeat_at=now, expires_at=now + timedelta(seconds=seconds))
    )
    return result.rowcount == 1


def is_current(conn: Connection, lease: Lease, now: datetime) -> bool:
    """A read-only check that `lease` is still held (used right before SMTP)."""
    row = conn.execute(select(_lease).where(_lease.c.name == LEASE_NAME)).first()
    return bool(row and row.holder == lease.holder and row.epoch == lease.epoch and row.expires_at > now)


def release(engine: Engine, lease: Lease, now: datetime) -> None:
    """Give the lease up on clean shutdown so the next process need not wait it out."""
    with immediate(engine) as conn:
        conn.execute(
            update(_lease)
            .where(_lease.c.name == LEASE_NAME, _lease.c.holder == lease.holder,
                   _lease.c.epoch == lease.epoch)
            .values(holder="", expires_at=now)
        )


def current(engine: Engine):
    """The lease row as it is now (for the dashboard and `healthz`), or None."""
    with engine.connect() as conn:
        return conn.execute(select(_lease).where(_lease.c.name == LEASE_NAME)).first()
