"""Ticking: Flask-APScheduler in serving processes, or a dedicated foreground loop.

Every process may tick (each gunicorn worker, the dev server, `flask scheduler`, cron's
`flask send-due`); correctness never relies on there being one scheduler. A tick first
renews or takes the lease; only the holder claims, and every claim is fenced by it.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from datetime import datetime
from typing import Any

import click
from flask import Flask
from flask.helpers import get_debug_flag
from flask_apscheduler import APScheduler

from core import replies
from delivery import lease as leases
from delivery.transport import make_transport
from models import Trigger, db
from sender import BatchResult, Settings, tick
from storage.secrets import Vault
from storage.timeutil import utcnow

log = logging.getLogger(__name__)


class Ticker:
    """One process's lease holder identity and the tick it runs."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.holder = leases.new_holder_id()
        self.lease: leases.Lease | None = None
        self._lock = threading.Lock()

    def tick(self, trigger: Trigger = Trigger.SCHEDULER,
             campaign_id: int | None = None) -> dict[int, BatchResult] | None:
        """Renew or take the lease, then send what is due; None if another holds it."""
        with self._lock, self.app.app_context():
            settings = Settings.from_config(self.app.config)
            self.lease = leases.acquire(db.engine, self.holder, utcnow(), settings.lease_seconds)
            if self.lease is None:
                return None
            return tick(db.engine, settings, make_transport(self.app.config), self.lease,
                        trigger, campaign_id)

    def safe_tick(self) -> None:
        """The scheduled job: a failing tick is logged and the next one tries again."""
        try:
            results = self.tick() or {}
        except Exception:  # noqa: BLE001 - a job must not die; the lease makes retry safe
            log.exception("tick failed")
            results = {}
        for cid, batch in results.items():  # the whole process may not send: say so every tick
            if batch.stopped_by is not None and batch.stopped_by.code in ("schema_mismatch", "maintenance"):
                log.error("campaign %s not sent: %s", cid, batch.stopped_by)
        self.safe_read_replies()

    def read_replies(self, mailbox_id: int | None = None) -> list[replies.ReadResult] | None:
        """Renew or take the lease, then read replies and bounces of every mailbox with an
        IMAP host (or one); None if another process holds the lease."""
        with self._lock, self.app.app_context():
            config = self.app.config
            seconds = Settings.from_config(config).lease_seconds
            self.lease = leases.acquire(db.engine, self.holder, utcnow(), seconds)
            if self.lease is None:
                return None
            try:
                return replies.read_all(db.engine, Vault(config["MAILBOX_KEY_FILE"]),
                                        replies.ReaderOptions.from_config(config), self.lease, mailbox_id)
            except replies.LeaseLost:  # a newer holder reads from here; what we committed stays
                log.warning("scheduler lease lost while reading replies; stopped")
                return []

    def safe_read_replies(self) -> None:
        """After each tick: a failing read is logged and the next tick reads again."""
        try:
            self.read_replies()
        except Exception:  # noqa: BLE001 - a job must not die; each message commits alone
            log.exception("reading replies failed")

    def release(self) -> None:
        """Give the lease back (clean shutdown), so another process takes over at once."""
        if self.lease is None:
            return
        with self.app.app_context():
            leases.release(db.engine, self.lease, utcnow())
        self.lease = None


def _is_reloader_watcher() -> bool:
    # `flask run --reload` (or --debug) runs the app in a child process; the parent only
    # watches files. It must never tick, though create_app runs in it too.
    if os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        return False
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command.name != "run":
        return False
    reload = ctx.params.get("reload")
    return bool(get_debug_flag() if reload is None else reload)


def _is_other_cli_command() -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.command.name != "run"


def init_app(app: Flask) -> None:
    """Start the background scheduler in serving processes when SCHEDULER_ENABLED."""
    app.extensions["sendonce_ticker"] = ticker = Ticker(app)
    if not app.config["SCHEDULER_ENABLED"] or _is_reloader_watcher() or _is_other_cli_command():
        return
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not a line per tick
    scheduler = APScheduler()
    scheduler.init_app(app)
    scheduler.add_job(id="sendonce-tick", func=ticker.safe_tick, trigger="interval",
                      seconds=float(app.config["TICK_SECONDS"]), max_instances=1,
                      coalesce=True, next_run_time=datetime.now().astimezone())
    scheduler.start()
    app.extensions["sendonce_scheduler"] = scheduler

    def stop() -> None:
        scheduler.shutdown(wait=True)
        ticker.release()

    atexit.register(stop)
    log.info("scheduler started in pid %s (%s)", os.getpid(), ticker.holder)


def run_forever(app: Flask) -> None:
    """`flask scheduler`: tick every TICK_SECONDS until SIGTERM/SIGINT, then release."""
    ticker: Ticker = app.extensions["sendonce_ticker"]
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:  # flags only; the loop does the work
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    seconds = float(app.config["TICK_SECONDS"])
    try:
        while not stop.is_set():
            ticker.safe_tick()
            stop.wait(seconds)
    finally:
        ticker.release()
