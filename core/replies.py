"""Replies and bounces (#18): classify what a mailbox received, match it to a send, act on it.

Each message read over IMAP (delivery/imap.py, read-only) is processed in ONE BEGIN
IMMEDIATE transaction, fenced by the scheduler lease like a claim: the inbound_message
row (UNIQUE(mailbox, folder, uidvalidity, uid)), its effects and the folder's cursor
commit together or not at all. A crash before the commit leaves the message unread
(it is read again); after it, the unique key says "done" — so each message is processed
exactly once across crashes and restarts.

What each kind does (same transaction):
- reply: the lead's sequence stops (_stop_sequence, the seam for #17);
- auto_reply: recorded, not a stop; a return date it names delays the lead (_delay_until);
- bounce_hard (5.x.x): every permanently failed address is suppressed (reason "bounce"),
  which every claim checks, so it stops every campaign;
- bounce_soft (4.x.x): recorded only;
- unsubscribe ("wypisz mnie", "unsubscribe", …): the sender (and the matched lead) suppressed;
- unmatched: a person's mail matching no send, listed for a person; never dropped.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.utils import getaddresses
from typing import Any

from flufl.bounce import all_failures
from inscriptis import get_text
from mailparser_reply import EmailReplyParser
from sqlalchemy import Engine, bindparam, case, distinct, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from core import sequences, stats
from core.suppressions import suppress
from delivery import imap
from delivery.lease import Lease, fence
from models import (
    Campaign,
    InboundMessage,
    Lead,
    Mailbox,
    MailboxFolderState,
    ReplyKind,
    SendLog,
    SendStatus,
    campaign_mailbox,
)
from storage.database import immediate
from storage.secrets import Vault
from storage.timeutil import utcnow

log = logging.getLogger(__name__)
_inbound = InboundMessage.__table__
_cursor = MailboxFolderState.__table__
_log = SendLog.__table__
_lead = Lead.__table__
_mailbox = Mailbox.__table__

SNIPPET_CHARS = 500
UNREADABLE = "SendOnce could not read this message: open it in the mail client"
MAX_DELAY = timedelta(days=30)  # an auto-reply delays a lead at most this long
LABELS = ("interested", "not_interested", "not_a_reply")
# Tests set this to pause a reader inside a message's transaction, just before it commits
# (the crash window the SIGKILL test aims at); None in production.
before_commit: Callable[[int], None] | None = None


class LeaseLost(Exception):
    """The scheduler lease moved to another process: this reader records nothing more."""


# --- reading a message (pure) ---------------------------------------------------------


@dataclass
class Reading:
    """What a message says, before any database is asked."""

    message_id: str = ""
    in_reply_to: str = ""
    references: str = ""
    from_address: str = ""
    subject: str = ""
    text: str = ""  # the newest part only: quoted thread cut, HTML made text
    kind: str = ReplyKind.REPLY  # reply here means "a person's mail"; matching decides unmatched
    hard: set[str] = field(default_factory=set)  # permanently failed recipients (a bounce)
    soft: set[str] = field(default_factory=set)
    original_ids: list[str] = field(default_factory=list)  # Message-IDs a bounce quotes
    return_date: datetime | None = None
    detail: str = ""  # a bounce's status and diagnostic, shown as its snippet

    @property
    def thread_ids(self) -> list[str]:
        """Message-IDs this message answers or reports on, most specific first."""
        newest_first = list(reversed(message_ids(self.references)))
        return message_ids(self.in_reply_to) + newest_first + self.original_ids

    @property
    def snippet(self) -> str:
        text = self.detail or self.text
        return re.sub(r"[ \t]+", " ", re.sub(r"\n{3,}", "\n\n", text)).strip()[:SNIPPET_CHARS]


def read_message(raw: bytes, received_at: datetime) -> Reading:
    """Classify a raw message: bounce, auto-reply, unsubscribe request or a person's mail."""
    msg = message_from_bytes(raw, policy=policy.default)
    reading = Reading(message_id=_header(msg, "Message-ID"), in_reply_to=_header(msg, "In-Reply-To"),
                      references=_header(msg, "References"), from_address=_sender(msg),
                      subject=_header(msg, "Subject"))
    reading.text = latest_reply(body_text(msg))
    if _looks_like_bounce(msg, reading):
        _read_bounce(msg, raw, reading)
    elif is_auto_reply(msg, reading.subject):
        reading.kind = ReplyKind.AUTO_REPLY
        reading.return_date = return_date(f"{reading.subject}\n{reading.text}", received_at)
    elif asks_to_unsubscribe(reading.text):
        reading.kind = ReplyKind.UNSUBSCRIBE
    return reading


