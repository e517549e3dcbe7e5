""""Check connection" for a mailbox: log in to its SMTP (and IMAP) server and report the answers.

Nothing is sent: connect, greet, secure the link as configured, log in, say goodbye. Each
step's failure becomes a Check with ok=False and the server's (or the network's) words,
never the secret.
"""

from __future__ import annotations

import imaplib
import smtplib
import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    service: str  # "SMTP", "IMAP" or "outbox"
    ok: bool
    answer: str  # the server's own reply, or what went wrong


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _smtp(row, secret: str, timeout: float) -> Check:
    context = ssl.create_default_context()
    try:
        if row.smtp_security == "ssl":
            conn = smtplib.SMTP_SSL(row.smtp_host, int(row.smtp_port), timeout=timeout, context=context)
        else:
            conn = smtplib.SMTP(row.smtp_host, int(row.smtp_port), timeout=timeout)
    except (smtplib.SMTPException, OSError) as exc:
        return Check("SMTP", False, f"connect: {exc!r}")
    try:
        code, reply = conn.ehlo()
        answer = f"{code} {_text(reply).splitlines()[0] if reply else ''}"
        if row.smtp_security == "starttls":
            code, reply = conn.starttls(context=context)
            conn.ehlo()
            answer = f"{code} {_text(reply)}"
        if row.smtp_username:
            code, reply = conn.login(row.smtp_username, secret)
            answer = f"{code} {_text(reply)}"
        return Check("SMTP", True, answer)
    except smtplib.SMTPResponseException as exc:
        return Check("SMTP", False, f"{exc.smtp_code} {_text(exc.smtp_error)}")
    except (smtplib.SMTPException, OSError) as exc:
        return Check("SMTP", False, repr(exc))
    finally:
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()


def _imap(row, secret: str, timeout: float) -> Check:
    context = ssl.create_default_context()
    try:
        if row.imap_security == "ssl":
            conn = imaplib.IMAP4_SSL(row.imap_host, int(row.imap_port), ssl_context=context, timeout=timeout)
        else:
            conn = imaplib.IMAP4(row.imap_host, int(row.imap_port), timeout=timeout)
            if row.imap_security == "starttls":
                conn.starttls(ssl_context=context)
    except (imaplib.IMAP4.error, OSError) as exc:
        return Check("IMAP", False, f"connect: {exc!r}")
    try:
        status, data = conn.login(row.imap_username, secret)
        return Check("IMAP", status == "OK", " ".join(_text(d) for d in data))
    except (imaplib.IMAP4.error, OSError) as exc:
        return Check("IMAP", False, str(exc))
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def check(row, secret: str, timeout: float) -> list[Check]:
    """Try the mailbox's SMTP login (and IMAP's, if it has an IMAP host); one Check each."""
    if row.backend == "outbox":
        return [Check("outbox", True, "messages are written to the outbox folder, no server")]
    found = [_smtp(row, secret, timeout)]
    if row.imap_host:
        found.append(_imap(row, secret, timeout))
    return found
