"""Legacy send-log import: a CSV or JSON export from another sender, read into SendEvents.

Pure parsing, nothing is written anywhere. Every non-blank data row becomes an event, a
row left out for its status (FAILED, OPENED, …: not a delivered send), or a rejected row
with its line and reason, so
len(events) + sum(left_out) + len(rejected) == the number of non-blank data rows:
nothing is dropped silently. Files are read by the one CSV reader (core/csvfile.py);
JSON arrays of objects and NDJSON (one object a line) are read here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.csvfile import CsvFileError, decode, fold_header, table_of_text
from timeline.analysis import SendEvent

DEFAULT_CAMPAIGN = "1"  # the one campaign a log without a campaign column is about
MAX_ROWS = 2_000_000  # data rows; beyond this an upload is refused (split the export by month)
ROLES = ("time", "lead", "campaign", "variant", "step", "status", "trigger", "worker")

# Header names per role, best first: a file with both sentAt and createdAt is analysed by
# the time the mail went out, not when the row was created. Compared after fold_header.
COLUMNS = {
    "time": ("sentAt", "sent_at", "Data wysyłki", "Data wysłania", "Czas wysyłki", "Czas wysłania",
             "Wysłano o", "send time", "sent time", "date sent", "deliveredAt", "delivered at",
             "createdAt", "created_at", "Data utworzenia", "timestamp", "event time", "eventTime",
             "Data i godzina", "time", "ts", "czas", "godzina", "date", "data"),
    "lead": ("leadId", "lead_id", "lead", "Id leada", "email", "e-mail", "Adres e-mail", "email address",
             "recipient", "odbiorca", "adresat", "to", "contact", "contactId", "kontakt", "subscriber",
             "subskrybent"),
    "campaign": ("campaignId", "campaign_id", "campaign", "Kampania", "Id kampanii", "Nazwa kampanii",
                 "campaign name"),
    "variant": ("variantLetter", "variant_letter", "variant", "wariant", "wersja", "version"),
    "step": ("step", "krok", "sequenceStep", "sequence_step", "step number", "Numer kroku", "etap"),
    "status": ("status", "Status wysyłki", "delivery status", "state", "stan", "event", "eventType",
               "event_type", "zdarzenie", "Typ zdarzenia", "result", "wynik"),
    "trigger": ("trigger", "wyzwalacz"),
    "worker": ("worker", "workerId", "worker_id", "proces", "process", "host"),
}
_DATE_ONLY_NAMES = {"date", "data", "dzien", "dzień", "day"}  # a date column next to a clock column

# Statuses by what they say about a send, compared after fold_header. Only "sent" rows are
# sends; "delivered" rows are too when the log has no "sent" rows (else they confirm one).
STATUSES = {
    "sent": {"sent", "send", "wysłano", "wysłany", "wysłana", "wysłane", "wysłanie", "ok", "success",
             "sukces", "completed", "done"},
    "delivered": {"delivered", "delivery", "dostarczono", "dostarczony", "dostarczona"},
    "failed": {"failed", "failure", "fail", "error", "błąd", "blad", "niepowodzenie", "nieudane",
               "niewysłano", "notsent", "rejected", "odrzucono", "dropped", "deferred"},
    "bounced": {"bounced", "bounce", "hardbounce", "softbounce", "odbicie", "zwrot", "zwrócono"},
    "engagement": {"opened", "open", "opens", "clicked", "click", "clicks", "otwarto", "otwarty",
                   "otwarcie", "kliknięto", "kliknięcie", "replied", "reply", "odpowiedź", "unsubscribed",
                   "unsubscribe", "wypisano", "spam", "spamreport", "complaint"},
    "pending": {"queued", "pending", "scheduled", "wkolejce", "oczekuje", "zaplanowano", "sending",
                "processing", "processed", "wysyłanie"},
    "skipped": {"skipped", "pominięto", "suppressed", "cancelled", "canceled", "anulowano"},
}
_STATUS_KIND = {word: kind for kind, words in STATUSES.items() for word in words}
_NULLS = {"\\N", "NULL", "null", "None"}  # how Postgres, MySQL and scripts write a missing value
_CELLS = (*ROLES, "date")

_ZONE = r"\s*(?P<zone>Z|UTC|[+-]\d{2}(?::?\d{2})?)?"
_CLOCK = r"(?P<clock>\d{1,2}:\d{2}:\d{2})(?:[.,](?P<frac>\d+))?"
_TIME = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2})[T ]" + _CLOCK + _ZONE, re.IGNORECASE)
_DAY_FIRST = re.compile(r"(?P<d>\d{1,2})[./-](?P<m>\d{1,2})[./-](?P<y>\d{4}),?[T ]\s*" + _CLOCK + _ZONE,
                        re.IGNORECASE)
_NO_SECONDS = re.compile(r"(\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{4}),?[T ]\s*\d{1,2}:\d{2}" + _ZONE,
                         re.IGNORECASE)
_CLOCK_ONLY = re.compile(r"\d{1,2}:\d{2}(:\d{2})?(?:[.,]\d+)?")
_EXCEL_SERIAL = re.compile(r"\d{5}\.\d+")  # days since 1899-12-30 with a fraction of a day
_EXCEL_EPOCH = datetime(1899, 12, 30)
_ECHO = 60  # characters of a header name, or of a cell, repeated in a message

# English reasons by kind; timeline.words has them in Polish too.
REASONS = {
    "columns": "{n} columns, expected {width}",
    "line_break": "line break inside a field",
    "empty_time": "empty time",
    "empty_lead": "empty lead",
    "empty_campaign": "empty campaign",
    "no_seconds": "time without seconds {value!r}",
    "unreadable_time": "unreadable time {value!r} (expected ISO-8601, YYYY-MM-DD HH:MM:SS, "
                       "DD.MM.YYYY HH:MM:SS or an Excel date number)",
    "invalid_time": "invalid time {value!r}",
    "time_range": "time out of range {value!r}",
    "not_object": "not a JSON object",
}


# The file cannot be read as a send log at all (as opposed to one bad row): the CSV error type.
LegacyLogError = CsvFileError


class RowError(ValueError):
    """Why one row is not an event: a kind (a key of REASONS) and the values its message names."""

    def __init__(self, kind: str, **params: object) -> None:
        super().__init__(REASONS[kind].format(**params))
        self.kind, self.params = kind, params


class MissingColumns(CsvFileError):
    """No time or no lead column was recognised: the columns must be picked by hand."""

    def __init__(self, reason: str, header: list[str], preview: list[list[str]]) -> None:
        super().__init__(reason)
        self.header, self.preview = header, preview


@dataclass(frozen=True)
class Rejection:
    """A data row that is not an event: its first line, the kind of reason and its English text."""

    line: int
    kind: str
    reason: str
    params: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ParseResult:
    """The events read from a legacy log, the rows that were not, and how the file was read."""

    events: list[SendEvent]
    rejected: list[tuple[int, str]]  # (line number, reason); line 1 is the header
    columns: dict[str, str] = field(default_factory=dict)  # role -> the header as written (+ "date")
    encoding: str = "utf-8"
    delimiter: str = ","
    rejections: list[Rejection] = field(default_factory=list)  # rejected, with the kind of reason
    left_out: dict[str, dict[str, int]] = field(default_factory=dict)  # status kind -> {status: rows}
    format: str = "csv"  # csv, json or ndjson

    def rejected_by_kind(self) -> dict[str, int]:
        """How many rows were rejected for each kind of reason."""
        return dict(Counter(r.kind for r in self.rejections).most_common())

    def left_out_rows(self) -> int:
        """Rows read but not counted as sends (FAILED, OPENED, …)."""
        return sum(n for statuses in self.left_out.values() for n in statuses.values())


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CsvFileError(f"unknown time zone {_echo(tz)!r}") from exc


def _echo(text: str) -> str:
    """A value short enough to repeat in a message (a one-line JSON header can be megabytes)."""
    return text if len(text) <= _ECHO else text[:_ECHO] + "…"


def _naive_utc(local: datetime, zone: ZoneInfo) -> datetime:
    # A naive time in the fall-back hour is ambiguous; fold=0 takes the earlier instant.
    return (local if local.tzinfo else local.replace(tzinfo=zone)).astimezone(UTC).replace(tzinfo=None)


def _zone_suffix(match: re.Match) -> str:
    zone_text = (match["zone"] or "").upper().replace("UTC", "Z")
    return zone_text + ":00" if len(zone_text) == 3 else zone_text  # "+01" -> "+01:00"


def _iso_of(match: re.Match) -> str:
    """ISO-8601 text of a matched time, day-first dates turned around."""
    parts = match.groupdict()
    date = parts["date"] if "date" in parts else f"{parts['y']}-{int(parts['m']):02d}-{int(parts['d']):02d}"
    clock = match["clock"].zfill(8)  # 9:19:09 -> 09:19:09
    frac = f".{match['frac'][:6]}" if match["frac"] else ""  # beyond microseconds is noise
    return f"{date}T{clock}{frac}{_zone_suffix(match)}"


def parse_time(value: str, zone: ZoneInfo) -> datetime:
    """A naive-UTC datetime from ISO-8601, day-first dates or Excel date numbers; naive ones are in `zone`.

    Raises RowError (a ValueError) saying why the value is not a time.
    """
    text = value.strip()
    match = _TIME.fullmatch(text) or _DAY_FIRST.fullmatch(text)
    if match is None:
        if _EXCEL_SERIAL.fullmatch(text):
            return _excel_time(text, zone)
        if _NO_SECONDS.fullmatch(text):
            # The analysis looks at the second of the minute; :00 made up here would mislead it.
            raise RowError("no_seconds", value=_echo(text))
        raise RowError("unreadable_time", value=_echo(text))
    try:
        return _naive_utc(datetime.fromisoformat(_iso_of(match)), zone)
    except ValueError as exc:
        raise RowError("invalid_time", value=_echo(text)) from exc
    except OverflowError as exc:
        raise RowError("time_range", value=_echo(text)) from exc


def _excel_time(text: str, zone: ZoneInfo) -> datetime:
    """An Excel date number (days since 1899-12-30, the day's fraction as the time), to the millisecond."""
    millis = round(float(text) * 86_400_000)
    return _naive_utc(_EXCEL_EPOCH + timedelta(milliseconds=millis), zone)


def _epoch_time(value: float) -> datetime:
    """Unix seconds, or milliseconds when the number is too big for seconds (JSON exports)."""
    seconds = value / 1000 if value > 100_000_000_000 else value
    return datetime(1970, 1, 1) + timedelta(seconds=seconds)


def _names(header: list[str]) -> str:
    shown = ", ".join(repr(_echo(h)) for h in header[:12])
    return shown + (f" and {len(header) - 12} more" if len(header) > 12 else "")


def find_columns(header: list[str], preview: list[list[str]] | None = None) -> dict[str, int]:
    """The column index for each role found in the header, preferring earlier names in COLUMNS."""
    names = [fold_header(h) for h in header]
    found: dict[str, int] = {}
    for role, aliases in COLUMNS.items():
        for alias in map(fold_header, aliases):
            if alias in names and names.index(alias) not in found.values():
                found[role] = names.index(alias)
                break
    # Excel often splits one timestamp into Date and Time columns; keep the date to join them.
    dates = [i for i, n in enumerate(names) if n in _DATE_ONLY_NAMES and i != found.get("time")]
    if dates and "time" in found:
        found["date"] = dates[0]
    for role in ("time", "lead"):
        if role not in found:
            expected = ", ".join(COLUMNS[role][:8])
            raise MissingColumns(f"no {role} column among {_names(header)}; expected one of: {expected}… "
                                 "or pick the columns by hand", header, preview or [])
    return found


def mapping_of(header: list[str], chosen: dict[str, str]) -> dict[str, int]:
    """Roles chosen by hand (role -> header name or column number from 1) as column indexes."""
    folded = [fold_header(h) for h in header]
    columns = {}
    for role, name in chosen.items():
        if role not in ROLES:
            raise CsvFileError(f"unknown role {_echo(role)!r}; use one of: {', '.join(ROLES)}")
        if name.isdigit() and 1 <= int(name) <= len(header):
            columns[role] = int(name) - 1
        elif fold_header(name) in folded:
            columns[role] = folded.index(fold_header(name))
        else:
            raise CsvFileError(f"no column {_echo(name)!r} for {role}; the columns are {_names(header)}")
    for role in ("time", "lead"):
        if role not in columns:
            raise CsvFileError(f"the {role} column must be chosen")
    return columns


def _cell(values: list[str], index: int | None) -> str:
    if index is None:
        return ""
    text = values[index].strip()
    return "" if text in _NULLS else text


def _event(values: list[str], columns: dict[str, int], zone: ZoneInfo, epoch: bool) -> SendEvent:
    """One row as a SendEvent, or RowError with the reason it cannot be one."""
    cell = dict.fromkeys(_CELLS, "")
    for role, index in columns.items():
        text = values[index].strip()
        if text and text not in _NULLS:
            if "\n" in text or "\r" in text:
                raise RowError("line_break")
            cell[role] = text
    if cell["date"] and _CLOCK_ONLY.fullmatch(cell["time"]):
        cell["time"] = f"{cell['date']} {cell['time']}"
    if not cell["time"]:
        raise RowError("empty_time")
    if epoch and re.fullmatch(r"\d{9,13}(\.\d+)?", cell["time"]):
        at = _epoch_time(float(cell["time"]))
    else:
        at = parse_time(cell["time"], zone)
    lead = cell["lead"]
    if not lead:
        raise RowError("empty_lead")
    # Addresses differ only in case for the same mailbox; opaque ids are left as they are.
    lead = lead.lower() if "@" in lead else lead
    campaign = cell["campaign"] if "campaign" in columns else DEFAULT_CAMPAIGN
    if not campaign:
        raise RowError("empty_campaign")
    return SendEvent(at, campaign, lead, cell["variant"], cell["trigger"], cell["worker"], cell["step"])


def status_kind(status: str) -> str:
    """What a status says about the send: sent, delivered, failed, bounced, engagement, pending,
    skipped or unknown ("" for no status at all, which counts as sent)."""
    if not status:
        return "sent"
    return _STATUS_KIND.get(fold_header(status), "unknown")


@dataclass
class _Source:
    """Rows to read, from CSV or JSON: the header, the records and how the file was read."""

    header: list[str]
    records: Iterator[tuple[int, int, list[str]]]
    encoding: str
    delimiter: str
    format: str


def _source(data: bytes) -> _Source:
    """The file's header and records: a JSON array, NDJSON, else CSV through the one CSV reader."""
    text, encoding = decode(data)
    if text.lstrip()[:1] in ("[", "{"):
        header, records, kind = _json_rows(text)
        return _Source(header, records, encoding, "", kind)
    table = table_of_text(text, encoding)
    return _Source(table.header, table.records, table.encoding, table.delimiter, "csv")


def _json_objects(text: str) -> tuple[list[tuple[int, object]], str]:
    """(line, value) of each element of a JSON array, or of each line of NDJSON."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            raise CsvFileError(f"line {exc.lineno}: not valid JSON ({exc.msg})", exc.lineno) from exc
        whole = None  # several values: one object a line (NDJSON)
    if isinstance(whole, dict):
        # {"data": [...]} and the like: the one list of objects in it is the log.
        lists = [v for v in whole.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        whole = lists[0] if len(lists) == 1 else [whole]
    if isinstance(whole, list):
        return _array_lines(text, whole), "json"
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                objects.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise CsvFileError(f"line {number}: not valid JSON ({exc.msg})", number) from exc
    return objects, "ndjson"


def _array_lines(text: str, values: list) -> list[tuple[int, object]]:
    """Each array element with a line number: the line of its opening brace when one object a line."""
    starts = [n for n, line in enumerate(text.splitlines(), start=1) if line.lstrip().startswith("{")]
    if len(starts) != len(values):
        starts = list(range(1, len(values) + 1))  # all on one line: number the records instead
    return list(zip(starts, values, strict=True))


def _json_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _json_rows(text: str) -> tuple[list[str], Iterator[tuple[int, int, list[str]]], str]:
    """The keys of all objects (in order of first appearance) and each object's values under them."""
    objects, kind = _json_objects(text)
    header: dict[str, None] = {}
    for _, value in objects:
        if isinstance(value, dict):
            header.update(dict.fromkeys(value))
    names = list(header)

    def rows() -> Iterator[tuple[int, int, list[str]]]:
        for line, value in objects:
                # A value that is not an object has no cells: parse_log rejects it with its line.
            yield line, line, [_json_text(value.get(n)) for n in names] if isinstance(value, dict) else []

    return names, rows(), kind


def _preview(source: _Source) -> list[list[str]]:
    head = [next(source.records, None) for _ in range(5)]
    kept = [row for row in head if row is not None]
    source.records = iter([*kept, *source.records])
    return [[_echo(c) for c in cells] for _, _, cells in kept]


def header_and_preview(data: bytes) -> tuple[list[str], list[list[str]]]:
    """The header and first rows of a log, for the page that maps its columns by hand."""
    source = _source(data)
    return source.header, _preview(source)


def parse_log(data: bytes, tz: str = "UTC", columns: dict[str, str] | None = None,
              max_rows: int = MAX_ROWS) -> ParseResult:
    """Read a legacy send log (CSV, JSON or NDJSON) into events (naive UTC) and the rows that were not.

    `columns` picks columns by hand (role -> header name or column number from 1) when the
    header names are not recognised; MissingColumns says when that is needed.
    """
    source = _source(data)
    found, rows, rejections = _read(source, tz, columns, max_rows)
    events, left_out = _sends([(event, status) for _, event, status in rows])
    named = {role: source.header[i] for role, i in found.items()}
    return ParseResult(events, [(r.line, r.reason) for r in rejections], named, source.encoding,
                       source.delimiter, rejections, left_out, source.format)


def read_rows(data: bytes, tz: str = "UTC", max_rows: int = MAX_ROWS
              ) -> tuple[list[tuple[int, SendEvent, str]], list[Rejection]]:
    """Every readable row as (first line, event, status as written), whatever its status,
    and the rejected rows: for reconcile, which needs the failed and uncertain rows too."""
    _, rows, rejections = _read(_source(data), tz, None, max_rows)
    return rows, rejections


def _read(source: _Source, tz: str, columns: dict[str, str] | None, max_rows: int
          ) -> tuple[dict[str, int], list[tuple[int, SendEvent, str]], list[Rejection]]:
    zone = _zone(tz)
    header, width = source.header, len(source.header)
    found = mapping_of(header, columns) if columns else find_columns(header, _preview(source))
    rows: list[tuple[int, SendEvent, str]] = []
    rejections: list[Rejection] = []
    for count, (first, _, values) in enumerate(source.records, start=1):
        if count > max_rows:
            raise CsvFileError(f"the log has more than {max_rows:,} rows; export a shorter period")
        try:
            if not values:
                raise RowError("not_object")
            # Extra cells are tolerated only when empty (trailing delimiters); missing ones never.
            if len(values) < width or any(v.strip() for v in values[width:]):
                raise RowError("columns", n=len(values), width=width)
            event = _event(values, found, zone, source.format != "csv")
            rows.append((first, event, _cell(values, found.get("status"))))
        except RowError as exc:
            rejections.append(Rejection(first, exc.kind, str(exc), exc.params))
    return found, rows, rejections


def _sends(rows: list[tuple[SendEvent, str]]) -> tuple[list[SendEvent], dict[str, dict[str, int]]]:
    """The rows that are delivered sends, and the others counted by status kind and status."""
    kinds = [status_kind(status) for _, status in rows]
    # "delivered" confirms a "sent" row of the same mail; it is the send only when no row says "sent".
    counted = {"sent"} if "sent" in kinds else {"delivered"}
    events, left_out = [], {}
    for (event, status), kind in zip(rows, kinds, strict=True):
        if kind in counted:
            events.append(event)
        else:
            by_status = left_out.setdefault(kind, {})
            by_status[status.upper()] = by_status.get(status.upper(), 0) + 1
    return events, left_out
