"""The chaos run: `python -m chaos.run [--duration 600 --leads 5000 ...]`.

One database (an SQLite file, or with --database postgresql a throwaway PostgreSQL
cluster's) and one misbehaving SMTP server; against them, all at once, gunicorn
with a scheduler in every worker, a dedicated `flask scheduler`, `flask send-due` every
few seconds, admins pressing "Wyślij kampanię" (double clicks included), campaigns
paused and resumed, single leads' sequences stopped, a killer (SIGKILL) and a freezer
(SIGSTOP of the lease holder). Every campaign is a sequence of --steps steps, seconds apart.
When the time is up: stop, `flask recover`, drain, reconcile, print the table. Exit
status 0 only if every check holds; otherwise each broken rule names its lead.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from chaos.actors import Cron, Freezer, Keeper, Killer, Pauser, Presser, StatusChange, Stopper, Watch
from chaos.fleet import FLASK, Fleet, Journal
from chaos.http_client import AdminClient
from chaos.prepare import populate, start_smtp
from chaos.reconcile import Evidence, run_checks
from chaos.report import render
from chaos.store import POSTGRESQL, SQLITE, query, reader

CHAOS = Path(__file__).resolve().parent
ROOT = CHAOS.parent

FAULT_KEYS = ("transient", "drop_before", "drop_after", "slow", "slow_max", "bounce")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=600, help="seconds of chaos")
    p.add_argument("--leads", type=int, default=5000)
    p.add_argument("--campaigns", type=int, default=4)
    p.add_argument("--steps", type=int, default=3,
                   help="steps of every campaign; step n waits n seconds after step n-1 was sent")
    p.add_argument("--overlap", type=float, default=0.2, help="share of leads in two campaigns")
    p.add_argument("--mailboxes", type=int, default=3,
                   help="sender mailboxes every campaign sends through (0: the app's SMTP settings)")
    p.add_argument("--batch-size", type=int, default=0, help="0: sized to last the run")
    p.add_argument("--workers", type=int, default=3, help="gunicorn workers (each with a scheduler)")
    p.add_argument("--clients", type=int, default=3, help="HTTP admins pressing the button")
    p.add_argument("--double-submit", type=float, default=0.3, help="share of presses POSTed twice at once")
    p.add_argument("--cron-every", type=float, default=6, help="seconds between send-due runs")
    p.add_argument("--kill-every", type=float, default=8, help="seconds between SIGKILLs (±50%%)")
    p.add_argument("--freeze-every", type=float, default=15, help="seconds between SIGSTOPs (±50%%)")
    p.add_argument("--freeze-for", default="0.5-6", help="SIGSTOP duration range, seconds")
    p.add_argument("--freeze-target", choices=("holder", "writer"), default="holder",
                   help="SIGSTOP the lease holder, or whoever holds SQLite's write lock")
    p.add_argument("--pause-every", type=float, default=10, help="seconds between pause/resume (±50%%)")
    p.add_argument("--stop-every", type=float, default=3,
                   help="seconds between stops of a random lead's sequence (±50%%; 0: none)")
    p.add_argument("--fault-rate", type=float, default=0.04,
                   help="scales every SMTP fault: transient=R, drop_before=R/4, drop_after=R/10, "
                        "slow=R, 550 for R/4 of the addresses")
    p.add_argument("--fault-rates", default="", help="override single rates: "
                   "transient=0.05,drop_before=0.01,drop_after=0.005,slow=0.05,slow_max=1.5,bounce=0.01")
    p.add_argument("--tick", type=float, default=1.0, help="TICK_SECONDS")
    p.add_argument("--lease", type=float, default=3.0, help="LEASE_SECONDS (> tick)")
    p.add_argument("--stale", type=float, default=60.0, help="STALE_SENDING_SECONDS")
    p.add_argument("--smtp-timeout", type=float, default=10.0)
    p.add_argument("--retry-base", type=float, default=1.0, help="RETRY_BASE_SECONDS")
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--pause-after", type=int, default=5, help="PAUSE_AFTER_FAILURES")
    p.add_argument("--drain-timeout", type=float, default=900)
    p.add_argument("--progress-every", type=float, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--database", choices=(SQLITE, POSTGRESQL), default=SQLITE,
                   help="postgresql: a fresh database in a throwaway cluster (tests/pg_server.py), "
                        "stopped at the end")
    p.add_argument("--workdir", type=Path, help="logs and report (default: a new temp dir)")
    p.add_argument("--db", type=Path, help="the SQLite file (default: WORKDIR/chaos.db; must not exist)")
    args = p.parse_args(argv)
    if args.database == POSTGRESQL:
        refuse_on_postgres(p, args)
    lo, _, hi = args.freeze_for.partition("-")
    args.freeze_range = (float(lo), float(hi or lo))
    args.faults = fault_rates(args.fault_rate, args.fault_rates)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.lease <= args.tick:
        p.error("--lease must exceed --tick")
    return args


def refuse_on_postgres(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The flags that mean something on SQLite only."""
    if args.freeze_target == "writer":
        p.error("--freeze-target writer is SQLite's: it finds the holder of SQLite's write lock in "
                "/proc/locks, and PostgreSQL has no database-wide write lock; on PostgreSQL the "
                "freezer stops the lease holder (--freeze-target holder, the default)")
    if args.db is not None:
        p.error("--db names the SQLite file; --database postgresql makes its own database")
    if args.mailboxes < 1:
        # The checks read "a larger send_log id committed later" (actors.Snapshot): on
        # PostgreSQL that holds because every claim locks the mailboxes all campaigns share.
        p.error("--database postgresql needs --mailboxes >= 1: claims of campaigns without "
                "shared mailboxes run in parallel there, and ids no longer follow commit order")


