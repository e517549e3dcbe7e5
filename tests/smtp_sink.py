"""A real SMTP server for tests (aiosmtpd on 127.0.0.1) that counts and misbehaves on cue."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from email import message_from_bytes

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    """A port nobody listens on now (aiosmtpd cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """aiosmtpd handler: counts delivered messages by recipient; faults are scripted.

    - rcpt_replies[addr]: replies to RCPT TO, used up one per attempt (then 250);
    - data_replies[addr]: replies to the final dot, used up one per attempt (then 250);
    - drop_after_data: recipients whose message arrives but whose connection is cut
      before the reply (the client cannot know; counted as received);
    - hold[addr]: (arrived, release) events: DATA waits until the test releases it;
    - hold_rcpt[addr]: the same at RCPT TO, before any DATA (then rcpt_replies apply).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.messages: list = []
        self.rcpt_replies: dict[str, list[str]] = {}
        self.data_replies: dict[str, list[str]] = {}
        self.drop_after_data: set[str] = set()
        self.hold: dict[str, tuple[threading.Event, threading.Event]] = {}
        self.hold_rcpt: dict[str, tuple[threading.Event, threading.Event]] = {}
        # Per message: (the login its connection authenticated as, or "", the recipient).
        self.logins: list[tuple[str, str]] = []

    def _scripted(self, table: dict[str, list[str]], address: str) -> str | None:
        with self.lock:
            replies = table.get(address)
            return replies.pop(0) if replies else None

    @staticmethod
    async def _held(table: dict, address: str) -> None:
        if address in table:
            arrived, release = table[address]
            arrived.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await self._held(self.hold_rcpt, address)
        reply = self._scripted(self.rcpt_replies, address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        (address,) = envelope.rcpt_tos
        await self._held(self.hold, address)
        reply = self._scripted(self.data_replies, address)
        if reply:
            return reply
        login = getattr(session, "sendonce_login", b"")
        with self.lock:
            self.received[address] += 1
            self.messages.append(message_from_bytes(envelope.content))
            self.logins.append((login.decode(), address))
        if address in self.drop_after_data:
            server.transport.close()
        return "250 OK queued"


class SmtpSink:
    """Start/stop a Recorder-backed server on a free loopback port."""

    def __init__(self, password: str | None = None) -> None:
        self.recorder = Recorder()
        self.port = free_port()
        kwargs = {}
        if password is not None:
            def check(server, session, envelope, mechanism, auth_data):
                ok = isinstance(auth_data, LoginPassword) and auth_data.password == password.encode()
                if ok:  # who this connection is, for the tests that count per mailbox
                    session.sendonce_login = auth_data.login
                return AuthResult(success=ok, handled=False)

            kwargs = {"authenticator": check, "auth_require_tls": False}
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        for _, release in [*self.recorder.hold.values(), *self.recorder.hold_rcpt.values()]:
            release.set()
        self.controller.stop()
