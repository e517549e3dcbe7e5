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
import time
from datetime import datetime
from typing import Any

import click
from flask import Flask
from flask.helpers import get_debug_flag
from flask_apscheduler import APScheduler
from sqlalchemy import select

from core import alerts, replies, send_requests
from delivery import lease as leases
from delivery.transport import MailboxTransports, Transport, mailbox_transport, make_transport
from models import Mailbox, MailboxStatus, Trigger, db
from sender import BatchResult, Settings, send_batch, tick
from storage.database import immediate
from storage.secrets import SecretError, Vault
from storage.timeutil import utcnow

log = logging.getLogger(__name__)
REQUESTS_JOB = "sendonce-requests"


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
            return tick(db.engine, settings, self._transport(), self.lease, trigger, campaign_id)

    def _transport(self) -> MailboxTransports:
        # One SMTP connection per mailbox (each used by its own sending lane), and the app's
        # configured transport for campaigns without mailboxes; all closed after the pass.
        return MailboxTransports(db.engine, self.app.config)

    def serve_requests(self) -> int | None:
        """Carry out open "send now" requests if this process holds the lease (how many); None if not."""
        with self._lock, self.app.app_context():
            with db.engine.connect() as conn:
                # A read first: every process polls every second, and taking the lease is a
                # write that the claims would queue behind.
                if not send_requests.unfinished(conn):
                    return 0
            settings = Settings.from_config(self.app.config)
            self.lease = leases.acquire(db.engine, self.holder, utcnow(), settings.lease_seconds)
            if self.lease is None:
                return None
            # Under the lock and the lease none of our own requests is mid-batch: a picked,
            # unfinished one belonged to a holder that died or lost the lease (its claims
            # are fenced now). It ends "interrupted"; its key is spent, so nothing is re-sent.
            send_requests.abandon_stale(db.engine, utcnow(), utcnow())
            with db.engine.connect() as conn:
                waiting = send_requests.open_requests(conn)
            if not waiting:
                return 0
            transport = self._transport()
            try:
                for request in waiting:
                    if not self._serve(request, settings, transport):
                        break  # the lease is gone: the new holder carries out the rest
            finally:
                transport.close()
            return len(waiting)

    def _serve(self, request, settings: Settings, transport: MailboxTransports) -> bool:
        """One request's batch; False when the lease was lost (stop picking more)."""
        with immediate(db.engine) as conn:
            if not send_requests.pick(conn, request.id, utcnow()):
                return True
        batch = send_batch(db.engine, settings, transport, request.campaign_id, Trigger.BUTTON,
                           lease=self.lease, once_key=request.key)
        send_requests.finish(db.engine, request.id, batch.sent, str(batch.stopped_by or ""), utcnow())
        return batch.stopped_by is None or batch.stopped_by.code != "lease_lost"

    def safe_serve_requests(self) -> None:
        """The scheduled job: a failing pass is logged; the request it was on ends "interrupted"."""
        try:
            self.serve_requests()
        except Exception:  # noqa: BLE001 - a job must not die; the next pass abandons, never re-sends
            log.exception("serving send requests failed")

    def safe_tick(self) -> None:
        """The scheduled job: read the mailboxes' replies, then tick, then the alerts; a
        failing step is logged and the next tick tries again."""
        # Replies first: a reply recorded now stops this very tick's follow-up to that lead
        # (the stop is checked inside the claim), so the window a reply can still race is
        # the time between this read and the send (README: Replies and bounces).
        self.safe_read_replies()
        try:
            results = self.tick() or {}
        except Exception:  # noqa: BLE001 - a job must not die; the lease makes retry safe
            log.exception("tick failed")
            results = {}
        for cid, batch in results.items():  # the whole process may not send: say so every tick
            if batch.stopped_by is not None and batch.stopped_by.code in ("schema_mismatch", "maintenance"):
                log.error("campaign %s not sent: %s", cid, batch.stopped_by)
        self.watch()

    def watch(self) -> None:
        """Check the alert conditions (in every ticking process, holder or not); the holder
        also mails the alerts that are due."""
        try:
            with self.app.app_context():
                now = utcnow()
                gate = alerts.check(db.engine, alerts.Watch.from_config(self.app.config), now)
                if gate is None and self.lease is not None:  # gated: the tick already logs why
                    mail_alerts(self.app, now)
        except Exception:  # noqa: BLE001 - alerts must never stop the ticking
            log.exception("alert check failed")
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