def _header(msg: Message, name: str) -> str:
    # A malformed header must not stop the reader: fall back to its raw text.
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError):
        value = msg.get_all(name, failobj=[""])[0] if hasattr(msg, "get_all") else ""
    return " ".join(str(value or "").split())[:2000]


def _sender(msg: Message) -> str:
    addresses = [a for _, a in getaddresses([_header(msg, "From")]) if "@" in a]
    return addresses[0].strip().lower()[:320] if addresses else ""


def message_ids(value: str) -> list[str]:
    """The <…> Message-IDs in a header value, in order."""
    return re.findall(r"<[^<>\s]+>", value or "")


def body_text(msg: EmailMessage) -> str:
    """The message's text: its text/plain part, else its HTML converted to text (inscriptis)."""
    part = msg.get_body(preferencelist=("plain", "html")) if msg.is_multipart() else msg
    if part is None or part.get_content_maintype() != "text":
        return ""
    text = _decoded(part)
    # inscriptis renders text only: no script, no style, no remote image is ever fetched.
    return get_text(text) if part.get_content_subtype() == "html" else text


def _decoded(part: Message) -> str:
    try:
        return part.get_content()
    except (LookupError, ValueError, AttributeError):  # an unknown charset or a broken encoding
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", errors="replace")


# Quote headers mail-parser-reply does not know (Gmail in Polish, Outlook's separators).
_QUOTE_START = re.compile(
    r"^(W dniu .{0,200}?napisał\(a\):|-{2,} ?(Original Message|Wiadomość oryginalna|Oryginalna wiadomość)"
    r" ?-{2,}|_{20,})\s*$", re.MULTILINE | re.IGNORECASE)


def latest_reply(text: str) -> str:
    """The newest part of a reply, the quoted thread cut (mail-parser-reply, Polish and English)."""
    text = text.replace("\r\n", "\n")
    try:
        newest = EmailReplyParser(languages=["pl", "en", "de"]).parse_reply(text) or ""
    except Exception:  # noqa: BLE001 - a parser failure must not lose the message: keep it whole
        log.exception("mail-parser-reply failed; the text is kept whole")
        newest = text
    if match := _QUOTE_START.search(newest):
        newest = newest[:match.start()]
    return "\n".join(line for line in newest.splitlines() if not line.lstrip().startswith(">")).strip()


# --- bounces ------------------------------------------------------------------------

_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|bounces?)@", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|delivery failure|failure notice|returned mail|"
    r"mail delivery (failed|system)|niedostarcz|nie dostarczono|zwrócon", re.IGNORECASE)


def is_delivery_report(msg: Message) -> bool:
    """An RFC 3464 delivery status notification (multipart/report; report-type=delivery-status)."""
    return msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"


def _looks_like_bounce(msg: Message, reading: Reading) -> bool:
    # flufl.bounce's heuristic detectors also match phrases a person may write, so they
    # run only on mail that comes from a mail system.
    return (is_delivery_report(msg) or bool(_BOUNCE_SENDER.match(reading.from_address))
            or _header(msg, "Return-Path") == "<>" or bool(_BOUNCE_SUBJECT.search(reading.subject)))


