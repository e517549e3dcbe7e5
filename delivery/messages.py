"""Building one email: headers that cannot be injected, a stable Message-ID, unsubscribe.

Merge fields may contain CR/LF (from a CSV, say). The email package refuses such header
values, so single-line parts are flattened first: a newline in a name never becomes a
new header.
"""

from __future__ import annotations

import binascii
import re
import secrets
from email.charset import Charset
from email.header import Header
from email.message import Message
from email.policy import SMTP
from email.utils import formataddr, formatdate
from functools import lru_cache

import idna

# RFC 5322 allows 998 characters a line; the default 78 would fold a long unsubscribe
# URL into an encoded word, which no mail client can follow.
MAIL_POLICY = SMTP.clone(max_line_length=998)
_UTF8 = Charset("utf-8")
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def one_line(text: str) -> str:
    """Collapse every kind of line break into one space, for header values."""
    return _LINE_BREAKS.sub(" ", text).strip()


def message_id(send_log_id: int, campaign_id: int, from_address: str, installation: str) -> str:
    """A globally unique Message-ID for one send_log row (RFC 5322 3.6.4).

    Made once, at the row's first claim, and stored: every attempt of the row reuses it.
    The row and campaign ids alone repeat across installations, after a database reset
    and after a restore from an older backup (ids are reused); providers drop a second
    message whose Message-ID they already hold, and replies are matched by it. So: the
    installation's random id plus a random part of the row's own.
    """
    unique = f"{secrets.token_hex(6)}.{installation}"
    return f"<sendonce.{campaign_id}.{send_log_id}.{unique}@{id_domain(from_address)}>"


_DOT_ATOM_DOMAIN = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")
NO_DOMAIN = "sendonce.invalid"  # a Message-ID's domain when the address has no usable one


@lru_cache(maxsize=256)
def id_domain(address: str) -> str:
    """The right-hand side of a Message-ID for mail from `address`: its domain, in ASCII.

    A Message-ID header is ASCII (RFC 5322 3.6.4): an internationalized domain such as
    przykład.pl goes in as its punycode A-label (xn--przykad-rjb.pl), as DNS knows it;
    a domain that is not one (empty, a space, an address literal) gives NO_DOMAIN.
    """
    _local, at, domain = one_line(address).rpartition("@")
    if not at:
        return NO_DOMAIN
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return NO_DOMAIN
    return ascii_domain if _DOT_ATOM_DOMAIN.fullmatch(ascii_domain) else NO_DOMAIN


def new_installation_id() -> str:
    """A random installation id (stored once in app_meta)."""
    return secrets.token_hex(8)


def test_message_id(from_address: str) -> str:
    """A fresh Message-ID for a test send (never stored, never counted)."""
    return f"<sendonce.test.{secrets.token_hex(8)}@{id_domain(from_address)}>"


def build_message(
    *,
    from_address: str,
    from_name: str,
    to_address: str,
    to_name: str,
    subject: str,
    body: str,
    msg_id: str,
    unsubscribe_url: str = "",
    in_reply_to: str = "",
    references: tuple[str, ...] = (),
) -> Message:
    """A plain-text message with RFC 8058 one-click unsubscribe headers (none without a URL:
    mail to the team itself, such as alerts, is not a list to leave), and, for a follow-up in
    the same thread, In-Reply-To and References (RFC 5322 3.6.4)."""
    # A compat32 Message with pre-encoded header strings, not EmailMessage: its header
    # registry parses every value back into objects, ~2 ms a message, most of the
    # engine's time per send. The encoded words are RFC 2047's, as the email package
    # itself makes them; the body is quoted-printable by binascii's C encoder.
    msg = Message()
    msg["Content-Type"] = 'text/plain; charset="utf-8"'
    msg["MIME-Version"] = "1.0"
    msg["Content-Transfer-Encoding"] = "quoted-printable"
    msg["From"] = _address(one_line(from_name), one_line(from_address))
    msg["To"] = _address(one_line(to_name), one_line(to_address))
    msg["Subject"] = _encoded(one_line(subject))
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = one_line(msg_id)
    if in_reply_to:
        msg["In-Reply-To"] = one_line(in_reply_to)
    if references:
        msg["References"] = " ".join(one_line(r) for r in references)
    if unsubscribe_url:
        msg["List-Unsubscribe"] = f"<{one_line(unsubscribe_url)}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_payload(binascii.b2a_qp(body.encode("utf-8"), istext=True).decode("ascii"))
    return msg


def _encoded(text: str) -> str:
    """A Subject value: as is when ASCII, else RFC 2047 encoded words of ≤ 75 characters."""
    if text.isascii():
        return text
    word = _UTF8.header_encode(text)  # one encoded word: the common, short case
    return word if len(word) <= 75 else Header(text, "utf-8", header_name="Subject").encode()


@lru_cache(maxsize=256)
def _address(name: str, address: str) -> str:
    """`Name <address>`: formataddr quotes ASCII names; others become one encoded word."""
    # One word even when long: split words inside a display name come back from common
    # parsers (Python's among them) with spaces inserted mid-word. Cached: a campaign's
    # From is the same on every message.
    return formataddr((name, address)) if name.isascii() else f"{_UTF8.header_encode(name)} <{address}>"
