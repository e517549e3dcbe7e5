"""The chaos itself: threads that press buttons, pause campaigns, stop leads' sequences, kill
and freeze processes.

Each actor is a thread with its own seeded random generator; all stop when the run's
stop event is set. What they did is kept for the reconciliation: button presses (by
one-time key), pauses and resumes, stops of single leads, kills and freezes (in the fleet's
journal), and
snapshots of the database (lease, campaign statuses, newest ids, new suppressions).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from chaos.fleet import FLASK, ROOT, Fleet, Journal
from chaos.http_client import AdminClient, HttpError
from chaos.store import query, rows, snapshot


class Actor(threading.Thread):
    """A daemon thread looping until `stop` is set; `pause(s)` is an interruptible sleep."""

    def __init__(self, name: str, stop: threading.Event, seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.stop = stop
        self.rng = random.Random(f"{seed}:{name}")
        self.errors: Counter[str] = Counter()

    def pause(self, seconds: float) -> bool:
        """Sleep; False if the run is stopping."""
        return not self.stop.wait(max(0.0, seconds))

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - an actor keeps going; errors are counted
                self.errors[type(exc).__name__] += 1
                self.pause(0.5)

    def step(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# --- the database, as seen from outside ----------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One consistent read (a single read transaction) of the state the checks order by.

    Its read point lies between `t0` and `t`: everything it shows had committed by `t`,
    nothing it misses had committed by `t0`. send_log and suppression ids grow in commit
    order (inserts are serialized by the write lock, rows are never deleted), so a row
    with a larger id than the snapshot's newest committed after it. On PostgreSQL claims
    and outcomes serialize on the rows of the mailboxes every campaign of the run shares
    (storage.database.lock_claim_rows; hence --mailboxes >= 1 there), and take their ids
    from the sequences under those locks: the same order.
    """

    t0: float  # before the read began
    t: float  # after it returned
    holder: str
    epoch: int
    max_log_id: int
    max_suppression_id: int
    statuses: dict[int, str]


@dataclass(frozen=True)
class Sighting:
    """A suppression as first seen, with that lead's send_log rows (id -> attempts) then."""

    snapshot: Snapshot
    attempts: dict[int, int]


class Watch(Actor):
    """Polls the lease row, campaign statuses, the newest ids and each new suppression.

    It runs from the start of the chaos to the end of the drain, so every status change,
    takeover and suppression of the run is seen by some snapshot.
    """

    def __init__(self, stop: threading.Event, seed: int, engine: Engine) -> None:
        super().__init__("watch", stop, seed)
        self.engine = engine
        self.snapshots: list[Snapshot] = []
        self.sightings: dict[int, Sighting] = {}  # suppression id -> first sight
        self._conn: Connection | None = None

    @property
    def holder(self) -> str:
        """The lease holder at the last snapshot ("" if free or unknown)."""
        return self.snapshots[-1].holder if self.snapshots else ""

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def step(self) -> None:
        self.snap()
        self.pause(0.05)

    def snap(self) -> Snapshot:
        """Take one snapshot (also called once more after the drain, for the last word)."""
        if self._conn is None:
            self._conn = self.engine.connect()
        conn = self._conn
        t0 = time.time()
        with conn.begin():  # one read snapshot for every query below (store.reader)
            lease = rows(conn, "SELECT holder, epoch FROM scheduler_lease")
            max_log = rows(conn, "SELECT coalesce(max(id), 0) FROM send_log")[0][0]
            statuses = dict(rows(conn, "SELECT id, status FROM campaign"))
            seen = max(self.sightings, default=0)
            new = rows(conn, "SELECT id, email FROM suppression WHERE id > :seen ORDER BY id", seen=seen)
            found = {sid: dict(rows(
                conn, "SELECT send_log.id, attempts FROM send_log JOIN lead ON lead.id = send_log.lead_id "
                "WHERE lead.email = :email", email=email)) for sid, email in new}
        holder, epoch = lease[0] if lease else ("", 0)
        snap = Snapshot(t0, time.time(), holder or "", int(epoch), max_log,
                        max([seen, *found]), statuses)
        self.snapshots.append(snap)
        for sid, attempts in found.items():
            self.sightings[sid] = Sighting(snap, attempts)
        return snap


