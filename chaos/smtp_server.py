"""A misbehaving SMTP server for the chaos run: `python -m chaos.smtp_server CONFIG.json`.

It runs in its own process (a busy orchestrator must not delay its replies) and writes
one JSON line per event to the log named in the config, flushed at once, so the
reconciliation can read exactly what it accepted even if the run is cut short:

- accepted:         the message was taken (counted against its recipient);
- drop_after_data:  the whole message arrived, then the connection was cut before the
                    reply; `delivered` says whether the server kept it (RFC 1047: the
                    client cannot know, so SendOnce must mark the send `unknown`);
- drop_before_data: the connection was cut at MAIL or RCPT (certainly not delivered);
- transient:        a 421 (then the connection is closed) or 451 reply;
- bounce:           a 550 for a chosen address (the first attempt only: a later
                    attempt is accepted, so a send after the suppression would count);
- rcpt:             every RCPT seen, with its envelope sender (for the suppression check).

SIGUSR1 switches the random faults off (the drain), SIGUSR2 on again; SIGTERM stops.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.controller import Controller

MSGID = re.compile(rb"^Message-ID:\s*<sendonce\.(\d+)\.(\d+)\.[0-9a-f.]+@[^>]*>",
                   re.IGNORECASE | re.MULTILINE)
# An alert mail to the admins (core/alerts.py): not campaign mail, kept out of its accounting.
ALERT_ID = re.compile(rb"^Message-ID:\s*<sendonce\.alert\.", re.IGNORECASE | re.MULTILINE)


@dataclass
class Faults:
    """Probabilities per SMTP command (MAIL, RCPT, end of DATA)."""

    transient: float = 0.0  # 421 (closing) or 451 at MAIL/RCPT/DATA
    drop_before: float = 0.0  # connection cut at MAIL or RCPT
    drop_after: float = 0.0  # connection cut after the final dot (half delivered, half not)
    slow: float = 0.0  # a reply delayed by up to slow_max seconds
    slow_max: float = 1.0


class FaultyHandler:
    """aiosmtpd hooks that misbehave on purpose and log every outcome."""

    def __init__(self, faults: Faults, bounce: set[str], log_path: Path, seed: int) -> None:
        self.faults = faults
        self.bounce = bounce
        self.bounced: set[str] = set()
        self.enabled = True
        self.rng = random.Random(seed)
        self.log = log_path.open("a", buffering=1, encoding="utf-8")
        self.lock = threading.Lock()

    def event(self, ev: str, **fields) -> None:
        """Append one event line (flushed: the line buffer ends with it)."""
        with self.lock:
            self.log.write(json.dumps({"t": time.time(), "ev": ev, **fields}) + "\n")

    def _roll(self, p: float) -> bool:
        return self.enabled and p > 0 and self.rng.random() < p

    async def _maybe_slow(self) -> None:
        if self._roll(self.faults.slow):
            await asyncio.sleep(self.rng.uniform(0.05, self.faults.slow_max))

    def _drop(self, server, stage: str, rcpt: str) -> str:
        self.event("drop_before_data", stage=stage, rcpt=rcpt)
        server.transport.close()
        return "421 4.4.2 connection dropped"  # never reaches the client

    def _transient(self, server, stage: str, rcpt: str) -> str:
        if self.rng.random() < 0.5:
            self.event("transient", stage=stage, code=421, rcpt=rcpt)
            # A 421 announces that the server closes the channel (RFC 5321 §3.8).
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.3.2 service not available, closing channel"
        self.event("transient", stage=stage, code=451, rcpt=rcpt)
        return "451 4.3.0 local error, try again"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        await self._maybe_slow()
        if self._roll(self.faults.drop_before / 2):
            return self._drop(server, "MAIL", "")
        if self._roll(self.faults.transient / 3):
            return self._transient(server, "MAIL", "")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        address = address.lower()
        self.event("rcpt", rcpt=address, mail_from=envelope.mail_from)
        await self._maybe_slow()
        if address in self.bounce and address not in self.bounced:
            self.bounced.add(address)
            self.event("bounce", rcpt=address, mail_from=envelope.mail_from)
            return "550 5.1.1 no such user here"
        if self._roll(self.faults.drop_before / 2):
            return self._drop(server, "RCPT", address)
        if self._roll(self.faults.transient / 3):
            return self._transient(server, "RCPT", address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        (rcpt,) = envelope.rcpt_tos
        found = MSGID.search(envelope.content)
        ident = {"rcpt": rcpt, "mail_from": envelope.mail_from,
                 "campaign": int(found[1]) if found else None, "log_id": int(found[2]) if found else None,
                 "alert": ALERT_ID.search(envelope.content) is not None}
        await self._maybe_slow()
        if self._roll(self.faults.transient / 3):
            code = self.rng.choice((421, 451))
            self.event("transient", stage="DATA", code=code, **ident)
            return f"{code} 4.3.0 not accepted, try again"
        if self._roll(self.faults.drop_after):
            delivered = self.rng.random() < 0.5
            self.event("drop_after_data", delivered=delivered, **ident)
            server.transport.close()
            return "250 OK (never seen by the client)"
        self.event("accepted", **ident)
        return "250 OK queued"


def main(config_path: str) -> None:
    """Serve until SIGTERM; print `ready PORT` once listening."""
    config = json.loads(Path(config_path).read_text())
    handler = FaultyHandler(Faults(**config["faults"]), set(config["bounce"]),
                            Path(config["events"]), config["seed"])
    controller = Controller(handler, hostname="127.0.0.1", port=config["port"],
                            server_hostname="chaos.smtp.test")
    stop = threading.Event()

    def set_enabled(flag: bool) -> None:
        handler.enabled = flag
        handler.event("faults", enabled=flag)

    signal.signal(signal.SIGUSR1, lambda *_: set_enabled(False))
    signal.signal(signal.SIGUSR2, lambda *_: set_enabled(True))
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller.start()
    print(f"ready {config['port']}", flush=True)
    while not stop.wait(0.5):
        pass
    controller.stop()
    handler.log.close()


if __name__ == "__main__":
    main(sys.argv[1])
