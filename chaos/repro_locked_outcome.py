"""A finding of the chaos run, reproduced alone: a delivered send ends up `unknown`.

`sender.record()` stores a send's outcome in a BEGIN IMMEDIATE transaction. If another
process holds the write lock longer than busy_timeout (10 s) at that moment — frozen by
SIGSTOP in the chaos run; a VM pause, swapping or a long CSV import in production — the
outcome is dropped with "database is locked": the row stays `sending`, and `recover`
later turns it into `unknown` although the server answered 250 (or a 4xx that should
have been retried). No duplicate and nothing silent, but a known outcome is lost and a
person is asked to decide what the program knew.

    .venv/bin/python -m chaos.repro_locked_outcome     # about 15 s; exit 1 while the bug is there

Fixed: sender.record() now waits out a stalled writer (up to STALE_SENDING_SECONDS).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from app import create_app
from delivery.transport import make_transport
from models import SendLog, Trigger, db
from sender import Settings, recover, send_batch
from storage import schema
from storage.timeutil import utcnow
from tests.conftest import app_config
from tests.helpers import make_campaign
from tests.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent

VICTIM = "lead0000@example.com"


def main() -> int:
    with SmtpSink() as sink, tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "repro.db"
        app = create_app(app_config(db_path, sink.port))
        with app.app_context():
            schema.install(db.engine, db.metadata)  # tables and triggers, as init-db makes them
            engine = db.engine
        settings = Settings.from_config(app.config)
        campaign_id = make_campaign(engine, 1)
        arrived, release = threading.Event(), threading.Event()
        sink.recorder.hold[VICTIM] = (arrived, release)  # DATA waits until we say so
        outcome: dict = {}

        def press() -> None:  # the "Wyślij kampanię" path; a scheduler tick is the same
            transport = make_transport(app.config)
            try:
                outcome["batch"] = send_batch(engine, settings, transport, campaign_id, Trigger.BUTTON,
                                              limit=1)
            except Exception as exc:  # noqa: BLE001 - what the caller of send_batch sees
                outcome["error"] = exc
            finally:
                transport.close()

        sender = threading.Thread(target=press)
        sender.start()
        assert arrived.wait(30), "the message never reached DATA"
        # Another process stalls while holding the write lock (here: an open BEGIN IMMEDIATE).
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        release.set()  # the server accepts the message and answers 250
        sender.join(timeout=12)  # past busy_timeout (10 s): the stall outlasts one wait
        blocker.execute("ROLLBACK")  # the stalled process moves on
        blocker.close()
        sender.join()

        def row():
            with engine.connect() as conn:
                return conn.execute(select(SendLog.status, SendLog.smtp_reply)).one()

        print(f"server accepted {VICTIM}: {sink.recorder.received[VICTIM]} time(s)")
        print(f"send_batch: {outcome.get('error') or outcome.get('batch')!r}")
        print(f"send_log after the send: {tuple(row())}")
        later = utcnow() + timedelta(seconds=settings.stale_seconds + 1)
        recover(engine, settings, later)  # what any tick does once the row is stale
        final = row()
        print(f"send_log after recover:  {tuple(final)}")
        with app.app_context():
            db.engine.dispose()
    lost = sink.recorder.received[VICTIM] == 1 and final.status != "sent"
    print("BUG: a delivered message is recorded as", final.status if lost else "sent (fixed)")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