@contextmanager
def database(args: argparse.Namespace, workdir: Path) -> Iterator[str]:
    """The run's database URL: its SQLite file's, or a new database in a throwaway PostgreSQL
    cluster (make test's, if SENDONCE_PG_CLUSTER_DIR names one), stopped however the run ends."""
    if args.database == SQLITE:
        path = (args.db or workdir / "chaos.db").resolve()
        if path.exists():
            raise SystemExit(f"{path} exists: the chaos run needs a fresh database file")
        yield f"sqlite:///{path}"
        return
    from tests.pg_server import start_or_attach

    cluster = start_or_attach()
    try:
        yield cluster.new_database("chaos")
    finally:
        cluster.stop()


def fault_rates(rate: float, overrides: str) -> dict[str, float]:
    """The SMTP server's fault probabilities from --fault-rate and --fault-rates."""
    faults = {"transient": rate, "drop_before": rate / 4, "drop_after": rate / 10, "slow": rate,
              "slow_max": 1.5, "bounce": rate / 4}
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        if key.strip() not in FAULT_KEYS:
            raise SystemExit(f"unknown fault {key!r}; known: {', '.join(FAULT_KEYS)}")
        faults[key.strip()] = float(value)
    return faults


def app_settings(args, url: str, workdir: Path, smtp_port: int) -> dict:
    """The configuration every process of the run shares (as FLASK_* variables)."""
    from tests.conftest import app_config

    return app_config(
        workdir / "chaos.db", smtp_port, SQLALCHEMY_DATABASE_URI=url, TESTING=False,
        SECRET_KEY=secrets.token_hex(32), SCHEDULER_ENABLED=True,
        TICK_SECONDS=args.tick, LEASE_SECONDS=args.lease, STALE_SENDING_SECONDS=args.stale,
        SMTP_TIMEOUT=args.smtp_timeout, RETRY_BASE_SECONDS=args.retry_base,
        MAX_ATTEMPTS=args.max_attempts, PAUSE_AFTER_FAILURES=args.pause_after,
        LOG_LEVEL="WARNING", BASE_URL="http://sendonce.chaos.test")


def process_env(config: dict) -> dict[str, str]:
    """FLASK_* variables; bytecode cached outside the repo (a process starts in ~1 s, not 3)."""
    from tests.conftest import env_for

    env = env_for(config)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "sendonce-chaos-pycache")
    return env


def open_work(engine: Engine) -> int:
    """Enrollments not yet in a final state."""
    return query(engine, "SELECT count(*) FROM campaign_lead WHERE state IN ('pending', 'sending')")[0][0]


def paused_campaigns(engine: Engine) -> list[int]:
    return [row[0] for row in query(engine, "SELECT id FROM campaign WHERE status = 'paused'")]


def paused_mailboxes(engine: Engine) -> list[int]:
    return [row[0] for row in query(engine, "SELECT id FROM mailbox WHERE status = 'paused'")]


def progress_line(engine: Engine, started: float, journal: Journal) -> str:
    states = dict(query(engine, "SELECT state, count(*) FROM campaign_lead GROUP BY state"))
    return (f"[chaos {time.time() - started:5.0f}s] "
            + " ".join(f"{k}={v}" for k, v in sorted(states.items()))
            + f" | kills={journal.count('SIGKILL')} freezes={journal.count('SIGSTOP')}")


