"""Mail transports behind one small interface: real SMTP, or .eml files in an outbox.

SMTP has no exactly-once: a connection lost after the final "." of DATA may or may not
have delivered (RFC 1047). So the SMTP transport walks MAIL, RCPT and DATA by hand and
knows which side of that line a failure fell on: before it, the message was certainly
not delivered (safe to retry); after it, the outcome is `unknown` and no code retries it.

Every send also has a total deadline (`send_deadline`, counted from its claim), checked
before each command and last right before the final dot: a process that was frozen or
slowed past it drops the connection without the dot, so the server discards the message
(RFC 5321 4.1.1.4). That bounds how late a claim can still deliver, which is what lets
STALE_SENDING_SECONDS have a floor (`stale_floor`) and a person decide an `unknown` row
without racing its claimer (sender.py's ledger).
"""

from __future__ import annotations

import logging
import math
import os
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, select

from delivery.messages import MAIL_POLICY
from models import Mailbox, SendStatus
from storage.secrets import SecretError, Vault

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    status: SendStatus  # SENT, RETRY, FAILED or UNKNOWN
    reply: str
    suppress: bool = False  # the server permanently refused this recipient
    config_error: bool = False  # e.g. bad credentials: every message would fail alike
    campaign_fault: bool = False  # the campaign's own fault (a template): pause it, not the mailbox


class Transport(Protocol):
    def send(self, msg: Message, sender: str, recipient: str, deadline: float = math.inf) -> Result: ...
    def close(self) -> None: ...


def send_deadline(smtp_timeout: float) -> float:
    """Seconds one send may take from its claim to the final dot: room for connect,
    EHLO/STARTTLS/AUTH, MAIL, RCPT, DATA and the payload, each bounded by SMTP_TIMEOUT."""
    return 4 * smtp_timeout


def stale_floor(smtp_timeout: float) -> float:
    """The least STALE_SENDING_SECONDS may be: the deadline, one more SMTP_TIMEOUT for the
    reply to the final dot, and one as a margin (scheduling, the outcome's first write)."""
    return send_deadline(smtp_timeout) + 2 * smtp_timeout


class DeadlinePassed(Exception):
    """The send's deadline passed before the final dot: nothing was delivered."""


NOT_SENT_LATE = "not sent: the send deadline passed before the end of DATA"


def _by_code(code: int, reply: str, *, recipient: bool = False) -> Result:
    """Classify a refusal that happened before delivery: 4xx transient, 5xx permanent."""
    if 400 <= code < 500:
        return Result(SendStatus.RETRY, f"{code} {reply}")
    return Result(SendStatus.FAILED, f"{code} {reply}", suppress=recipient and code >= 500)


