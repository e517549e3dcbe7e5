"""The IMAP side of reading replies (#18), with IMAPClient: strictly read-only.

Salespeople read these mailboxes in Outlook or Gmail, so the reader must leave no trace:
folders are opened with EXAMINE (select_folder(readonly=True)), bodies fetched with
BODY.PEEK[] (which never sets \\Seen), and nothing here stores a flag, copies, moves,
expunges or appends. tests/test_replies_imap.py compares every flag before and after.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

FETCH_CHUNK = 25  # messages fetched at once: bounds memory, each still processed alone


class ImapError(Exception):
    """The mailbox could not be read (connection, login, a missing folder); nothing was changed."""


@dataclass(frozen=True)
class ImapSettings:
    """Where and how to log in (the secret already unsealed; never logged)."""

    host: str
    port: int
    security: str  # none | starttls | ssl
    username: str
    secret: str = ""
    auth_kind: str = "password"  # password | xoauth2 (then `secret` is the access token)
    timeout: float = 30

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"ImapSettings({self.username}@{self.host}:{self.port}, {self.security})"


@dataclass(frozen=True)
class Fetched:
    """One message as the server holds it."""

    uid: int
    raw: bytes
    received_at: datetime  # INTERNALDATE, naive UTC


def connect(settings: ImapSettings) -> IMAPClient:
    """A logged-in client: TLS per `security`, LOGIN or XOAUTH2."""
    # Only for TLS: loading the trust store costs ~0.2 s of CPU, every pass of every mailbox.
    context = ssl.create_default_context() if settings.security in ("ssl", "starttls") else None
    try:
        client = IMAPClient(settings.host, port=settings.port, ssl=settings.security == "ssl",
                            ssl_context=context if settings.security == "ssl" else None,
                            timeout=settings.timeout)
    except (OSError, IMAPClientError) as exc:
        raise ImapError(f"{settings.host}:{settings.port}: {exc}") from exc
    try:
        client.normalise_times = False  # aware INTERNALDATEs: we store UTC
        if settings.security == "starttls":
            client.starttls(context)
        if settings.auth_kind == "xoauth2":
            client.oauth2_login(settings.username, settings.secret)
        else:
            client.login(settings.username, settings.secret)
    except (OSError, IMAPClientError) as exc:
        close(client)
        raise ImapError(f"{settings.host}:{settings.port}: {_text(exc)}") from exc
    return client


def _text(exc: Exception) -> str:
    text = str(exc)
    return text[2:-1] if text.startswith(("b'", 'b"')) else text


def examine(client: IMAPClient, folder: str) -> int:
    """Open `folder` read-only (EXAMINE) and return its UIDVALIDITY."""
    try:
        status = client.select_folder(folder, readonly=True)
    except IMAPClientError as exc:
        raise ImapError(f"folder {folder!r}: {exc}") from exc
    return int(status[b"UIDVALIDITY"])


def uids_after(client: IMAPClient, last_uid: int) -> list[int]:
    """UIDs above `last_uid`, oldest first, in the folder just examined."""
    # `UID N+1:*` also matches the highest UID when none is newer (RFC 3501 6.4.8): filter.
    return sorted(uid for uid in client.search(["UID", f"{last_uid + 1}:*"]) if uid > last_uid)


def fetch(client: IMAPClient, uids: list[int]) -> Iterator[Fetched]:
    """The messages `uids`, oldest first, FETCH_CHUNK at a time; BODY.PEEK leaves \\Seen alone."""
    for start in range(0, len(uids), FETCH_CHUNK):
        chunk = uids[start:start + FETCH_CHUNK]
        data = client.fetch(chunk, ["BODY.PEEK[]", "INTERNALDATE"])
        for uid in chunk:
            if uid not in data:  # expunged meanwhile by the mailbox's owner
                continue
            yield Fetched(uid, data[uid][b"BODY[]"], _utc(data[uid].get(b"INTERNALDATE")))


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC).replace(tzinfo=None)
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def close(client: IMAPClient) -> None:
    """Log out; a connection that already broke is simply dropped."""
    try:
        client.logout()
    except (OSError, IMAPClientError):
        with contextlib.suppress(OSError):
            client.shutdown()