def _read_bounce(msg: EmailMessage, raw: bytes, reading: Reading) -> None:
    statuses, diagnostics = delivery_statuses(msg)
    temporary, permanent = all_failures(msg)  # Mailman 3's detectors: DSNs and ~30 other formats
    hard = {a for a, s in statuses.items() if s.startswith("5")}
    soft = {a for a, s in statuses.items() if s.startswith("4")}
    hard |= {_address(a) for a in permanent} - set(statuses)
    soft |= {_address(a) for a in temporary} - set(statuses) - hard
    reading.hard, reading.soft = hard - {""}, soft - {""}
    if not reading.hard and not reading.soft:
        reading.kind = ReplyKind.OTHER  # a success report, or a notice naming no address
        return
    reading.kind = ReplyKind.BOUNCE_HARD if reading.hard else ReplyKind.BOUNCE_SOFT
    reading.original_ids = quoted_message_ids(raw)
    reading.detail = "\n".join(f"{a}: {statuses.get(a, 'failed')} {diagnostics.get(a, '')}".strip()
                               for a in sorted(reading.hard | reading.soft))


def _address(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text.strip().strip("<>").lower()


def delivery_statuses(msg: Message) -> tuple[dict[str, str], dict[str, str]]:
    """Per failed recipient of a DSN: its Status code (e.g. 5.1.1) and Diagnostic-Code."""
    statuses, diagnostics = {}, {}
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in part.get_payload()[1:]:  # [0] is per-message, the rest per-recipient
            recipient = _address(str(block.get("Final-Recipient", "")).rpartition(";")[2])
            status = str(block.get("Status", "")).strip().split(" ")[0]
            if recipient and re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status):
                statuses[recipient] = status
                diagnostics[recipient] = " ".join(str(block.get("Diagnostic-Code", "")).split())[:300]
    return statuses, diagnostics


def quoted_message_ids(raw: bytes) -> list[str]:
    """Message-IDs of the original message a bounce quotes (attached or inline), not its own."""
    body = raw.partition(b"\r\n\r\n")[2] or raw.partition(b"\n\n")[2]
    found = re.findall(rb"^\s*Message-ID:\s*(<[^<>\s]+>)", body, re.IGNORECASE | re.MULTILINE)
    return [value.decode("ascii", "replace") for value in found]


# --- auto-replies, return dates, unsubscribe requests ----------------------------------

_AUTO_SUBJECT = re.compile(
    r"automatyczna odpowied[zź]|odpowied[zź] automatyczna|nieobecno[sś][cć]|poza biurem|"
    r"out of (the )?office|auto(matic)?[- ]?(reply|response|answer)|autoreply|abwesenheit|vacation reply",
    re.IGNORECASE)


def is_auto_reply(msg: Message, subject: str) -> bool:
    """RFC 3834 Auto-Submitted (not "no"), X-Autoreply/X-Autorespond, Precedence, or an
    out-of-office subject in Polish or English."""
    auto = _header(msg, "Auto-Submitted").lower()
    if auto and auto != "no":
        return True
    if _header(msg, "X-Autoreply") or _header(msg, "X-Autorespond") or _header(msg, "X-Autoresponder"):
        return True
    if _header(msg, "Precedence").lower() in ("auto_reply", "bulk", "junk"):
        return True
    return bool(_AUTO_SUBJECT.search(subject))


_MONTHS = {name: number for number, names in enumerate((
    ("january", "jan", "stycznia", "styczeń", "styczen"), ("february", "feb", "lutego", "luty"),
    ("march", "mar", "marca", "marzec"), ("april", "apr", "kwietnia", "kwiecień", "kwiecien"),
    ("may", "maja", "maj"), ("june", "jun", "czerwca", "czerwiec"), ("july", "jul", "lipca", "lipiec"),
    ("august", "aug", "sierpnia", "sierpień", "sierpien"),
    ("september", "sep", "sept", "września", "wrzesnia", "wrzesień", "wrzesien"),
    ("october", "oct", "października", "pazdziernika", "październik"),
    ("november", "nov", "listopada", "listopad"), ("december", "dec", "grudnia", "grudzień", "grudzien")),
    start=1) for name in names}