class ChaosRun:
    """One run: prepare, chaos, recover, drain, reconcile; cleanup always stops everything."""

    def __init__(self, args: argparse.Namespace, workdir: Path, url: str) -> None:
        from app import create_app
        from tests.smtp_sink import free_port

        self.args, self.workdir, self.url = args, workdir, url
        self.db = reader(url)  # the run's own reads (store.py); the app has its engine
        self.rng = random.Random(args.seed)
        self.smtp_port, self.http_port = free_port(), free_port()
        self.config = app_settings(args, url, workdir, self.smtp_port)
        self.env = process_env(self.config)
        self.app = create_app({**self.config, "SCHEDULER_ENABLED": False})
        self.journal = Journal(self.workdir / "journal.jsonl")
        self.fleet = Fleet(self.env, self.workdir, self.journal, workers=args.workers, port=self.http_port)
        self.stop = threading.Event()
        self.watch_stop = threading.Event()  # the watch runs on through the drain
        self.watch: Watch | None = None
        self.actors: list = []
        self.freezer: Freezer | None = None
        self.smtp: subprocess.Popen | None = None
        self.happened: dict = {"journal": self.journal, "fleet": self.fleet}

    def prepare(self) -> None:
        """The database, the SMTP server."""
        where = self.db.url.database if self.args.database == SQLITE else self.url
        print(f"chaos: workdir {self.workdir}, database {where}", flush=True)
        self.pop = populate(self.app, self.args, self.rng)
        faults = self.args.faults
        bounce = sorted(self.rng.sample(self.pop.emails, round(len(self.pop.emails) * faults["bounce"])))
        server_faults = {k: v for k, v in faults.items() if k != "bounce"}
        self.smtp = start_smtp(self.workdir, self.smtp_port, server_faults, bounce, self.args.seed)

    def run_chaos(self) -> None:
        """Every actor at once for --duration seconds, then a graceful stop of everything."""
        args, pop = self.args, self.pop
        print(f"chaos: {pop.enrollments} enrollments in {len(pop.campaign_ids)} campaigns, batch "
              f"{pop.batch_size}; starting gunicorn", flush=True)
        self.fleet.start_gunicorn()
        self.fleet.start_scheduler()
        load_session = self.app.session_interface.get_signing_serializer(self.app).loads
        clients = []
        for email, password in pop.users:
            client = AdminClient(self.http_port, load_session)
            client.login(email, password)
            clients.append(client)
        watch = self.watch = Watch(self.watch_stop, args.seed, self.db)
        presses, lock = [], threading.Lock()
        self.freezer = Freezer(self.stop, args.seed, self.fleet, watch, args.freeze_every, args.freeze_range,
                               args.freeze_target)
        pauser = Pauser(self.stop, args.seed, clients[-1], pop.campaign_ids, args.pause_every, self.env,
                        self.db)
        watch.start()
        self.actors = [Cron(self.stop, args.seed, self.fleet, args.cron_every),
                       Keeper(self.stop, args.seed, self.fleet), Killer(self.stop, args.seed, self.fleet,
                                                                        args.kill_every),
                       self.freezer, pauser]
        stopper = Stopper(self.stop, args.seed, args.stop_every, self.db, self.stop_lead,
                          self.journal)
        if args.stop_every > 0:
            self.actors.append(stopper)
        self.actors += [Presser(f"admin{n}", self.stop, args.seed, clients[n], pop.campaign_ids,
                                args.double_submit, presses, lock) for n in range(args.clients)]
        self.happened.update(presses=presses, watch=watch, pauser=pauser, stopper=stopper,
                             actors=[watch, *self.actors])
        started = time.time()
        print(f"chaos: {args.duration:.0f}s of chaos from now (gunicorn on port {self.http_port})",
              flush=True)
        for actor in self.actors:
            actor.start()
        deadline = started + args.duration
        next_progress = started + args.progress_every
        while time.time() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.time())))
            if time.time() >= next_progress:
                print(progress_line(self.db, started, self.journal), flush=True)
                next_progress += args.progress_every
        self.stop_processes()
        self.happened.update(started=started, ended=time.time())
        print(f"chaos: stopped; every process exited {time.time() - deadline:.0f}s after the deadline",
              flush=True)
        _journal_gunicorn_timeouts(self.workdir, self.journal)

    def stop_lead(self, campaign_id: int, lead_id: int) -> int:
        """A person's "stop" of one lead's sequence in one campaign (what `campaign stop` calls)."""
        from core import sequences
        from models import db

        with self.app.app_context():
            return sequences.stop(db.engine, campaign_id, lead_id, "person",
                                  datetime.now(UTC).replace(tzinfo=None))

    def stop_processes(self) -> None:
        """Stop the actors, wake anything frozen, stop every process (idempotent)."""
        self.stop.set()
        if self.freezer is not None:
            self.freezer.thaw()
        for actor in self.actors:
            if actor.is_alive():
                actor.join(timeout=120)
        if self.freezer is not None:
            self.freezer.thaw()
        self.fleet.stop_all()

    def recover(self) -> None:
        """`flask recover`, as an operator would after the incident."""
        done = subprocess.run([*FLASK, "recover"], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=120)
        lines = done.stdout.strip().splitlines()
        self.happened["recover"] = lines[-1] if lines else f"exit {done.returncode}: {done.stderr[-300:]}"

    def drain(self) -> None:
        """Faults off, resume what is paused, tick until nothing is open (bounded in time)."""
        from core import campaigns, mailboxes
        from models import Trigger, db

        self.smtp.send_signal(signal.SIGUSR1)
        ticker = self.app.extensions["sendonce_ticker"]
        started = time.time()
        ticks = resumed = 0
        while open_work(self.db) and time.time() - started < self.args.drain_timeout:
            with self.app.app_context():
                for campaign_id in paused_campaigns(self.db):
                    change = StatusChange(campaign_id, "resume", time.time())
                    self.happened["pauser"].changes.append(change)  # for the pause check
                    try:
                        campaigns.resume(db.engine, campaign_id)
                        change.ok = True
                        resumed += 1
                    except campaigns.CampaignError:
                        pass
                    change.ended = time.time()
                for mailbox_id in paused_mailboxes(self.db):  # failures in a row paused it
                    mailboxes.resume(db.engine, mailbox_id)
                    resumed += 1
            results = ticker.tick(Trigger.CLI) or {}
            ticks += 1
            if not any(batch.outcomes for batch in results.values()):
                time.sleep(0.2)  # retries are waiting for their backoff
        ticker.release()
        self.stop_watch()
        self.happened["drain"] = {"started": started, "seconds": time.time() - started, "ticks": ticks,
                                  "resumed": resumed}

    def reconcile(self) -> int:
        """Run the checks, print and store the report; the exit status."""
        from delivery import lease as leases

        watch = self.happened["watch"]
        evidence = Evidence.load(
            self.db, self.workdir / "smtp-events.jsonl", kills=self.journal.kills(), host=leases.HOST,
            presses=self.happened["presses"], snapshots=watch.snapshots, sightings=watch.sightings,
            status_changes=self.happened["pauser"].changes, drain_started=self.happened["drain"]["started"],
            lead_stops=self.happened["stopper"].stops)
        checks = run_checks(evidence)
        text, summary = render(self.args, self.pop, self.happened, evidence, checks, self.workdir)
        print(text, flush=True)
        (self.workdir / "report.txt").write_text(text)
        (self.workdir / "report.json").write_text(json.dumps(summary, indent=1))
        return 0 if all(c.ok for c in checks) else 1

    def stop_watch(self) -> None:
        """Stop polling; one last snapshot sees the final state."""
        self.watch_stop.set()
        if self.watch is not None and self.watch.is_alive():
            self.watch.join(timeout=60)
            if not self.watch.is_alive():  # its connection is the thread's until then
                self.watch.snap()
                self.watch.close()

    def cleanup(self) -> None:
        """Whatever happened: no process of ours outlives the run."""
        self.stop_processes()
        self.stop_watch()
        if self.smtp is not None and self.smtp.poll() is None:
            self.smtp.send_signal(signal.SIGTERM)
            self.smtp.wait(timeout=30)

    def close(self) -> None:
        """Give back every connection (a PostgreSQL cluster stops once none is left)."""
        from models import db

        with self.app.app_context():
            db.engine.dispose()
        self.db.dispose()


def _journal_gunicorn_timeouts(workdir: Path, journal: Journal) -> None:
    # gunicorn's master kills a worker that missed --timeout: a kill we did not send, but a
    # kill all the same; journaled so that its unknown rows are attributed honestly.
    import re

    for line in (workdir / "gunicorn.log").read_text(errors="replace").splitlines():
        found = re.search(r"WORKER TIMEOUT \(pid:(\d+)\)", line)
        if found:
            journal.add("SIGKILL", "gunicorn-worker", int(found[1]), "gunicorn master: WORKER TIMEOUT")


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sendonce-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # so that `finally` stops every process
    with database(args, workdir) as url:
        run = ChaosRun(args, workdir, url)
        try:
            try:
                run.prepare()
                run.run_chaos()
                run.recover()
                run.drain()
            finally:
                run.cleanup()
            return run.reconcile()
        finally:
            run.close()


if __name__ == "__main__":
    sys.exit(main())