def _decode(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _dot_stuffed(data: bytes) -> bytes:
    """The DATA payload as smtplib.SMTP.data() would send it, before the final dot."""
    data = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def _left(deadline: float) -> float:
    """Seconds left before the deadline; raises DeadlinePassed when there are none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlinePassed
    return left


def xoauth2_string(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response (before base64): user, bearer token, two ^A."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def smtp_authenticate(conn: smtplib.SMTP, auth_kind: str, username: str, secret: str) -> tuple[int, bytes]:
    """AUTH on an open connection: LOGIN/PLAIN with a password, or SASL XOAUTH2 with a token.

    Every refusal raises SMTPAuthenticationError (a configuration error: every message
    would meet it), also a server that offers no AUTH or keeps challenging.
    """
    try:
        if auth_kind == "xoauth2":
            # A refused token gets a 334 with an error JSON first; the client answers it
            # with an empty line and the server then says 535 (Google's and Microsoft's way).
            return conn.auth("XOAUTH2", lambda challenge=None: "" if challenge is not None
                             else xoauth2_string(username, secret), initial_response_ok=True)
        return conn.login(username, secret)
    except (smtplib.SMTPAuthenticationError, smtplib.SMTPServerDisconnected):
        raise
    except smtplib.SMTPException as exc:  # no AUTH offered, too many challenges
        raise smtplib.SMTPAuthenticationError(530, str(exc).encode()) from exc


class SmtpTransport:
    """smtplib with one connection reused for a batch; reconnects after any failure."""

    def __init__(self, host: str, port: int, *, security: str = "none", username: str = "",
                 password: str = "", timeout: float = 30.0, auth_kind: str = "password") -> None:
        self.host, self.port, self.security = host, port, security
        self.username, self._password, self.timeout = username, password, timeout
        self.auth_kind = auth_kind  # password | xoauth2 (then `password` is the access token)
        self._conn: smtplib.SMTP | None = None
        self._context: ssl.SSLContext | None = None  # made at the first TLS connect, then reused

    def _connect(self, deadline: float = math.inf) -> smtplib.SMTP:
        if self._conn is not None:
            return self._conn
        # Only for TLS, and once: building a context (loading the CA store) costs ~50 ms of
        # CPU, which the bench saw paid on every connect of every lane.
        context = self._tls() if self.security in ("ssl", "starttls") else None
        timeout = min(self.timeout, _left(deadline))
        if self.security == "ssl":
            conn = smtplib.SMTP_SSL(self.host, self.port, timeout=timeout, context=context)
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=timeout)
        try:
            conn.ehlo()
            if self.security == "starttls":
                conn.starttls(context=context)
                conn.ehlo()
            if self.username:
                smtp_authenticate(conn, self.auth_kind, self.username, self._password)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context()
        return self._context

    def close(self) -> None:
        """Say QUIT if the connection is still up, then drop it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _arm(self, conn: smtplib.SMTP, deadline: float) -> None:
        """Before a command: give up if the deadline passed, else bound the wait by it."""
        left = _left(deadline)
        if conn.sock is not None:
            conn.sock.settimeout(min(self.timeout, left))

    def send(self, msg: Message, sender: str, recipient: str, deadline: float = math.inf) -> Result:
        """Deliver one message; the Result says whether it may be retried.

        `deadline` (a time.monotonic() value): the final dot is never sent after it.
        """
        if not (sender.isascii() and recipient.isascii()):
            # An internationalized address needs SMTPUTF8 end to end, which we do not
            # speak: refused before any command, so the connection stays usable.
            return Result(SendStatus.FAILED, "not sent: a non-ASCII address needs SMTPUTF8, not supported")
        try:
            conn = self._connect(deadline)
        except DeadlinePassed:
            return Result(SendStatus.RETRY, NOT_SENT_LATE)
        except smtplib.SMTPAuthenticationError as exc:
            return Result(SendStatus.RETRY, f"{exc.smtp_code} {_decode(exc.smtp_error)}", config_error=True)
        except smtplib.SMTPResponseException as exc:
            return _by_code(exc.smtp_code, _decode(exc.smtp_error))
        except (smtplib.SMTPException, OSError) as exc:
            return Result(SendStatus.RETRY, f"connect: {exc!r}")
        before_data = self._before_data(conn, sender, recipient, deadline)
        if before_data is not None:
            return before_data
        payload = _dot_stuffed(msg.as_bytes(policy=MAIL_POLICY)) + b".\r\n"
        try:
            # The point of no return, checked last right here: the payload ends with the
            # final dot and goes out in one write whose wait is bounded by the deadline, so
            # the dot is handed over before the deadline or not at all. (One write, not the
            # body and then the dot: a lone 3-byte write waits out a delayed ACK, ~40 ms.)
            self._arm(conn, deadline)
            conn.send(payload)
        except DeadlinePassed:
            self._drop()
            return Result(SendStatus.RETRY, NOT_SENT_LATE)
        except (smtplib.SMTPException, OSError) as exc:
            # The write did not complete, so its last bytes, the end-of-data dot, never all
            # went out: the server discards the message when we hang up (RFC 5321 4.1.1.4).
            self._drop()
            return Result(SendStatus.RETRY, f"lost during DATA, before the final dot: {exc!r}")
        try:
            conn.sock.settimeout(self.timeout)  # the answer to a sent dot is worth its wait
            code, reply = conn.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            # The final dot may have reached the server: delivery is unknowable.
            self._drop()
            return Result(SendStatus.UNKNOWN, f"lost after DATA: {exc!r}")
        if code == 250:
            return Result(SendStatus.SENT, f"{code} {_decode(reply)}")
        return _by_code(code, _decode(reply))

    def _before_data(self, conn: smtplib.SMTP, sender: str, recipient: str,
                     deadline: float) -> Result | None:
        """MAIL, RCPT, DATA; a Result if the server refused or vanished (not delivered)."""
        try:
            self._arm(conn, deadline)
            code, reply = conn.mail(sender)
            if code != 250:
                conn.rset()
                return _by_code(code, _decode(reply))
            self._arm(conn, deadline)
            code, reply = conn.rcpt(recipient)
            if code not in (250, 251):
                conn.rset()
                return _by_code(code, _decode(reply), recipient=True)
            self._arm(conn, deadline)
            code, reply = conn.docmd("DATA")
            if code != 354:
                conn.rset()
                return _by_code(code, _decode(reply))
        except DeadlinePassed:
            self._drop()
            return Result(SendStatus.RETRY, NOT_SENT_LATE)
        except Exception as exc:  # noqa: BLE001 - whatever it was, DATA was not reached
            # Not delivered, but the session is in an unknown state: drop it, so the next
            # message starts clean instead of meeting "503 nested MAIL command".
            self._drop()
            return Result(SendStatus.RETRY, f"lost before DATA: {exc!r}")
        return None


class OutboxTransport:
    """Writes each message as an .eml file: the development default, no server needed."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def send(self, msg: Message, sender: str, recipient: str, deadline: float = math.inf) -> Result:
        """Write the message atomically (temp file, then rename); the rename is the dot."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # mails carry personal data
        name = re.sub(r"[^A-Za-z0-9.@_-]", "", str(msg["Message-ID"])) + ".eml"
        tmp = self.folder / f".{name}.tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(msg.as_bytes(policy=MAIL_POLICY))
        if time.monotonic() >= deadline:
            tmp.unlink()
            return Result(SendStatus.RETRY, NOT_SENT_LATE)
        os.replace(tmp, self.folder / name)
        return Result(SendStatus.SENT, f"outbox {name}")

    def close(self) -> None:
        """Nothing to close."""


def make_transport(config: dict) -> Transport:
    """The transport MAIL_BACKEND names, built from the app's configuration."""
    backend = config["MAIL_BACKEND"]
    if backend == "outbox":
        return OutboxTransport(config["OUTBOX_DIR"])
    if backend == "smtp":
        return SmtpTransport(
            config["SMTP_HOST"], int(config["SMTP_PORT"]), security=config["SMTP_SECURITY"],
            username=config["SMTP_USERNAME"], password=config["SMTP_PASSWORD"],
            timeout=float(config["SMTP_TIMEOUT"]),
        )
    raise ValueError(f"MAIL_BACKEND must be 'outbox' or 'smtp', not {backend!r}")


class Unusable:
    """A transport that sends nothing: the mailbox cannot be used as configured (a secret
    that cannot be decrypted, a mailbox gone). Every send is a configuration error, so the
    engine pauses the mailbox instead of failing its leads one by one."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def send(self, msg: Message, sender: str, recipient: str, deadline: float = math.inf) -> Result:
        """Refuse, before any connection: nothing was delivered."""
        return Result(SendStatus.RETRY, self.reason, config_error=True)

    def close(self) -> None:
        """Nothing to close."""


def mailbox_transport(row: Any, secret: str, *, timeout: float, outbox_dir: str) -> Transport:
    """The transport of one mailbox row (backend, SMTP settings, auth kind) with its opened secret."""
    if row.backend == "outbox":
        return OutboxTransport(outbox_dir)
    if row.backend != "smtp":
        return Unusable(f"mailbox {row.id}: unknown backend {row.backend!r}")
    return SmtpTransport(row.smtp_host, int(row.smtp_port), security=row.smtp_security,
                         username=smtp_user(row), password=secret, timeout=timeout,
                         auth_kind=row.auth_kind)


def smtp_user(row: Any) -> str:
    """Who the mailbox logs in as: its SMTP username; for XOAUTH2 without one, its address
    (the token's owner). Empty: no AUTH (a relay that trusts this host)."""
    if row.smtp_username or row.auth_kind != "xoauth2":
        return row.smtp_username
    return row.address


class MailboxTransports:
    """One transport per mailbox for the sending threads, rebuilt when the mailbox changes.

    Each transport is used by one thread at a time (one sending thread per mailbox); the
    cache itself is shared, so it is guarded by a lock. A mailbox edited since its
    transport was made (a new `updated_at`) gets a new one and the old connection is
    closed, so a changed password or host takes effect at the next send. That close is
    why `for_mailbox(id)` belongs to the thread sending through mailbox `id`: called from
    another, it could close a connection in the middle of that thread's send.
    """

    def __init__(self, engine: Engine, config: Mapping) -> None:
        self.engine, self.config = engine, config
        self._lock = threading.Lock()
        self._cache: dict[int | None, tuple[datetime | None, Transport]] = {}

    def for_mailbox(self, mailbox_id: int | None) -> Transport:
        """The transport for a mailbox; None: the app's configured one (campaigns without mailboxes)."""
        if mailbox_id is None:
            with self._lock:
                if None not in self._cache:
                    self._cache[None] = (None, make_transport(self.config))
                return self._cache[None][1]
        table = Mailbox.__table__
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == mailbox_id)).first()
        version = row.updated_at if row is not None else None
        with self._lock:
            old = self._cache.get(mailbox_id)
            if old is not None and old[0] == version and row is not None:
                return old[1]
            fresh = self._build(mailbox_id, row)
            if isinstance(fresh, Unusable):  # not kept: a repaired key file works at the next send
                self._cache.pop(mailbox_id, None)
            else:
                self._cache[mailbox_id] = (version, fresh)
        if old is not None:
            old[1].close()  # outside the lock: QUIT may wait on the network
        return fresh

    def _build(self, mailbox_id: int, row: Any) -> Transport:
        if row is None:
            return Unusable(f"no mailbox {mailbox_id}")
        try:
            secret = Vault(self.config["MAILBOX_KEY_FILE"]).open(row.smtp_secret)
        except (SecretError, OSError, ValueError) as exc:  # wrong, unreadable or malformed key file
            logger.error("mailbox %s: %s", mailbox_id, exc)
            return Unusable(f"the mailbox's password cannot be read: {exc}")
        return mailbox_transport(row, secret, timeout=float(self.config["SMTP_TIMEOUT"]),
                                 outbox_dir=self.config["OUTBOX_DIR"])

    def close(self) -> None:
        """Close every transport (QUIT where connected) and forget them."""
        with self._lock:
            transports, self._cache = [t for _, t in self._cache.values()], {}
        for transport in transports:
            transport.close()