_MONTH = "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True))
_DATES = (
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), ("y", "m", "d")),
    (re.compile(r"\b(\d{1,2})[./](\d{1,2})[./](\d{4})\b"), ("d", "m", "y")),
    (re.compile(rf"\b({_MONTH})\.? (\d{{1,2}})(?:st|nd|rd|th)?,? (\d{{4}})\b", re.I), ("mon", "d", "y")),
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\.? ({_MONTH})\.?,? (\d{{4}})\b", re.I), ("d", "mon", "y")),
    (re.compile(r"\b(\d{1,2})\.(\d{1,2})\.?(?![\d.])"), ("d", "m")),  # "do 15.12": the next such day
)


def return_date(text: str, received_at: datetime) -> datetime | None:
    """The latest explicit date after the day received (an out-of-office's "back on"),
    at most MAX_DELAY ahead; None when the text names none."""
    today = received_at.date()
    found = [d for d in _dates(text, today) if today < d <= today + timedelta(days=366)]
    if not found:
        return None
    return min(datetime.combine(max(found), datetime.min.time()), received_at + MAX_DELAY)


def _dates(text: str, today: date) -> list[date]:
    found = []
    for pattern, order in _DATES:
        for match in pattern.finditer(text):
            parts = dict(zip(order, match.groups(), strict=True))
            month = _MONTHS[parts["mon"].lower()] if "mon" in parts else int(parts["m"])
            year = int(parts.get("y", today.year))
            try:
                found.append(day := date(year, month, int(parts["d"])))
                if "y" not in parts and day <= today:  # "do 15.01" written in December
                    found.append(date(year + 1, month, int(parts["d"])))
            except ValueError:
                continue
    return found


_UNSUBSCRIBE = [
    "wypisz", "wypisac", "wypiszcie", "wypisanie", "usunac mnie", "mnie usunac", "usuncie mnie",
    "usun mnie", "nie piszcie", "prosze nie pisac", "nie chce otrzymywac", "nie kontaktujcie sie",
    "unsubscribe", "remove me", "take me off", "stop emailing", "stop sending", "do not contact me",
    "don't contact me", "do not email me", "don't email me", "no more emails",
]
_UNSUBSCRIBE_RE = re.compile(r"\b(" + "|".join(map(re.escape, _UNSUBSCRIBE)) + r")\b")


def fold(text: str) -> str:
    """Case and Polish diacritics folded ("Proszę mnie USUNĄĆ" → "prosze mnie usunac")."""
    text = text.casefold().replace("ł", "l").replace("’", "'")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def asks_to_unsubscribe(text: str) -> bool:
    """A reply asking not to be mailed again, in Polish or English (the reply's newest part only)."""
    return bool(_UNSUBSCRIBE_RE.search(fold(text)))


# --- matching ----------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    send_log_id: int
    campaign_id: int
    lead_id: int
    email: str


def _match_columns():
    return select(_log.c.id, _log.c.campaign_id, _log.c.lead_id, _lead.c.email).join(
        _lead, _lead.c.id == _log.c.lead_id)


def match_by_ids(conn: Connection, ids: list[str]) -> Match | None:
    """The send whose Message-ID is one of `ids` (In-Reply-To first, then References)."""
    for message_id in dict.fromkeys(ids):
        row = conn.execute(_match_columns().where(_log.c.message_id == message_id)).first()
        if row is not None:
            return Match(*row)
    return None


def match_by_address(conn: Connection, mailbox_id: int, address: str) -> Match | None:
    """The most recent send to `address` through this mailbox (Gmail rewrites the headers)."""
    if not address:
        return None
    linked = select(campaign_mailbox.c.campaign_id).where(campaign_mailbox.c.mailbox_id == mailbox_id)
    row = conn.execute(_match_columns().where(
        _lead.c.email == address, or_(_log.c.mailbox_id == mailbox_id, _log.c.campaign_id.in_(linked)))
        .order_by(_log.c.claimed_at.desc(), _log.c.id.desc()).limit(1)).first()
    return None if row is None else Match(*row)


def find_match(conn: Connection, mailbox_id: int, reading: Reading) -> Match | None:
    """Headers first; then a bounce's failed recipient, or the sender of anything else."""
    found = match_by_ids(conn, reading.thread_ids)
    if found is not None:
        return found
    for address in sorted(reading.hard) + sorted(reading.soft) or [reading.from_address]:
        if found := match_by_address(conn, mailbox_id, address):
            return found
    return None