# --- button presses -------------------------------------------------------------------


@dataclass(frozen=True)
class Press:
    t: float
    client: str
    campaign_id: int
    key: str
    status: int | None  # None: no HTTP answer (the worker died, or a timeout)
    categories: tuple[str, ...]
    kind: str  # single, double, reload


class Presser(Actor):
    """An admin pressing "Wyślij kampanię": single clicks, double clicks, reloaded POSTs."""

    def __init__(self, name: str, stop: threading.Event, seed: int, client: AdminClient,
                 campaign_ids: list[int], double_share: float, presses: list[Press],
                 lock: threading.Lock) -> None:
        super().__init__(name, stop, seed)
        self.client, self.campaign_ids = client, campaign_ids
        self.double_share, self.presses, self.lock = double_share, presses, lock

    def step(self) -> None:
        campaign_id = self.rng.choice(self.campaign_ids)
        try:
            form = self.client.send_form(campaign_id)
        except (OSError, HttpError) as exc:
            self.errors[f"page: {type(exc).__name__}"] += 1
            self.pause(0.5)
            return
        roll = self.rng.random()
        if roll < self.double_share:  # a double click: two POSTs with one key, at once
            threads = [threading.Thread(target=self._post, args=(campaign_id, form, "double"))
                       for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            self._post(campaign_id, form, "single")
            if roll < self.double_share + 0.1:  # F5 on the result: the same POST again
                self._post(campaign_id, form, "reload")
        self.pause(self.rng.uniform(0.2, 1.5))

    def _post(self, campaign_id: int, form, kind: str) -> None:
        status, categories = None, ()
        try:
            status, cats = self.client.press_send(campaign_id, form)
            categories = tuple(cats)
            if status != 302:
                self.errors[f"send: HTTP {status}"] += 1
        except OSError as exc:  # the worker was killed mid-request, or a timeout
            self.errors[f"send: {type(exc).__name__}"] += 1
        with self.lock:
            self.presses.append(Press(time.time(), self.name, campaign_id, form.key, status,
                                      categories, kind))


# --- stopping single leads -------------------------------------------------------------


@dataclass
class LeadStop:
    """A person's "stop" of one lead's sequence: asked at `started`, committed by `ended`.

    Read after the commit: the newest send_log id and that enrollment's rows (id -> attempts).
    A later row with a larger id is a claim after the stop; more attempts, a retry after it.
    """

    campaign_id: int
    lead_id: int
    started: float
    ended: float | None = None  # None: no answer (an error; it may not have committed)
    stopped: int = 0
    max_log_id: int = 0
    attempts: dict[int, int] | None = None


def rows_after(engine: Engine, campaign_id: int, lead_id: int) -> tuple[int, dict[int, int]]:
    """In one read: the newest send_log id, and the enrollment's send_log rows (id -> attempts)."""
    with snapshot(engine) as conn:
        newest = rows(conn, "SELECT coalesce(max(id), 0) FROM send_log")[0][0]
        found = dict(rows(conn, "SELECT id, attempts FROM send_log WHERE campaign_id = :campaign "
                                "AND lead_id = :lead", campaign=campaign_id, lead=lead_id))
    return newest, found


class Stopper(Actor):
    """Stops a random lead's sequence now and then (core.sequences.stop, as `campaign stop` does),
    preferring leads between steps; journaled."""

    def __init__(self, stop: threading.Event, seed: int, every: float, engine: Engine,
                 stop_lead: Callable[[int, int], int], journal: Journal) -> None:
        super().__init__("stopper", stop, seed)
        self.every, self.engine, self.stop_lead, self.journal = every, engine, stop_lead, journal
        self.stops: list[LeadStop] = []

    def step(self) -> None:
        if not self.pause(self.every * self.rng.uniform(0.5, 1.5)):
            return
        open_rows = query(self.engine, "SELECT campaign_id, lead_id, step FROM campaign_lead WHERE state IN "
                                       "('pending', 'sending') AND stopped_at IS NULL")
        later = [r for r in open_rows if r[2] > 1]
        pool = later if later and self.rng.random() < 0.7 else open_rows
        if not pool:
            return
        campaign_id, lead_id, step = self.rng.choice(pool)
        item = LeadStop(campaign_id, lead_id, time.time())
        self.stops.append(item)  # recorded before it is asked, like a pause
        item.stopped = self.stop_lead(campaign_id, lead_id)
        item.ended = time.time()
        item.max_log_id, item.attempts = rows_after(self.engine, campaign_id, lead_id)
        self.journal.add("stop", "lead", lead_id, f"campaign {campaign_id}, at step {step}: "
                                                  f"{item.stopped} enrollment(s) stopped")


# --- pause and resume -----------------------------------------------------------------


class Pauser(Actor):
    """Pauses a random active campaign, later resumes a paused one; by HTTP or the CLI."""

    def __init__(self, stop: threading.Event, seed: int, client: AdminClient, campaign_ids: list[int],
                 every: float, env: dict[str, str], engine: Engine) -> None:
        super().__init__("pauser", stop, seed)
        self.client, self.campaign_ids, self.every = client, campaign_ids, every
        self.env, self.engine = env, engine
        self.done: Counter[str] = Counter()
        self.changes: list[StatusChange] = []

    def statuses(self) -> dict[int, str]:
        return dict(query(self.engine, "SELECT id, status FROM campaign"))

    def step(self) -> None:
        if not self.pause(self.rng.uniform(0.5, 1.5) * self.every):
            return
        statuses = self.statuses()
        paused = [c for c in self.campaign_ids if statuses.get(c) == "paused"]
        active = [c for c in self.campaign_ids if statuses.get(c) == "active"]
        if paused and (not active or self.rng.random() < 0.7):
            self._change(self.rng.choice(paused), "resume")
        elif active:
            self._change(self.rng.choice(active), "pause")

    def _change(self, campaign_id: int, action: str) -> None:
        # Recorded before it is asked: a resume whose answer never came still counts.
        change = StatusChange(campaign_id, action, time.time())
        self.changes.append(change)
        if self.rng.random() < 0.3:
            proc = subprocess.run([*FLASK, "campaign", action, str(campaign_id)], cwd=ROOT, env=self.env,
                                  capture_output=True, text=True, timeout=120)
            ok, via = proc.returncode == 0, "cli"
        else:
            try:
                ok = self.client.change_status(campaign_id, action)
            except (OSError, HttpError):
                ok = False
            via = "http"
        change.ended, change.ok = time.time(), ok
        self.done[f"{action} {via} {'ok' if ok else 'refused/failed'}"] += 1


@dataclass
class StatusChange:
    """A pause or resume: asked at `started`, answered at `ended` (committed before it)."""

    campaign_id: int
    action: str
    started: float
    ended: float | None = None  # None: no answer (yet)
    ok: bool = False


# --- system cron, the dedicated scheduler's keeper ------------------------------------


class Cron(Actor):
    """Starts `flask send-due` every few seconds, like a crontab line."""

    def __init__(self, stop: threading.Event, seed: int, fleet: Fleet, every: float) -> None:
        super().__init__("cron", stop, seed)
        self.fleet, self.every = fleet, every

    def step(self) -> None:
        self.fleet.spawn_cron()
        self.pause(self.every * self.rng.uniform(0.7, 1.3))


class Keeper(Actor):
    """Restarts the dedicated scheduler a moment after it was killed (systemd's job)."""

    def __init__(self, stop: threading.Event, seed: int, fleet: Fleet) -> None:
        super().__init__("keeper", stop, seed)
        self.fleet = fleet

    def step(self) -> None:
        if self.fleet.scheduler_pid() is None and self.pause(self.rng.uniform(0.5, 2.0)):
            self.fleet.start_scheduler()
        self.pause(0.2)


# --- the killer and the freezer --------------------------------------------------------


class Killer(Actor):
    """SIGKILLs a random gunicorn worker, the dedicated scheduler or a send-due run."""

    def __init__(self, stop: threading.Event, seed: int, fleet: Fleet, every: float) -> None:
        super().__init__("killer", stop, seed)
        self.fleet, self.every = fleet, every

    ROLES = ("gunicorn-worker", "scheduler", "send-due")
    WEIGHTS = (5, 3, 2)

    def step(self) -> None:
        if not self.pause(self.every * self.rng.uniform(0.5, 1.5)):
            return
        first = self.rng.choices(self.ROLES, self.WEIGHTS)[0]
        # If no process of that kind runs right now, kill one of another kind: every
        # round kills something, so a run of a few rounds surely had kills.
        for role in (first, *[r for r in self.ROLES if r != first]):
            pids = self._pids(role)
            if pids and self.fleet.kill(self.rng.choice(pids), role, "chaos"):
                return

    def _pids(self, role: str) -> list[int]:
        if role == "gunicorn-worker":
            return self.fleet.gunicorn_workers()
        if role == "scheduler":
            return [p for p in [self.fleet.scheduler_pid()] if p]
        return self.fleet.cron_pids()


def write_lock_holders(db_path: str) -> set[int]:
    """Pids holding SQLite's WAL write lock on db_path now (byte 120 of the -shm file)."""
    try:
        inode = os.stat(f"{db_path}-shm").st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return set()
    holders = set()
    for line in text.splitlines():
        fields = line.split()  # 1: POSIX ADVISORY WRITE <pid> <maj:min:inode> <start> <end>
        if (len(fields) >= 8 and fields[3] == "WRITE" and fields[5].endswith(f":{inode}")
                and fields[6] == "120"):
            holders.add(int(fields[4]))
    return holders


class Freezer(Actor):
    """SIGSTOPs a process for a while, then SIGCONTs it.

    target "holder": the scheduler lease holder (often frozen past its lease: fencing);
    target "writer": whichever of our processes holds SQLite's write lock at that instant
    (everyone else's writes then wait for it, up to busy_timeout). SQLite only: PostgreSQL
    has no database-wide write lock to find in /proc/locks (run.py refuses it there).
    """

    def __init__(self, stop: threading.Event, seed: int, fleet: Fleet, watch: Watch,
                 every: float, hold: tuple[float, float], target: str = "holder") -> None:
        super().__init__("freezer", stop, seed)
        self.fleet, self.watch, self.every, self.hold = fleet, watch, every, hold
        self.target = target
        self.frozen: int | None = None
        self._lock = threading.Lock()

    def step(self) -> None:
        if not self.pause(self.every * self.rng.uniform(0.5, 1.5)):
            return
        pid = self._writer() if self.target == "writer" else self._holder()
        role = self.fleet.role_of(pid) if pid else None
        if role is None:  # not one of ours (or gone): never signal a stranger
            return
        seconds = self.rng.uniform(*self.hold)
        with self._lock:
            os.kill(pid, signal.SIGSTOP)
            self.frozen = pid
        if self.target == "holder":
            what = "lease holder"
        elif pid in write_lock_holders(self.watch.engine.url.database):
            what = "write-lock holder"
        else:
            what = "write-lock holder (had just let go)"
        self.fleet.journal.add("SIGSTOP", role, pid, f"{what}, for {seconds:.1f}s")
        self.stop.wait(seconds)  # wake it even when the run is stopping
        self.thaw()

    def _holder(self) -> int | None:
        parts = self.watch.holder.split(":")
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None

    def _writer(self) -> int | None:
        deadline = time.time() + 5  # write transactions are short: look often, for a while
        while time.time() < deadline and not self.stop.is_set():
            for pid in write_lock_holders(self.watch.engine.url.database):
                if self.fleet.role_of(pid):
                    return pid
            time.sleep(0.002)
        return None

    def thaw(self) -> None:
        """SIGCONT the frozen process, if any (also called at shutdown)."""
        with self._lock:
            pid, self.frozen = self.frozen, None
            if pid is None:
                return
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                return  # killed while frozen; the journal has the kill
        self.fleet.journal.add("SIGCONT", "frozen", pid)