def alert_transport(app: Flask) -> tuple[Transport, alerts.Sender]:
    """Where alert mail goes out: the active mailbox marked alert_sender, else MAIL_BACKEND
    from MAIL_FROM."""
    config = app.config
    box = db.session.scalars(select(Mailbox).where(Mailbox.alert_sender.is_(True),
                                                   Mailbox.status == MailboxStatus.ACTIVE)
                             .order_by(Mailbox.id).limit(1)).first()
    if box is None:
        return make_transport(config), alerts.Sender(config["MAIL_FROM"])
    try:
        secret = Vault(config["MAILBOX_KEY_FILE"]).open(box.smtp_secret)
    except SecretError:  # alerts must still go out: through the app's own transport, said loudly
        log.error("alert sender %s: its password cannot be decrypted; alerts go through MAIL_BACKEND", box.id)
        return make_transport(config), alerts.Sender(config["MAIL_FROM"])
    transport = mailbox_transport(box, secret, timeout=float(config["SMTP_TIMEOUT"]),
                                  outbox_dir=config["OUTBOX_DIR"])
    return transport, alerts.Sender(box.address, box.name or "SendOnce")


def mail_alerts(app: Flask, now: datetime) -> int:
    """Mail the due alerts to the admins (rate-limited by ALERT_MIN_INTERVAL_SECONDS); how many."""
    interval, base = float(app.config["ALERT_MIN_INTERVAL_SECONDS"]), app.config["BASE_URL"].rstrip("/")
    with db.engine.connect() as conn:  # most ticks: nothing due, so no transport to build
        if not alerts.due_for_email(conn, now, interval):
            return 0
    transport, sender = alert_transport(app)
    try:
        return alerts.email_due(db.engine, transport, sender, now, interval, base)
    finally:
        transport.close()


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
    scheduler.add_job(id=REQUESTS_JOB, func=ticker.safe_serve_requests, trigger="interval",
                      seconds=float(app.config["REQUEST_POLL_SECONDS"]), max_instances=1, coalesce=True)
    scheduler.start()
    app.extensions["sendonce_scheduler"] = scheduler
    # The send button wakes this process's job at once instead of within a poll.
    app.extensions["sendonce_wake"] = lambda: scheduler.modify_job(
        REQUESTS_JOB, next_run_time=datetime.now().astimezone())

    def stop() -> None:
        if scheduler.running:  # a test may have stopped it already
            scheduler.shutdown(wait=True)
        ticker.release()

    atexit.register(stop)
    log.info("scheduler started in pid %s (%s)", os.getpid(), ticker.holder)


def run_forever(app: Flask) -> None:
    """`flask scheduler`: tick every TICK_SECONDS, serving "send now" requests every
    REQUEST_POLL_SECONDS in between, until SIGTERM/SIGINT; then release."""
    ticker: Ticker = app.extensions["sendonce_ticker"]
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:  # flags only; the loop does the work
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    seconds, poll = float(app.config["TICK_SECONDS"]), float(app.config["REQUEST_POLL_SECONDS"])
    try:
        while not stop.is_set():
            ticker.safe_tick()
            next_tick = time.monotonic() + seconds
            while not stop.is_set() and time.monotonic() < next_tick:
                ticker.safe_serve_requests()
                stop.wait(min(poll, max(next_tick - time.monotonic(), 0)))
    finally:
        ticker.release()