# --- recording one message and its effects (one transaction) --------------------------


def _apply(conn: Connection, kind: str, reading: Reading, match: Match | None, now: datetime) -> None:
    if kind == ReplyKind.REPLY and match:
        # In this same transaction: a reply the reader recorded stops every later claim.
        sequences.stop_for_reply(conn, match.campaign_id, match.lead_id, now)
    elif kind == ReplyKind.AUTO_REPLY and match and reading.return_date:
        sequences.delay_until(conn, match.campaign_id, match.lead_id, reading.return_date)
    elif kind == ReplyKind.BOUNCE_HARD:
        for address in sorted(reading.hard):
            suppress(conn, address, "bounce", reading.detail, now)
    elif kind == ReplyKind.UNSUBSCRIBE:
        for address in {reading.from_address, match.email if match else ""} - {""}:
            suppress(conn, address, "unsubscribed", "asked by reply", now)


def _final_kind(conn: Connection, mailbox: Any, reading: Reading, match: Match | None) -> str:
    seen = select(_inbound.c.id).where(_inbound.c.mailbox_id == mailbox.id,
                                       _inbound.c.message_id == reading.message_id).limit(1)
    if reading.message_id and conn.execute(seen).first():
        return ReplyKind.DUPLICATE  # the same mail again (another folder, a new UIDVALIDITY)
    if reading.kind == ReplyKind.REPLY and reading.from_address == mailbox.address:
        return ReplyKind.OTHER
    if reading.kind == ReplyKind.REPLY and match is None:
        return ReplyKind.UNMATCHED
    return reading.kind


def record(conn: Connection, mailbox: Any, folder: str, uidvalidity: int, fetched: imap.Fetched,
           reading: Reading, now: datetime) -> str | None:
    """Inside the caller's transaction: the message's row, its effects and the cursor.

    Returns its kind, or None when this (mailbox, folder, uidvalidity, uid) was done already.
    """
    key = (_inbound.c.mailbox_id == mailbox.id, _inbound.c.folder == folder,
           _inbound.c.uidvalidity == uidvalidity, _inbound.c.uid == fetched.uid)
    kind = None
    if conn.execute(select(_inbound.c.id).where(*key)).first() is None:
        match = find_match(conn, mailbox.id, reading)
        kind = _final_kind(conn, mailbox, reading, match)
        conn.execute(insert(_inbound).values(
            mailbox_id=mailbox.id, folder=folder, uidvalidity=uidvalidity, uid=fetched.uid,
            message_id=reading.message_id, in_reply_to=reading.in_reply_to, references=reading.references,
            from_address=reading.from_address, subject=reading.subject[:1000],
            received_at=fetched.received_at,
            kind=kind, send_log_id=match and match.send_log_id, campaign_id=match and match.campaign_id,
            lead_id=match and match.lead_id, snippet=reading.snippet, return_date=reading.return_date,
            created_at=now))
        if kind != ReplyKind.DUPLICATE:
            _apply(conn, kind, reading, match, now)
    conn.execute(update(_cursor).where(_cursor.c.mailbox_id == mailbox.id, _cursor.c.folder == folder,
                                       _cursor.c.uidvalidity == uidvalidity, _cursor.c.last_uid < fetched.uid)
                 .values(last_uid=fetched.uid))
    return kind


# --- reading mailboxes -------------------------------------------------------------


@dataclass(frozen=True)
class ReaderOptions:
    """The reader's configuration (app config keys in brackets)."""

    bounce_folder: str = ""  # [IMAP_BOUNCE_FOLDER] read besides INBOX; "" for none
    timeout: float = 30  # [IMAP_TIMEOUT] seconds
    lease_seconds: float = 180  # [LEASE_SECONDS] a fenced transaction extends the lease this long
    guard_sends: int = 100  # [BOUNCE_GUARD_SENDS]
    guard_rate: float = 0.03  # [BOUNCE_GUARD_RATE]

    @classmethod
    def from_config(cls, config: Any) -> ReaderOptions:
        """The options an app's config sets."""
        return cls(str(config.get("IMAP_BOUNCE_FOLDER", "") or ""), float(config.get("IMAP_TIMEOUT", 30)),
                   float(config.get("LEASE_SECONDS", 180)), int(config.get("BOUNCE_GUARD_SENDS", 100)),
                   float(config.get("BOUNCE_GUARD_RATE", 0.03)))


