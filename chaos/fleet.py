"""The processes under test, started and killed by the chaos run, and the journal of it.

The journal records every SIGKILL, SIGSTOP and SIGCONT with pid, role and time: an
`unknown` send is only acceptable if the process that held it was killed, and the
journal is the evidence. Shutdown is graceful (SIGTERM) with deadlines; a process that
misses one is SIGKILLed by us, and journaled, never silently by someone else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLASK = [PYTHON, "-m", "flask", "--app", "app"]
LOGS = ("gunicorn", "scheduler", "cron")  # WORKDIR/<name>.log: each process kind's output


@dataclass(frozen=True)
class Incident:
    t: float
    action: str  # SIGKILL, SIGSTOP, SIGCONT, START
    role: str  # gunicorn-worker, scheduler, send-due, gunicorn-master
    pid: int
    note: str = ""


class Journal:
    """What was done to which process, in memory and appended to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.lock = threading.Lock()
        self.items: list[Incident] = []
        self.file = path.open("a", buffering=1, encoding="utf-8")

    def add(self, action: str, role: str, pid: int, note: str = "") -> Incident:
        """Record one incident (the time is taken after the signal was sent)."""
        item = Incident(time.time(), action, role, pid, note)
        with self.lock:
            self.items.append(item)
            self.file.write(json.dumps(asdict(item)) + "\n")
        return item

    def kills(self) -> dict[int, list[Incident]]:
        """SIGKILLs by pid."""
        with self.lock:
            found: dict[int, list[Incident]] = {}
            for item in self.items:
                if item.action == "SIGKILL":
                    found.setdefault(item.pid, []).append(item)
            return found

    def count(self, action: str, role: str | None = None) -> int:
        """How many incidents of this kind (and role)."""
        with self.lock:
            return sum(1 for i in self.items if i.action == action and (role is None or i.role == role))


def children(pid: int) -> list[int]:
    """Direct children of a process (gunicorn's workers are its master's children)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    """Whether pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Fleet:
    """gunicorn (master + workers with schedulers), the dedicated scheduler, cron runs."""

    def __init__(self, env: dict[str, str], workdir: Path, journal: Journal, *, workers: int,
                 port: int, gunicorn_timeout: float = 120, graceful: float = 60) -> None:
        self.env, self.workdir, self.journal = env, workdir, journal
        self.workers, self.port = workers, port
        self.gunicorn_timeout, self.graceful = gunicorn_timeout, graceful
        self.lock = threading.Lock()
        self.gunicorn: subprocess.Popen | None = None
        self.scheduler: subprocess.Popen | None = None
        self.cron: list[subprocess.Popen] = []
        self.cron_started = 0
        self.scheduler_starts = 0
        self._logs = {name: (workdir / f"{name}.log").open("ab") for name in LOGS}

    def _popen(self, args: list[str], log: str) -> subprocess.Popen:
        return subprocess.Popen(args, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=self._logs[log], stderr=subprocess.STDOUT)

    # --- gunicorn -------------------------------------------------------------------

    def start_gunicorn(self, ready_timeout: float = 90) -> None:
        """Start gunicorn and wait until /healthz answers."""
        self.gunicorn = self._popen(
            [PYTHON, "-m", "gunicorn", "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}",
             "--timeout", str(self.gunicorn_timeout), "--graceful-timeout", str(self.graceful),
             "--no-control-socket",  # its default path is shared by every gunicorn on the host
             "app:create_app()"], "gunicorn")
        self.journal.add("START", "gunicorn-master", self.gunicorn.pid)
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            if self.gunicorn.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.gunicorn.returncode}; see gunicorn.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("gunicorn did not answer /healthz in time")

    def gunicorn_workers(self) -> list[int]:
        """The live worker pids right now."""
        if self.gunicorn is None or self.gunicorn.poll() is not None:
            return []
        return [p for p in children(self.gunicorn.pid) if alive(p)]

    # --- the dedicated scheduler and cron ---------------------------------------------

    def start_scheduler(self) -> None:
        """(Re)start `flask scheduler`."""
        with self.lock:
            self.scheduler = self._popen([*FLASK, "scheduler"], "scheduler")
            self.scheduler_starts += 1
        self.journal.add("START", "scheduler", self.scheduler.pid)

    def scheduler_pid(self) -> int | None:
        """The dedicated scheduler's pid if it is running."""
        with self.lock:
            proc = self.scheduler
        return proc.pid if proc is not None and proc.poll() is None else None

    def spawn_cron(self) -> None:
        """Start one `flask send-due` (system cron style: nobody waits for it)."""
        proc = self._popen([*FLASK, "send-due"], "cron")
        with self.lock:
            self.cron.append(proc)
            self.cron_started += 1

    def cron_pids(self) -> list[int]:
        """The send-due runs still going (finished ones are reaped here)."""
        with self.lock:
            self.cron = [p for p in self.cron if p.poll() is None]
            return [p.pid for p in self.cron]

    def role_of(self, pid: int) -> str | None:
        """Which of our processes pid is now, or None (never signal a stranger)."""
        if pid in self.gunicorn_workers():
            return "gunicorn-worker"
        if pid == self.scheduler_pid():
            return "scheduler"
        if pid in self.cron_pids():
            return "send-due"
        return None

    def kill(self, pid: int, role: str, note: str = "") -> bool:
        """SIGKILL one of our processes and journal it; False if it was gone already."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.journal.add("SIGKILL", role, pid, note)
        return True

    # --- shutdown ----------------------------------------------------------------------

    def stop_all(self) -> None:
        """Let cron runs finish, then SIGTERM the scheduler and gunicorn, with deadlines."""
        deadline = time.time() + 120
        with self.lock:
            crons = list(self.cron)
        for proc in crons:
            self._wait_or_kill(proc, "send-due", deadline)
        with self.lock:
            sched = self.scheduler
        if sched is not None and sched.poll() is None:
            sched.send_signal(signal.SIGTERM)
            self._wait_or_kill(sched, "scheduler", time.time() + 60)
        if self.gunicorn is not None and self.gunicorn.poll() is None:
            self._stop_gunicorn()
        for log in self._logs.values():
            log.close()

    def _wait_or_kill(self, proc: subprocess.Popen, role: str, deadline: float) -> None:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.kill(proc.pid, role, "missed its shutdown deadline")
            proc.wait()

    def _stop_gunicorn(self) -> None:
        # gunicorn would SIGKILL workers still busy after --graceful-timeout without telling
        # us; we kill them ourselves a little earlier, so every kill is in the journal.
        workers = set(self.gunicorn_workers())
        self.gunicorn.send_signal(signal.SIGTERM)
        deadline = time.time() + self.graceful - 5
        while time.time() < deadline:
            workers |= set(children(self.gunicorn.pid))  # one may have been booting
            if not any(alive(p) for p in workers):
                break
            time.sleep(0.1)
        for pid in workers:
            if alive(pid):
                self.kill(pid, "gunicorn-worker", "missed the graceful shutdown deadline")
        self._wait_or_kill(self.gunicorn, "gunicorn-master", time.time() + 30)
