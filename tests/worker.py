"""A real OS process that competes for sends: `python tests/worker.py MODE CAMPAIGN`.

Configuration comes from FLASK_* variables (as in production). MODE is one of:
- tick:     the scheduler's tick (lease + fencing), repeatedly;
- send-due: cron's one-shot tick, repeatedly (takes and releases the lease each time);
- button:   the "Wyślij kampanię" code path (no lease, bypasses the interval);
- once:     one button batch, then exit (a claimer the test freezes and thaws);
- scheduler: the scheduler's job as it runs in a serving process (replies read, tick, alerts).
Each prints "ready" once its app is built, then waits for a start time on stdin, so
all of them start in the same instant; they stop when the campaign has nothing left
(or after DEADLINE seconds).
"""

from __future__ import annotations

import os
import secrets
import sys
import time

from sqlalchemy import func, select

from app import create_app
from delivery.transport import MailboxTransports
from models import CampaignLead, EnrollmentState, Trigger, db
from sender import Settings, send_batch

DEADLINE = float(os.environ.get("SENDONCE_WORKER_SECONDS", 60))  # a race with caps never runs dry


def open_work(campaign_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(CampaignLead).where(
        CampaignLead.campaign_id == campaign_id,
        CampaignLead.state.in_([EnrollmentState.PENDING, EnrollmentState.SENDING])))


def main(mode: str, campaign_id: int) -> None:
    app = create_app()
    ticker = app.extensions["sendonce_ticker"]
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    time.sleep(max(0.0, start_at - time.time()))
    stop = time.time() + DEADLINE
    with app.app_context():
        settings = Settings.from_config(app.config)
        timed = "SENDONCE_WORKER_SECONDS" in os.environ
        while time.time() < stop and (mode == "once" or timed or open_work(campaign_id)):
            db.session.rollback()  # end the read transaction so the next count is fresh
            if mode == "tick":
                batches = list((ticker.tick() or {}).values())
            elif mode == "scheduler":
                ticker.safe_tick()
                batches = []
            elif mode == "send-due":
                batches = list((ticker.tick(Trigger.CLI, campaign_id) or {}).values())
                ticker.release()
            else:
                transport = MailboxTransports(db.engine, app.config)  # each mailbox its own
                try:
                    batches = [send_batch(db.engine, settings, transport, campaign_id,
                                          Trigger.BUTTON, once_key=secrets.token_hex(8))]
                finally:
                    transport.close()
            for batch in batches:  # what this process did, for the test to read
                for claim, result in batch.outcomes:
                    print(f"outcome {claim.send_log_id} {result.status}", flush=True)
            if mode == "once":
                break
            time.sleep(0.01)
        ticker.release()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