@dataclass
class ReadResult:
    """One mailbox's pass: how many messages of each kind, or why it could not be read."""

    mailbox_id: int
    address: str
    kinds: Counter = field(default_factory=Counter)
    error: str | None = None
    paused: str | None = None  # the bounce guard's reason, when it paused the mailbox

    @property
    def read(self) -> int:
        return sum(self.kinds.values())


def _fenced(conn: Connection, lease: Lease | None, now: datetime, options: ReaderOptions) -> None:
    if lease is not None and not fence(conn, lease, now, options.lease_seconds):
        raise LeaseLost("the scheduler lease is held by another process")


def _open_cursor(engine: Engine, mailbox_id: int, folder: str, uidvalidity: int, lease: Lease | None,
                 options: ReaderOptions) -> int:
    """The folder's last processed UID; a new UIDVALIDITY starts the cursor again at 0."""
    now = utcnow()
    with immediate(engine) as conn:
        _fenced(conn, lease, now, options)
        row = conn.execute(select(_cursor).where(_cursor.c.mailbox_id == mailbox_id,
                                                 _cursor.c.folder == folder)).first()
        if row is None:
            conn.execute(insert(_cursor).values(mailbox_id=mailbox_id, folder=folder, uidvalidity=uidvalidity,
                                                last_uid=0))
            return 0
        if row.uidvalidity != uidvalidity:
            log.warning("mailbox %s folder %s: UIDVALIDITY changed (%s -> %s); reading it again",
                        mailbox_id, folder, row.uidvalidity, uidvalidity)
            conn.execute(update(_cursor).where(_cursor.c.mailbox_id == mailbox_id, _cursor.c.folder == folder)
                         .values(uidvalidity=uidvalidity, last_uid=0))
            return 0
        return row.last_uid


def _read_folder(engine: Engine, client: Any, mailbox: Any, folder: str, lease: Lease | None,
                 options: ReaderOptions, kinds: Counter) -> None:
    uidvalidity = imap.examine(client, folder)
    last_uid = _open_cursor(engine, mailbox.id, folder, uidvalidity, lease, options)
    for fetched in imap.fetch(client, imap.uids_after(client, last_uid)):
        reading = _read_safely(fetched)  # parsed outside the write lock
        now = utcnow()
        with immediate(engine) as conn:
            _fenced(conn, lease, now, options)
            kind = record(conn, mailbox, folder, uidvalidity, fetched, reading, now)
            if before_commit is not None:
                before_commit(fetched.uid)
        if kind is not None:
            kinds[kind] += 1
    with immediate(engine) as conn:
        conn.execute(update(_cursor).where(_cursor.c.mailbox_id == mailbox.id, _cursor.c.folder == folder)
                     .values(read_at=utcnow()))


def _read_safely(fetched: imap.Fetched) -> Reading:
    # A message no parser can read must not block every later one (the cursor would stop
    # at it forever): it is recorded as "other", for a person to open in the mail client.
    try:
        return read_message(fetched.raw, fetched.received_at)
    except Exception:  # noqa: BLE001 - any parser failure; the message is kept, not lost
        log.exception("message uid %s could not be read; recorded as other", fetched.uid)
        return Reading(kind=ReplyKind.OTHER, detail=UNREADABLE)


def settings_of(mailbox: Any, vault: Vault, timeout: float) -> imap.ImapSettings:
    """How to log in to a mailbox's IMAP server (its secret unsealed, in memory only)."""
    return imap.ImapSettings(mailbox.imap_host, mailbox.imap_port, mailbox.imap_security,
                             mailbox.imap_username or mailbox.address, vault.open(mailbox.imap_secret),
                             mailbox.auth_kind, timeout)


