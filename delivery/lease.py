"""The scheduler lease: one row in the database decides which process may tick.

Every process may run a scheduler (reloader, gunicorn workers, cron); only the holder of
the `scheduler` row claims. Taking the lease over from someone else increments `epoch`,
the fencing token: each scheduler claim re-checks holder and epoch inside its own
BEGIN IMMEDIATE transaction, so a holder that was frozen past its expiry sends nothing
when it wakes (it finds a newer epoch or another holder).

The same module says who is still *sending*: each process has a random identity made at
start (`worker_id`, recorded on every row it claims), and while one of its claims lasts
longer than HEARTBEAT_SECONDS a daemon thread writes a heartbeat for that claim
(claim_heartbeat). A pid check alone cannot say a process is gone for sure (pids are
reused, a frozen or remote process escapes it); a fresh heartbeat says it is not.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, and_, delete, insert, select, update
from sqlalchemy.engine import Connection

from models import ClaimHeartbeat, SchedulerLease, SendLog
from storage.database import immediate, is_postgres
from storage.timeutil import utcnow

LEASE_NAME = "scheduler"
_lease = SchedulerLease.__table__
_beat = ClaimHeartbeat.__table__
# This process's host in its identity: a holder on another host cannot be pid-checked, so
# its lease must run out first. SENDONCE_HOST overrides the name (hosts or containers that
# share one; the tests' "two hosts" on one machine).
HOST = os.environ.get("SENDONCE_HOST") or socket.gethostname()
log = logging.getLogger(__name__)
_identity: tuple[int, str] | None = None


@dataclass(frozen=True)
class Lease:
    holder: str
    epoch: int


def worker_id() -> str:
    """host:pid:random, made once per process, recorded on every send_log row it claims.

    The random part makes it unique even when a pid is reused after a restart; a forked
    child (a gunicorn worker) gets an identity of its own because its pid differs.
    """
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:
        _identity = (pid, f"{HOST}:{pid}:{secrets.token_hex(4)}")
    return _identity[1]


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
        # FOR UPDATE: on PostgreSQL a take-over waits for the claims in flight (FOR SHARE).
        row = conn.execute(select(_lease).where(_lease.c.name == LEASE_NAME).with_for_update()).first()
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
    """Inside a claim transaction: is `lease` still current? Extends it if so.

    PostgreSQL: an UPDATE would lock the one lease row for the rest of the claim and make
    every claim queue behind it again. There a claim reads the row FOR SHARE (a take-over
    waits for the claims in flight, and they for it), and extends it only when it is past
    half its time and no other claim holds it (FOR UPDATE SKIP LOCKED: never a wait, never
    a deadlock); the holder's own ticks renew it too (acquire).
    """
    if is_postgres(conn):
        return _fence_shared(conn, lease, now, seconds)
    result = conn.execute(
        update(_lease)
        .where(_lease.c.name == LEASE_NAME, _lease.c.holder == lease.holder,
               _lease.c.epoch == lease.epoch, _lease.c.expires_at > now)
        .values(heartbeat_at=now, expires_at=now + timedelta(seconds=seconds))
    )
    return result.rowcount == 1


def _fence_shared(conn: Connection, lease: Lease, now: datetime, seconds: float) -> bool:
    ours = (_lease.c.name == LEASE_NAME, _lease.c.holder == lease.holder, _lease.c.epoch == lease.epoch,
            _lease.c.expires_at > now)
    late = _lease.c.expires_at < now + timedelta(seconds=seconds / 2)
    if conn.execute(select(_lease.c.name).where(*ours, late).with_for_update(skip_locked=True)).first():
        conn.execute(update(_lease).where(*ours)
                     .values(heartbeat_at=now, expires_at=now + timedelta(seconds=seconds)))
    return conn.execute(select(_lease.c.name).where(*ours).with_for_update(read=True)).first() is not None


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


# --- claims in flight and their heartbeats -----------------------------------------


@dataclass(frozen=True)
class InFlight:
    """One claim this process is working on, as the claim token names it."""

    engine: Engine
    send_log_id: int
    worker: str
    attempts: int
    every: float  # seconds between two heartbeats
    started: float  # time.monotonic() at the claim
    vouch_until: float  # monotonic; past it the claim is not vouched for (a stuck thread)


_flying: dict[int, InFlight] = {}
_wake = threading.Condition()
_beater_pid: int | None = None


def _forget_after_fork() -> None:
    # A forked child (a gunicorn worker) inherits neither the parent's beating thread nor
    # its claims; a lock the parent's thread held at the fork would stay held forever.
    global _wake, _beater_pid
    _wake, _beater_pid = threading.Condition(), None
    _flying.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def track(claim: InFlight) -> None:
    """Start vouching for a claim until `untrack`; beats begin once it outlasts `every`."""
    global _beater_pid
    with _wake:
        idle = not _flying
        _flying[claim.send_log_id] = claim
        if _beater_pid != os.getpid():  # none yet, or we are a forked child without it
            _beater_pid = os.getpid()
            threading.Thread(target=_beat_forever, name="claim-heartbeat", daemon=True).start()
        elif idle:
            # Only an idle thread waits without a timeout. A busy one wakes within `every`
            # anyway, soon enough for a claim that needs its first beat only after `every`
            # (a beat is stale after 3 x every); a wake-up per message cost a thread switch.
            _wake.notify()


def untrack(send_log_id: int) -> None:
    """The claim's outcome is stored (or given up): stop vouching for it."""
    with _wake:
        _flying.pop(send_log_id, None)


def _beat_forever() -> None:
    # A daemon thread: it dies with the process, so a killed or frozen process stops
    # beating, which is exactly what the sweep and a person's decision look for.
    while True:
        with _wake:
            every = min((c.every for c in _flying.values()), default=None)
            _wake.wait(timeout=every)
            now = time.monotonic()
            due = [c for c in _flying.values() if c.started + c.every <= now < c.vouch_until]
        for engine in {c.engine for c in due}:
            try:
                beat(engine, [c for c in due if c.engine is engine], utcnow())
            except Exception:  # noqa: BLE001 - a missed beat only makes the claim look older
                log.exception("claim heartbeat failed")


def beat(engine: Engine, claims: list[InFlight], now: datetime) -> None:
    """Write one heartbeat for each claim (one BEGIN IMMEDIATE transaction)."""
    with immediate(engine) as conn:
        for c in claims:
            token = {"worker": c.worker, "attempts": c.attempts, "beat_at": now}
            done = conn.execute(update(_beat).where(_beat.c.send_log_id == c.send_log_id).values(**token))
            if done.rowcount == 0:
                conn.execute(insert(_beat).values(send_log_id=c.send_log_id, **token))


def claim_beat():
    """A join condition on send_log: the heartbeat of the row's own claim (its token)."""
    log_table = SendLog.__table__
    return and_(_beat.c.send_log_id == log_table.c.id, _beat.c.worker == log_table.c.worker,
                _beat.c.attempts == log_table.c.attempts)


def fresh_beat(stale_after: float, now: datetime):
    """claim_beat, only when newer than `stale_after` seconds before `now` (for an outer
    join: beat_at is NULL otherwise)."""
    return and_(claim_beat(), _beat.c.beat_at > now - timedelta(seconds=stale_after))


def prune_beats(conn: Connection, older_than: datetime) -> None:
    """Drop heartbeats nobody can need any more (their claims are long decided)."""
    conn.execute(delete(_beat).where(_beat.c.beat_at < older_than))
