"""A real reader process the SIGKILL test stops mid-message: `python tests/reply_worker.py MAILBOX UID`.

Configuration comes from FLASK_* variables (as in production). It reads the mailbox once
through the scheduler's own path (lease, fencing); inside the transaction of message UID,
just before the commit, it prints "holding UID" and waits to be killed.
"""

from __future__ import annotations

import sys
import time

from app import create_app
from core import replies


def main(mailbox_id: int, hold_uid: int) -> None:
    app = create_app()

    def hold(uid: int) -> None:
        if uid == hold_uid:
            print(f"holding {uid}", flush=True)
            time.sleep(600)  # the test kills us here: the row, its effects and the cursor are not committed

    replies.before_commit = hold
    app.extensions["sendonce_ticker"].read_replies(mailbox_id)
    print("finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