def read_mailbox(engine: Engine, vault: Vault, mailbox: Any, options: ReaderOptions,
                 lease: Lease | None = None) -> ReadResult:
    """One pass over a mailbox's INBOX (and bounce folder), then, after a new hard bounce, its
    bounce-rate guard.

    Raises LeaseLost when the lease moved (what was committed stays); a mailbox that
    cannot be read gives a result with `error`.
    """
    result = ReadResult(mailbox.id, mailbox.address)
    try:
        client = imap.connect(settings_of(mailbox, vault, options.timeout))
    except imap.ImapError as exc:
        result.error = str(exc)
        return result
    try:
        for folder in ["INBOX"] + ([options.bounce_folder] if options.bounce_folder else []):
            _read_folder(engine, client, mailbox, folder, lease, options, result.kinds)
    except imap.ImapError as exc:
        result.error = str(exc)
    finally:
        imap.close(client)
    if result.kinds[ReplyKind.BOUNCE_HARD]:  # only a new bounce re-judges: a person's resume holds until then
        result.paused = guard_bounce_rate(engine, mailbox.id, options, lease)
    return result


def read_all(engine: Engine, vault: Vault, options: ReaderOptions, lease: Lease | None = None,
             mailbox_id: int | None = None) -> list[ReadResult]:
    """Read every mailbox that has an IMAP host (or only `mailbox_id`); a failing one is
    reported and the others are read. Raises LeaseLost when the lease moved."""
    query = select(_mailbox).where(_mailbox.c.imap_host != "").order_by(_mailbox.c.id)
    if mailbox_id is not None:
        query = query.where(_mailbox.c.id == mailbox_id)
    with engine.connect() as conn:
        mailboxes = conn.execute(query).all()
    results = []
    for mailbox in mailboxes:
        results.append(result := read_mailbox(engine, vault, mailbox, options, lease))
        if result.error:
            log.warning("mailbox %s (%s) not read: %s", mailbox.id, mailbox.address, result.error)
    return results


# --- the bounce-rate guard ----------------------------------------------------------


def hard_bounces(conn: Connection, mailbox_id: int, sends: int) -> int:
    """How many of the mailbox's last `sends` sends bounced permanently (a DSN said 5.x.x)."""
    last = (select(_log.c.id).where(_log.c.mailbox_id == mailbox_id)
            .order_by(_log.c.claimed_at.desc(), _log.c.id.desc()).limit(sends).subquery())
    return conn.execute(select(func.count(distinct(_inbound.c.send_log_id))).where(
        _inbound.c.kind == ReplyKind.BOUNCE_HARD, _inbound.c.send_log_id.in_(select(last.c.id)))).scalar_one()


def guard_bounce_rate(engine: Engine, mailbox_id: int, options: ReaderOptions,
                      lease: Lease | None = None) -> str | None:
    """Pause an active mailbox whose hard bounces among its last N sends exceed the rate
    (counted against N even before N sends: 4 bounces in a new mailbox's first 10 sends
    is as alarming); the reason when it paused it."""
    with immediate(engine) as conn:
        _fenced(conn, lease, utcnow(), options)
        bounced = hard_bounces(conn, mailbox_id, options.guard_sends)
        if bounced <= options.guard_rate * options.guard_sends:
            return None
        reason = (f"hard-bounce rate {bounced} of the last {options.guard_sends} sends "
                  f"({100 * bounced / options.guard_sends:.1f} %) is above {100 * options.guard_rate:.1f} %")
        active = (_mailbox.c.id == mailbox_id, _mailbox.c.status == "active")
        paused = conn.execute(update(_mailbox).where(*active).values(status="paused", pause_reason=reason))
    if not paused.rowcount:
        return None
    log.error("mailbox %s paused: %s", mailbox_id, reason)
    return reason


# --- what pages and the CLI show ------------------------------------------------------


