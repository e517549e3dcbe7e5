"""Legacy send-log import: a CSV exported from another sender, read into SendEvents.

Pure parsing, nothing is written anywhere. Every non-blank data row becomes either an
event or a (line number, reason) entry in `rejected`, so
len(events) + len(rejected) == the number of non-blank data rows: nothing is dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.csvfile import CsvFileError, fold_header, read_table
from timeline.analysis import SendEvent

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


# The file cannot be read as a send log at all (as opposed to one bad row): the CSV error type.
LegacyLogError = CsvFileError


@dataclass(frozen=True)
class ParseResult:
    """The events read from a legacy log, the rows that were not, and how the file was read."""

    events: list[SendEvent]
    rejected: list[tuple[int, str]]  # (line number, reason); line 1 is the header
    columns: dict[str, str] = field(default_factory=dict)  # role -> the header as written (+ "date")
    encoding: str = "utf-8"
    delimiter: str = ","


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
    names = [fold_header(h) for h in header]
    found = {}
    for role, aliases in COLUMNS.items():
        for alias in map(fold_header, aliases):
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


def parse_log(data: bytes, tz: str = "UTC") -> ParseResult:
    """Read a legacy send-log CSV into events (naive UTC) and the rows that could not be read."""
    zone = _zone(tz)
    table = read_table(data)
    header, width = table.header, len(table.header)
    columns = find_columns(header)
    events, rejected = [], []
    for first, _, values in table.records:
        try:
            # Extra cells are tolerated only when empty (trailing delimiters); missing ones never.
            if len(values) < width or any(v.strip() for v in values[width:]):
                raise ValueError(f"{len(values)} columns, expected {width}")
            events.append(_event(values, columns, zone))
        except ValueError as exc:
            rejected.append((first, str(exc)))
    named = {role: header[i] for role, i in columns.items()}
    return ParseResult(events, rejected, named, table.encoding, table.delimiter)
