"""Legacy send-log import: a CSV exported from another sender, read into SendEvents.

Pure parsing, nothing is written anywhere. Every non-blank data row becomes either an
event or a (line number, reason) entry in `rejected`, so
len(events) + len(rejected) == the number of non-blank data rows: nothing is dropped silently.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from timeline.analysis import SendEvent

if TYPE_CHECKING:
    from _csv import Reader  # the type csv.reader() returns

DEFAULT_CAMPAIGN = "1"  # the one campaign a log without a campaign column is about

# Header names per role as the issue lists them, best first: a file with both sentAt and
# createdAt is analysed by the time the mail went out, not when the row was created.
COLUMNS = {
    "time": ("sentAt", "sent_at", "createdAt", "created_at", "timestamp", "time", "date"),
    "lead": ("leadId", "lead_id", "lead", "email", "recipient", "to"),
    "campaign": ("campaignId", "campaign_id", "campaign"),
    "variant": ("variantLetter", "variant_letter", "variant"),
    "trigger": ("trigger",),
    "worker": ("worker", "workerId", "worker_id"),
}

_ZONE = r"\s*(?P<zone>Z|UTC|[+-]\d{2}(?::?\d{2})?)?"
_TIME = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<clock>\d{2}:\d{2}:\d{2})(?:[.,](?P<frac>\d+))?"
                   + _ZONE, re.IGNORECASE)
_NO_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}" + _ZONE, re.IGNORECASE)
_CLOCK_ONLY = re.compile(r"\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?")


class LegacyLogError(ValueError):
    """The file cannot be read as a send log at all (as opposed to one bad row)."""


@dataclass(frozen=True)
class ParseResult:
    """The events read from a legacy log, the rows that were not, and how the file was read."""

    events: list[SendEvent]
    rejected: list[tuple[int, str]]  # (line number, reason); line 1 is the header
    columns: dict[str, str] = field(default_factory=dict)  # role -> the header as written (+ "date")
    encoding: str = "utf-8"
    delimiter: str = ","


def normalize_header(name: str) -> str:
    """Header text compared case- and separator-insensitively: 'Sent At' == 'SENT-AT' == 'sentAt'."""
    return "".join(c for c in name.casefold() if c.isalnum())


def decode(data: bytes) -> tuple[str, str]:
    """The text and its encoding: UTF-16 with a BOM (Excel's "Unicode text"), UTF-8, else cp1250."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16"), "utf-16"
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        # A BOM says UTF-8, but an editor may have appended cp1250 text after it.
        return data.removeprefix(codecs.BOM_UTF8).decode("cp1250"), "cp1250"
    except UnicodeDecodeError as exc:
        raise LegacyLogError(f"the file is neither UTF-8 nor Windows-1250 text ({exc.reason})") from exc


def sniff_delimiter(header_line: str) -> str:
    """The most frequent of comma, semicolon and tab in the header line (comma on a tie)."""
    return max((",", ";", "\t"), key=lambda d: (header_line.count(d), d == ","))


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise LegacyLogError(f"unknown time zone {tz!r}") from exc


def parse_time(value: str, zone: ZoneInfo) -> datetime:
    """A naive-UTC datetime from ISO-8601 or 'YYYY-MM-DD HH:MM:SS'; naive values are in `zone`."""
    text = value.strip()
    match = _TIME.fullmatch(text)
    if match is None:
        if _NO_SECONDS.fullmatch(text):
            # The analysis looks at the second of the minute; :00 made up here would mislead it.
            raise ValueError(f"time without seconds {text!r}")
        raise ValueError(f"unreadable time {text!r} (expected ISO-8601 or YYYY-MM-DD HH:MM:SS)")
    frac = f".{match['frac'][:6]}" if match["frac"] else ""  # beyond microseconds is noise
    zone_text = (match["zone"] or "").upper().replace("UTC", "Z")
    zone_text = zone_text + ":00" if len(zone_text) == 3 else zone_text  # "+01" -> "+01:00"
    try:
        at = datetime.fromisoformat(f"{match['date']}T{match['clock']}{frac}{zone_text}")
        # A naive time in the fall-back hour is ambiguous; fold=0 takes the earlier instant.
        return (at if at.tzinfo else at.replace(tzinfo=zone)).astimezone(UTC).replace(tzinfo=None)
    except ValueError as exc:
        raise ValueError(f"invalid time {text!r}: {exc}") from exc
    except OverflowError as exc:
        raise ValueError(f"time out of range {text!r}") from exc


def find_columns(header: list[str]) -> dict[str, int]:
    """The column index for each role found in the header, preferring earlier names in COLUMNS."""
    names = [normalize_header(h) for h in header]
    found = {}
    for role, aliases in COLUMNS.items():
        for alias in map(normalize_header, aliases):
            if alias in names:
                found[role] = names.index(alias)
                break
    # Excel often splits one timestamp into Date and Time columns; keep the date to join them.
    if "date" in names and found.get("time") != names.index("date"):
        found["date"] = names.index("date")
    for role in ("time", "lead"):
        if role not in found:
            expected = ", ".join(COLUMNS[role])
            raise LegacyLogError(f"no {role} column in the header {header!r}; expected one of: {expected}")
    return found


def _event(values: list[str], columns: dict[str, int], zone: ZoneInfo) -> SendEvent:
    """One row as a SendEvent, or ValueError with the reason it cannot be one."""
    cell = {role: values[i].strip() for role, i in columns.items()}
    if any("\n" in v or "\r" in v for v in cell.values()):
        raise ValueError("line break inside a field")
    if "date" in cell and _CLOCK_ONLY.fullmatch(cell["time"]):
        clock = cell["time"] if cell["time"][2] == ":" else "0" + cell["time"]  # 9:19:09 -> 09:19:09
        cell["time"] = f"{cell['date']} {clock}"
    if not cell["time"]:
        raise ValueError("empty time")
    at = parse_time(cell["time"], zone)
    lead = cell["lead"]
    if not lead:
        raise ValueError("empty lead")
    # Addresses differ only in case for the same mailbox; opaque ids are left as they are.
    lead = lead.lower() if "@" in lead else lead
    campaign = cell.get("campaign", DEFAULT_CAMPAIGN)
    if not campaign:
        raise ValueError("empty campaign")
    optional = {role: cell.get(role, "") for role in ("variant", "trigger", "worker")}
    return SendEvent(at, campaign, lead, **optional)


def _header(reader: Reader) -> tuple[list[str], int]:
    """The first non-blank row, trailing empty cells removed, and its width."""
    for row in reader:
        if any(v.strip() for v in row):
            while row and not row[-1].strip():
                row = row[:-1]  # a trailing delimiter is an Excel habit, not a column
            return row, len(row)
    raise LegacyLogError("the file has no header row")


def _rows(reader: Reader) -> list[tuple[int, int, list[str]]]:
    """Non-blank rows as (first line, last line, values); quoted fields may span lines."""
    rows, line = [], reader.line_num
    try:
        for values in reader:
            if any(v.strip() for v in values):
                rows.append((line + 1, reader.line_num, values))
            line = reader.line_num
    except csv.Error as exc:
        raise LegacyLogError(f"line {line + 1}: {exc}") from exc
    return rows


def parse_log(data: bytes, tz: str = "UTC") -> ParseResult:
    """Read a legacy send-log CSV into events (naive UTC) and the rows that could not be read."""
    zone = _zone(tz)
    text, encoding = decode(data)
    if not text.strip():
        raise LegacyLogError("the file is empty")
    delimiter = sniff_delimiter(text.lstrip().split("\n", 1)[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, width = _header(reader)
    columns = find_columns(header)
    events, rejected = [], []
    for first, last, values in _rows(reader):
        try:
            # Extra cells are tolerated only when empty (trailing delimiters); missing ones never.
            if len(values) < width or any(v.strip() for v in values[width:]):
                raise ValueError(f"{len(values)} columns, expected {width}")
            events.append(_event(values, columns, zone))
        except ValueError as exc:
            # An unclosed quote swallows the following lines into one row; say so.
            spans = f" (the row spans lines {first}–{last}: an unclosed quote?)" if last > first else ""
            rejected.append((first, f"{exc}{spans}"))
    named = {role: header[i] for role, i in columns.items()}
    return ParseResult(events, rejected, named, encoding, delimiter)