def rows(conn: Connection, campaign_id: int | None = None, kind: str | None = None, limit: int = 50,
         offset: int = 0) -> list[Any]:
    """Recorded messages, newest first, with lead, campaign and mailbox (copies left out)."""
    campaign, mailbox = Campaign.__table__, _mailbox
    query = (select(_inbound, _lead.c.email.label("lead_email"), campaign.c.name.label("campaign_name"),
                    mailbox.c.address.label("mailbox_address"), _log.c.variant_letter)
             .outerjoin(_lead, _lead.c.id == _inbound.c.lead_id)
             .outerjoin(campaign, campaign.c.id == _inbound.c.campaign_id)
             .outerjoin(_log, _log.c.id == _inbound.c.send_log_id)
             .join(mailbox, mailbox.c.id == _inbound.c.mailbox_id)
             .where(*_filters(campaign_id, kind))
             .order_by(_inbound.c.received_at.desc(), _inbound.c.id.desc()).limit(limit).offset(offset))
    return conn.execute(query).all()


def count(conn: Connection, campaign_id: int | None = None, kind: str | None = None) -> int:
    """How many rows `rows` would list without paging."""
    query = select(func.count()).select_from(_inbound).where(*_filters(campaign_id, kind))
    return conn.execute(query).scalar_one()


def _filters(campaign_id: int | None, kind: str | None) -> list[Any]:
    found = [_inbound.c.kind != ReplyKind.DUPLICATE]
    if campaign_id is not None:
        found.append(_inbound.c.campaign_id == campaign_id)
    if kind:
        found.append(_inbound.c.kind == kind)
    return found


@dataclass(frozen=True)
class Rate:
    """One (step, variant)'s sends and how many of them were answered or bounced."""

    step: int
    variant: str
    sent: int
    replied: int
    bounced: int

    @property
    def reply_rate(self) -> float:
        return self.replied / self.sent if self.sent else 0.0

    @property
    def bounce_rate(self) -> float:
        return self.bounced / self.sent if self.sent else 0.0


_HARD = _inbound.c.kind == ReplyKind.BOUNCE_HARD
_CAMPAIGN = bindparam("campaign_id")
# A campaign's sends a person answered and those that bounced, per step and variant (rates).
_ANSWERED = (select(_log.c.step, _log.c.variant_letter,  # two replies to one send count once
                    func.count(distinct(case((~_HARD, _log.c.id)))),
                    func.count(distinct(case((_HARD, _log.c.id)))))
             .join(_log, _log.c.id == _inbound.c.send_log_id)
             .where(_inbound.c.campaign_id == _CAMPAIGN, _log.c.campaign_id == _CAMPAIGN,
                    _log.c.status == SendStatus.SENT,
                    _inbound.c.kind.in_([ReplyKind.REPLY, ReplyKind.UNSUBSCRIBE, ReplyKind.BOUNCE_HARD]),
                    or_(_inbound.c.label.is_(None), _inbound.c.label != "not_a_reply"))
             .group_by(_log.c.step, _log.c.variant_letter))

def rates(conn: Connection, campaign_id: int, counts: stats.SendCounts | None = None) -> list[Rate]:
    """Per step and variant: sends, the sends a person answered (a reply or an unsubscribe by
    reply, not an auto-reply) and the sends that bounced permanently; the answers in one query.
    counts: stats.send_counts' result when the caller has it (the campaign page counts once)."""
    if counts is None:
        counts = stats.send_counts(conn, campaign_id)
    sent = {(step, letter): n for (step, letter, status), n in counts.items() if status == SendStatus.SENT}
    answered = conn.execute(_ANSWERED, {"campaign_id": campaign_id})
    found = {(step, letter): (replied, bounced) for step, letter, replied, bounced in answered}
    return [Rate(step, letter, sent.get((step, letter), 0), *found.get((step, letter), (0, 0)))
            for step, letter in sorted(sent.keys() | found.keys())]


def set_label(engine: Engine, inbound_id: int, label: str | None, who: str) -> bool:
    """A person's judgement of a message (interested, not interested, not a reply); False if none."""
    if label is not None and label not in LABELS:
        raise ValueError(f"unknown label {label!r}")
    with immediate(engine) as conn:
        return conn.execute(update(_inbound).where(_inbound.c.id == inbound_id)
                            .values(label=label, labelled_by=who if label else None)).rowcount == 1

