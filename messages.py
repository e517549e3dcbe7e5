"""Building one email: headers that cannot be injected, a stable Message-ID, unsubscribe.

Merge fields may contain CR/LF (from a CSV, say). The email package refuses such header
values, so single-line parts are flattened first: a newline in a name never becomes a
new header.
"""

from __future__ import annotations

import re
import secrets
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

# RFC 5322 allows 998 characters a line; the default 78 would fold a long unsubscribe
# URL into an encoded word, which no mail client can follow.
MAIL_POLICY = SMTP.clone(max_line_length=998)
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def one_line(text: str) -> str:
    """Collapse every kind of line break into one space, for header values."""
    return _LINE_BREAKS.sub(" ", text).strip()


def message_id(send_log_id: int, campaign_id: int, from_address: str) -> str:
    """A Message-ID that is the same on every attempt of one send_log row."""
    domain = from_address.rpartition("@")[2] or "sendonce.invalid"
    return f"<sendonce.{campaign_id}.{send_log_id}@{one_line(domain)}>"


def test_message_id(from_address: str) -> str:
    """A fresh Message-ID for a test send (never stored, never counted)."""
    domain = from_address.rpartition("@")[2] or "sendonce.invalid"
    return f"<sendonce.test.{secrets.token_hex(8)}@{one_line(domain)}>"


def build_message(
    *,
    from_address: str,
    from_name: str,
    to_address: str,
    to_name: str,
    subject: str,
    body: str,
    msg_id: str,
    unsubscribe_url: str,
) -> EmailMessage:
    """A plain-text message with RFC 8058 one-click unsubscribe headers."""
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = Address(display_name=one_line(from_name), addr_spec=one_line(from_address))
    msg["To"] = Address(display_name=one_line(to_name), addr_spec=one_line(to_address))
    msg["Subject"] = one_line(subject)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = msg_id
    msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(body, cte="quoted-printable")
    return msg
