""""Check connection": log in to a mailbox's SMTP and IMAP servers and report their answers.

Nothing is sent. Each step's failure (refused, timeout, TLS, a refused login) ends that
service's check with the reason in words a person can act on; the server's own reply
text is shown as it came, with the secret scrubbed out should a server ever echo it.
"""

from __future__ import annotations

import base64
import imaplib
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from delivery.transport import smtp_authenticate, smtp_user, xoauth2_string


@dataclass(frozen=True)
class Check:
    """One service's outcome: which, whether the login worked, what the server said."""

    service: str  # "SMTP" or "IMAP"
    ok: bool
    answer: str


def check(row: Any, secret: str, timeout: float, imap_secret: str | None = None) -> list[Check]:
    """Try the mailbox's SMTP login and, when it has an IMAP host, its IMAP login.

    `secret` is the SMTP password or token; IMAP uses `imap_secret`, or the same one
    when the mailbox keeps no IMAP secret of its own.
    """
    if row.backend == "outbox":
        found = [Check("SMTP", True, "outbox: messages are written as files, no server to check")]
    else:
        found = [_scrubbed(_smtp(row, secret, timeout), secret)]
    if row.imap_host:
        imap_secret = imap_secret or secret
        found.append(_scrubbed(_imap(row, imap_secret, timeout), imap_secret))
    return found


def _scrubbed(result: Check, secret: str) -> Check:
    """The check with the secret (plain or base64) masked wherever it stands as a word of its own.

    As a word only, and not one of under 4 characters (no secret, and masking it would
    garble the answer).
    """
    answer = result.answer
    for form in {f for f in (secret, base64.b64encode(secret.encode()).decode()) if len(f) >= 4}:
        answer = re.sub(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", "***", answer)
    return Check(result.service, result.ok, answer)


def _text(reply: bytes | str | list) -> str:
    if isinstance(reply, list):
        return " ".join(_text(part) for part in reply if part is not None)
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def _network_problem(exc: BaseException, timeout: float) -> str:
    """A failure to reach or talk to a server, in words."""
    # smtplib reports a timeout or reset while reading a reply as SMTPServerDisconnected;
    # the socket's own error, its context, says which it was.
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(exc.__context__, OSError):
        exc = exc.__context__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s (timeout)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"the server closed the connection ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _smtp(row: Any, secret: str, timeout: float) -> Check:
    where = f"SMTP {row.smtp_host}:{row.smtp_port}"
    context = ssl.create_default_context()
    conn = (smtplib.SMTP_SSL(timeout=timeout, context=context) if row.smtp_security == "ssl"
            else smtplib.SMTP(timeout=timeout))
    # Connected below rather than in the constructor, to show the greeting; TLS checks the
    # certificate against _host, which only the constructor would have set.
    conn._host = row.smtp_host
    said = []
    try:
        code, banner = conn.connect(row.smtp_host, int(row.smtp_port))
        said.append(f"{code} {_text(banner)}")
        code, _ = conn.ehlo()
        if row.smtp_security == "starttls":
            code, reply = conn.starttls(context=context)
            said.append(f"STARTTLS {code} {_text(reply)}")
            conn.ehlo()
        user = smtp_user(row)
        if user:
            code, reply = smtp_authenticate(conn, row.auth_kind, user, secret)
            said.append(f"AUTH {row.auth_kind} as {user}: {code} {_text(reply)}")
        else:
            said.append("no login (no SMTP username)")
        conn.quit()
        return Check("SMTP", True, f"{where}: " + "; ".join(said))
    except smtplib.SMTPAuthenticationError as exc:
        said.append(f"login refused: {exc.smtp_code} {_text(exc.smtp_error)}")
    except smtplib.SMTPResponseException as exc:
        said.append(f"refused: {exc.smtp_code} {_text(exc.smtp_error)}")
    except (smtplib.SMTPException, OSError) as exc:
        said.append(_network_problem(exc, timeout))
    finally:
        conn.close()
    return Check("SMTP", False, f"{where}: " + "; ".join(said))


def _imap(row: Any, secret: str, timeout: float) -> Check:
    where = f"IMAP {row.imap_host}:{row.imap_port}"
    context = ssl.create_default_context()
    user = row.imap_username or smtp_user(row) or row.address
    try:
        if row.imap_security == "ssl":
            conn = imaplib.IMAP4_SSL(row.imap_host, int(row.imap_port), ssl_context=context, timeout=timeout)
        else:
            conn = imaplib.IMAP4(row.imap_host, int(row.imap_port), timeout=timeout)
    except (imaplib.IMAP4.error, OSError) as exc:  # refused, timeout, TLS, a greeting that is not OK
        return Check("IMAP", False, f"{where}: {_network_problem(exc, timeout)}")
    said = [_text(conn.welcome)]
    try:
        if row.imap_security == "starttls":
            typ, data = conn.starttls(ssl_context=context)
            said.append(f"STARTTLS {typ} {_text(data)}")
        if row.auth_kind == "xoauth2":
            token = xoauth2_string(user, secret).encode()
            typ, data = conn.authenticate("XOAUTH2", lambda challenge: token if not challenge else b"")
        else:
            typ, data = conn.login(user, secret)
        said.append(f"LOGIN {row.auth_kind} as {user}: {typ} {_text(data)}")
        conn.logout()
        return Check("IMAP", True, f"{where}: " + "; ".join(said))
    except imaplib.IMAP4.error as exc:  # a NO or BAD answer: its text is the server's
        said.append(f"login refused: {_text(str(exc))}")
    except (OSError, EOFError) as exc:
        said.append(f"connection lost: {_network_problem(exc, timeout)}")
    finally:
        if conn.state != "LOGOUT":
            try:
                conn.shutdown()
            except OSError:
                pass
    return Check("IMAP", False, f"{where}: " + "; ".join(said))
