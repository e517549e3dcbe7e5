"""A real SMTP server for tests (aiosmtpd on 127.0.0.1) that counts and misbehaves on cue."""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
import ssl
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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
        with self.lock:
            self.received[address] += 1
            self.messages.append(message_from_bytes(envelope.content))
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


class AuthRecorder(Recorder):
    """A Recorder that logs clients in: passwords (PLAIN/LOGIN) and XOAUTH2 bearer tokens.

    Records every attempt in `logins` as (mechanism, user, secret, ok) and the logged-in
    user of every message's connection in `identities` as (user or None, recipient).
    XOAUTH2 is not built into aiosmtpd: `auth_XOAUTH2` below is found by its name, and
    refuses a token as Google does: a 334 with an error JSON, then 535 after the
    client's empty answer.
    """

    def __init__(self, passwords: dict[str, str], tokens: dict[str, str]) -> None:
        super().__init__()
        self.passwords, self.tokens = passwords, tokens
        self.logins: list[tuple[str, str, str, bool]] = []
        self.identities: list[tuple[str | None, str]] = []

    def check_password(self, server, session, envelope, mechanism, auth_data):
        user, secret = auth_data.login.decode(), auth_data.password.decode()
        ok = user in self.passwords and self.passwords[user] == secret
        with self.lock:
            self.logins.append((mechanism, user, secret, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    async def auth_XOAUTH2(self, server, args):
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                return AuthResult(success=False, handled=False, message="501 5.5.2 Can't decode base64")
        fields = dict(part.split("=", 1) for part in blob.decode().split("\x01") if "=" in part)
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        ok = user in self.tokens and self.tokens[user] == token
        with self.lock:
            self.logins.append(("XOAUTH2", user, token, ok))
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), token.encode()))
        await server.challenge_auth('{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted (XOAUTH2)")

    async def handle_DATA(self, server, session, envelope):
        data = session.auth_data  # what the authenticator returned (login_data is deprecated)
        login = data.login.decode() if isinstance(data, LoginPassword) else None
        with self.lock:
            self.identities.append((login, envelope.rcpt_tos[0]))
        return await super().handle_DATA(server, session, envelope)


class AuthSmtpSink(SmtpSink):
    """An SmtpSink that offers AUTH PLAIN, LOGIN and XOAUTH2 (in clear: loopback only).

    With `tls` (a server SSLContext) it offers STARTTLS, or with `implicit` speaks TLS from
    the first byte (port 465 style).
    """

    def __init__(self, passwords: dict[str, str] | None = None, tokens: dict[str, str] | None = None,
                 *, tls: ssl.SSLContext | None = None, implicit: bool = False) -> None:
        self.recorder = AuthRecorder(passwords or {}, tokens or {})
        self.port = free_port()
        kwargs = {"authenticator": self.recorder.check_password, "auth_require_tls": False}
        if tls is not None and implicit:
            kwargs["ssl_context"] = tls
        elif tls is not None:
            kwargs["tls_context"] = tls
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port, **kwargs)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key, as PEM files in `folder`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context with that certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
