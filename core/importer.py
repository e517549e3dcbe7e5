"""CSV import of leads, the way a listmonk or lemlist user expects it.

Two steps, like the import page: `sniff` reads an upload and proposes a column mapping
(encoding, delimiter and header aliases detected); `run_import` applies a mapping. A bad
row is reported with the physical line it starts on and never stops the good ones; a file
that cannot be read at all raises CsvImportError before anything is written.

At 100,000 rows the file is parsed and validated before the write lock is taken, and the
database is then touched by a few statements (one lookup of the file's addresses, one
executemany insert with ids chosen under the lock, one executemany update) inside one
BEGIN IMMEDIATE transaction: a concurrent claim waits only for that part, and only a
committed import is ever visible. The per-row work is kept to what the row needs: see
check_address and _stored_values.
"""

from __future__ import annotations

import csv
import functools
import gc
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import email_validator
from email_validator import EmailNotValidError
from email_validator.rfc_constants import EMAIL_MAX_LENGTH
from email_validator.syntax import validate_email_domain_name, validate_email_local_part
from sqlalchemy import Connection, Engine, Text, bindparam, insert, select, update

from core import csvfile, leads
from core.csvfile import neutralized, quoted
from models import SEARCH_FIELDS, Campaign, Lead, Variant, lead_search_text
from storage.bulk import binder, executemany
from storage.database import immediate, next_ids
from storage.sqlfunc import json_texts
from storage.texts import N_
from storage.timeutil import utcnow

TARGETS = ("email", "first_name", "last_name", "company", "tags")  # plus "field:<name>", "skip"
FIELD = "field:"
SKIP = "skip"
PREVIEW_ROWS = 5
# A longer cell (a runaway 10 MB line, say) rejects its row; csvfile reads it whole first.
MAX_CELL = csvfile.MAX_CELL
_ENROLL_CHUNK = 2000  # leads per enroll transaction: ~2 s of write lock at most

# Compared after csvfile.fold_header: case, spaces and punctuation ignored.
_HEADER_ALIASES = {
    "email": {"email", "e mail", "mail", "adres email", "adres e mail", "email address",
              "e mail address"},
    "first_name": {"first name", "firstname", "imię", "imie"},
    "last_name": {"last name", "lastname", "surname", "nazwisko"},
    "company": {"company", "company name", "firma", "nazwa firmy", "organization", "organisation"},
    "tags": {"tags", "tag", "tagi"},
}
_ALIAS_TARGET = {csvfile.fold_header(alias): target for target, aliases in _HEADER_ALIASES.items()
                 for alias in aliases}
# json.dumps's own string encoder (ASCII escapes): a dict of strings written with it, as
# '{"key": "value", ...}', is exactly json.dumps's text, without its ~5 µs a call.
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii
_ADDRESS_LIKE = re.compile(r"\S+@\S+\.\S+")


# A file that cannot be imported at all (nothing was written): the one CSV error type.
CsvImportError = csvfile.CsvFileError


@dataclass
class Sniffed:
    encoding: str  # a Python codec name: utf-8, utf-8-sig, cp1250 or utf-16
    delimiter: str
    header: list[str]
    preview: list[list[str]]  # the first data rows, cells as in the file
    suggested_mapping: dict[int, str]  # column index -> target

    def targets(self) -> list[str]:
        """What any column may be mapped to: the lead's own fields, a custom field per column, skip."""
        return [*TARGETS, *_field_targets(self.header), SKIP]


@dataclass
class _Table:
    encoding: str
    delimiter: str
    header: list[str]
    preview: list[list[str]]
    rows: Iterator[tuple[int, int, list[str]]]  # (first line, last line, cells); read once


@dataclass
class _Record:
    """One lead's values, from a row or from the database."""

    first_name: str = ""
    last_name: str = ""
    company: str = ""
    tags: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def copy(self) -> _Record:
        """An independent copy (its tags and fields are not shared)."""
        return _Record(self.first_name, self.last_name, self.company, list(self.tags), dict(self.fields))

    def merge(self, later: _Record) -> None:
        """Take later's values: a later value fills in, an empty one never erases."""
        for name in ("first_name", "last_name", "company"):
            if value := getattr(later, name):
                setattr(self, name, value)
        self.tags += [tag for tag in later.tags if tag not in self.tags]
        for key, value in later.fields.items():
            # An empty value still adds its key: templates treat a missing field as an error.
            if value or key not in self.fields:
                self.fields[key] = value


_Values = tuple[str, str, str, str, str]  # first_name, last_name, company, tags, fields (JSON)


@dataclass
class _Rows:
    """The file's good rows by normalized address, in file order (of each address's first row)."""

    build: Callable[[list[str]], _Record]
    fast_values: Callable[[list[str]], _Values]
    first: dict[str, list[str]] = field(default_factory=dict)  # each address's one row, as read
    lines: dict[str, int] = field(default_factory=dict)  # the line each address is on

    def record(self, address: str) -> _Record:
        """The address's values from the file."""
        return self.build(self.first[address])

    def values(self, address: str) -> _Values:
        """The address's values from the file, in database form."""
        return self.fast_values(self.first[address])


@dataclass
class ImportReport:
    """What an import did: every data row is imported, merged or rejected, every blank line listed."""

    imported: int = 0  # new leads
    merged: int = 0  # rows that matched an existing lead (a repeat within the file is rejected)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    blank: list[int] = field(default_factory=list)  # empty lines between rows, skipped
    lead_ids: list[int] = field(default_factory=list)  # distinct, in file order
    enrolled: int = 0  # new enrollments when imported into a campaign


def import_leads(engine: Engine, data: bytes) -> ImportReport:
    """Insert or merge leads from CSV bytes (run_import with the suggested mapping).

    A file that cannot be read at all changes nothing and comes back as one rejection,
    at its line, rather than as an exception: callers print the report either way.
    """
    try:
        return run_import(engine, data)
    except CsvImportError as exc:
        return ImportReport(rejected=[(exc.line, str(exc))])


def sniff(data: bytes) -> Sniffed:
    """Encoding, delimiter, header, the first rows and a suggested mapping of an upload."""
    table = _open(data)
    preview = [[cell if len(cell) <= MAX_CELL else cell[:MAX_CELL] + "…" for cell in row]
               for row in table.preview]  # shown on a page: a runaway cell is not
    return Sniffed(table.encoding, table.delimiter, table.header, preview,
                   suggest_mapping(table.header, table.preview))


def suggest_mapping(header: list[str], preview: list[list[str]]) -> dict[int, str]:
    """Known headers to their targets (each once), any other column to a custom field."""
    mapping: dict[int, str] = {}
    for index, (name, custom) in enumerate(zip(header, _field_targets(header), strict=True)):
        target = _ALIAS_TARGET.get(csvfile.fold_header(name))
        mapping[index] = target if target and target not in mapping.values() else custom
    if "email" not in mapping.values():
        guess = _address_column(preview, len(header))
        if guess is not None:
            mapping[guess] = "email"
    return mapping


def run_import(engine: Engine, data: bytes, mapping: dict[int, str] | None = None, *,
               campaign_id: int | None = None) -> ImportReport:
    """Insert or merge the file's leads (and enroll them); bad rows are reported, not fatal."""
    table = _open(data)
    if any(_ADDRESS_LIKE.fullmatch(name) for name in table.header):
        # Taking it for a header would silently drop the first lead.
        raise CsvImportError(N_("the first line holds an address, not column names: "
                                "add a header line (for example email,first_name)"))
    if mapping is None:
        mapping = suggest_mapping(table.header, table.preview)
    mapping = _checked_mapping(mapping, table.header)
    report = ImportReport()
    with _cycle_collector_paused():
        rows = _collect(table, mapping, report)
        with immediate(engine) as conn:
            if campaign_id is not None:
                _check_campaign(conn, campaign_id)
            _store(conn, rows, report)
    if campaign_id is not None:
        report.enrolled = _enroll(engine, campaign_id, report.lead_ids)
    return report


@contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector while the file's rows are held in memory.

    Each row is a few new containers that stay alive until the end, so the collector keeps
    walking an ever larger heap of them to find no garbage: ~20% of the import's time. The
    rows hold no cycles; whatever others leave meanwhile is collected a few seconds later.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _enroll(engine: Engine, campaign_id: int, lead_ids: list[int]) -> int:
    """Enroll in chunks, each its own transaction; returns how many enrollments are new."""
    # enroll takes its own write lock, so it cannot share the import's (the campaign was
    # checked there, so it does not fail after the leads are committed). It spends ~1 ms a
    # lead: one call for 100,000 would hold the lock far past a claim's busy timeout.
    # Re-enrolling is a no-op, so a crash between chunks is mended by importing again.
    return sum(leads.enroll(engine, campaign_id, lead_ids[at:at + _ENROLL_CHUNK])
               for at in range(0, len(lead_ids), _ENROLL_CHUNK))


def rejected_csv(report: ImportReport, header: tuple[str, str] = ("line", "reason"),
                 translate: Callable[[str], str] = str) -> str:
    """The rejected rows as CSV text (line, reason), safe to open in a spreadsheet."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows((line, neutralized(translate(reason))) for line, reason in report.rejected)
    return out.getvalue()


def check_address(raw: str) -> str:
    """The normalized address, or EmailNotValidError with email-validator's reason."""
    address = leads.normalize_email(raw)
    # The authority: every rejection, and its reason, comes from email-validator's validate_email.
    return address if _parts_accepted(address) else leads.check_email(raw)


def _parts_accepted(address: str) -> bool:
    """Whether email-validator's own checks of the local part and the domain accept a plain address.

    validate_email costs ~90 µs an address (9 s per 100,000 rows): ~60 µs checking the domain
    (Unicode, IDNA), the same verdict for every address at that domain, and ~14 µs splitting
    the address one character at a time. For an ASCII address with one "@" and no quote or
    bracket the split is simply at the "@", so the library's checks of the two parts are called
    directly and the domain's verdict is cached. Such an address is its own normalized and
    ASCII form, so within EMAIL_MAX_LENGTH it passes validate_email's length checks too. This
    only ever accepts; anything else goes to validate_email (a property test holds the two
    together).
    """
    if (not address.isascii() or len(address) > EMAIL_MAX_LENGTH or address.count("@") != 1
            or '"' in address or "<" in address or "[" in address):
        return False  # quoting, a display name or a domain literal: the full parse decides
    local, _, domain = address.partition("@")
    try:
        validate_email_local_part(local, email_validator.ALLOW_SMTPUTF8, email_validator.ALLOW_EMPTY_LOCAL,
                                  False, email_validator.STRICT)
    except EmailNotValidError:
        return False
    return _domain_accepted(domain, email_validator.TEST_ENVIRONMENT, email_validator.GLOBALLY_DELIVERABLE)


@functools.lru_cache(maxsize=65_536)
def _domain_accepted(domain: str, test_environment: bool, globally_deliverable: bool) -> bool:
    """email-validator's verdict on a domain, when normalization leaves it as it is."""
    if not domain:
        return False
    try:
        info = validate_email_domain_name(domain, test_environment, globally_deliverable)
    except EmailNotValidError:
        return False
    # An IDNA domain has a Unicode normal form of another length: validate_email checks that form.
    return info["domain"] == info["ascii_domain"] == domain


def _open(data: bytes) -> _Table:
    """Read the file with the one CSV reader and keep its first rows for the preview."""
    table = csvfile.read_table(data)
    preview = csvfile.peek(table, PREVIEW_ROWS)
    return _Table(table.encoding, table.delimiter, table.header, preview, table.records)


def _field_targets(header: list[str]) -> list[str]:
    """A custom-field target per column, named after its header; a repeat gets its column number."""
    targets: list[str] = []
    for index, name in enumerate(header):
        target = FIELD + name
        targets.append(target if target not in targets else f"{target}_{index + 1}")
    return targets


def _address_column(preview: list[list[str]], width: int) -> int | None:
    """The first column whose previewed cells all look like addresses, if any."""
    for index in range(width):
        cells = [row[index].strip() for row in preview if index < len(row) and row[index].strip()]
        if cells and all("@" in cell for cell in cells):
            return index
    return None


def _checked_mapping(mapping: dict[int, str], header: list[str]) -> dict[int, str]:
    """The mapping without skipped columns; CsvImportError if it cannot be applied."""
    used: dict[str, int] = {}
    for index, target in mapping.items():
        if not isinstance(index, int) or not 0 <= index < len(header):
            raise CsvImportError(f"column {index} is not in the file (it has {len(header)} columns)")
        if target == SKIP:
            continue
        if isinstance(target, str) and target.startswith(FIELD) and target[len(FIELD):].strip():
            target = FIELD + target[len(FIELD):].strip()
        elif target not in TARGETS:
            raise CsvImportError(f"column {header[index]!r}: unknown target {target!r}")
        if target in used:
            first, second = repr(header[used[target]]), repr(header[index])
            raise CsvImportError(N_("columns %(first)s and %(second)s are both mapped to %(target)s",
                                    first=first, second=second, target=target))
        used[target] = index
    if "email" not in used:
        raise CsvImportError(N_("no email column: name one 'email' or map a column to email"))
    return {index: target for target, index in used.items()}


def _collect(table: _Table, mapping: dict[int, str], report: ImportReport) -> _Rows:
    """Good rows by normalized address, in file order; bad ones go to report.rejected."""
    # Runs for every row: a well-formed row costs one length test, one normalization and,
    # for an address not seen before in the file, one address check; its values are read
    # at insert time (_stored_values).
    width, email_at = len(table.header), next(i for i, target in mapping.items() if target == "email")
    rows = _Rows(_builder(mapping), _stored_values(mapping))
    first, first_line, previous_end = rows.first, rows.lines, None
    for start, end, cells in table.rows:
        if previous_end is not None:  # the reader skips blank lines: say so, line by line
            report.blank.extend(range(previous_end + 1, start))
        previous_end = end
        if len(cells) != width or max(map(len, cells)) > MAX_CELL:
            reason = _too_long(cells, mapping) or _width_problem(cells, width, start, end)
            if reason:
                report.rejected.append((start, reason))
                continue
        raw = cells[email_at]
        address = leads.normalize_email(raw)
        if address in first:
            # Two rows for one person are a mistake to show, not a merge to guess at: a
            # silent merge replaced a surname with a colleague's and listed nothing.
            report.rejected.append((start, N_("same address as line %(line)d", line=first_line[address])))
        elif reason := _address_problem(raw, address):
            report.rejected.append((start, reason))
        else:
            first[address], first_line[address] = cells, start
    return rows


def _too_long(cells: list[str], mapping: dict[int, str]) -> str:
    """Why the row is rejected if a cell that would be stored exceeds MAX_CELL, else ""."""
    longest = max((len(cells[index]) for index in mapping if index < len(cells)), default=0)
    if longest <= MAX_CELL:
        return ""
    found, limit = f"{longest:,}", f"{MAX_CELL:,}"
    return N_("a cell holds %(found)s characters; at most %(limit)s are accepted", found=found, limit=limit)


def _width_problem(cells: list[str], width: int, start: int, end: int) -> str:
    """Why the row is rejected if it has too few columns or extra non-empty ones, else ""."""
    if len(cells) == width or (len(cells) > width and not "".join(cells[width:]).strip()):
        return ""
    if end > start:
        return N_("expected %(width)d columns, found %(found)d (the row spans lines %(start)d-%(end)d: "
                  "an unclosed quote?)", width=width, found=len(cells), start=start, end=end)
    return N_("expected %(width)d columns, found %(found)d", width=width, found=len(cells))


def _address_problem(raw: str, address: str) -> str:
    """Why the row is rejected if its address (raw as in the file, and normalized) is bad, else ""."""
    if not address:
        return N_("no email address")
    if _parts_accepted(address):  # check_address, without normalizing the address again
        return ""
    try:
        leads.check_email(raw)
    except EmailNotValidError as exc:
        return N_("invalid email %(address)s: %(detail)s", address=quoted(raw), detail=neutralized(exc))
    return ""


def _builder(mapping: dict[int, str]) -> Callable[[list[str]], _Record]:
    """A function from a row's cells to its record (the mapping is sorted out once, not per row)."""
    plain = [(index, target) for index, target in mapping.items() if target in TARGETS[1:4]]
    custom = [(index, target[len(FIELD):]) for index, target in mapping.items() if target.startswith(FIELD)]
    tags_at = next((index for index, target in mapping.items() if target == "tags"), None)

    def build(cells: list[str]) -> _Record:
        return _Record(**{name: cells[index].strip() for index, name in plain},
                       tags=[] if tags_at is None else _split_tags(cells[tags_at]),
                       fields={name: cells[index].strip() for index, name in custom})
    return build


def _stored_values(mapping: dict[int, str]) -> Callable[[list[str]], _Values]:
    """A function from a row's cells straight to its stored values, as build + _record_values.

    Most rows are a lead's only row: they skip the _Record and json.dumps (~10 µs a row).
    """
    at = {target: index for index, target in mapping.items()}
    first_at, last_at, company_at, tags_at = (at.get(name) for name in TARGETS[1:])
    custom = [(_json_string(target[len(FIELD):]) + ": ", index)
              for index, target in mapping.items() if target.startswith(FIELD)]
    tag_text: dict[str, str] = {}  # a file repeats a few tag cells on every row: split each once

    def values(cells: list[str]) -> _Values:
        tags = "" if tags_at is None else cells[tags_at]
        if tags not in tag_text:
            tag_text[tags] = ",".join(_split_tags(tags))
        return ("" if first_at is None else cells[first_at].strip(),
                "" if last_at is None else cells[last_at].strip(),
                "" if company_at is None else cells[company_at].strip(),
                tag_text[tags],
                "{" + ", ".join([key + _json_string(cells[index].strip()) for key, index in custom]) + "}")
    return values


def _record_values(record: _Record) -> _Values:
    """A file record's stored values: names, tags as the database keeps them, fields as JSON text."""
    fields = ", ".join([_json_string(key) + ": " + _json_string(value)
                        for key, value in record.fields.items()])
    return record.first_name, record.last_name, record.company, ",".join(record.tags), "{" + fields + "}"


def _split_tags(value: str) -> list[str]:
    # Commas are what the database stores; semicolons come from Polish spreadsheets.
    return list(dict.fromkeys(filter(None, map(str.strip, value.replace(";", ",").split(",")))))


def _check_campaign(conn: Connection, campaign_id: int) -> None:
    if conn.execute(select(Campaign.id).where(Campaign.id == campaign_id)).first() is None:
        raise CsvImportError(f"campaign {campaign_id} does not exist")
    weights = conn.execute(select(Variant.weight)
                           .where(Variant.campaign_id == campaign_id, Variant.step == 1)).scalars()
    if not any(weight > 0 for weight in weights):
        raise CsvImportError(f"campaign {campaign_id} has no variant to assign leads to")


def _store(conn: Connection, rows: _Rows, report: ImportReport) -> None:
    """Insert new leads and merge into existing ones; fills the report's counts and ids."""
    _refuse_erased(conn, rows, report)
    existing = _existing(conn, list(rows.first))
    new = [email for email in rows.first if email not in existing]
    ids = dict(zip(new, _insert(conn, new, rows), strict=True))
    _update(conn, [(lead_id, email, before, rows.record(email))
                   for email, (lead_id, before) in existing.items()])
    ids.update((email, lead_id) for email, (lead_id, _) in existing.items())
    report.imported = len(new)
    report.merged += len(existing)
    report.lead_ids = [ids[email] for email in rows.first]


def _refuse_erased(conn: Connection, rows: _Rows, report: ImportReport) -> None:
    """Reject the rows of addresses erased on request (GDPR/RODO): they never come back."""
    erased = leads.erased_keys(conn)  # read under the import's write lock: no erasure slips by
    if not erased:
        return
    for address in [a for a in rows.first if leads.erased_key(a) in erased]:
        del rows.first[address]
        report.rejected.append((rows.lines[address], N_("this address was erased on request (GDPR) "
                                                        "and cannot be imported again")))
    report.rejected.sort()


def _existing(conn: Connection, emails: list[str]) -> dict[str, tuple[int, _Record]]:
    """The leads the file's addresses already belong to: id and values by address."""
    if not emails:
        return {}
    lead = Lead.__table__
    # One statement for the whole file: the addresses go in as one JSON array, and the
    # database walks it, looking each up in lead's email index (0.03 s per 100,000; chunked
    # IN (...) lists cost a statement compile per 500 addresses, ~1 s, under the write lock).
    listed = json_texts(bindparam("emails", type_=Text)).table_valued("value")
    rows = conn.execute(select(lead.c.id, lead.c.email, lead.c.first_name, lead.c.last_name,
                               lead.c.company, lead.c.tags, lead.c.fields)
                        .select_from(listed.join(lead, lead.c.email == listed.c.value)),
                        {"emails": json.dumps(emails)})
    return {row.email: (row.id, _Record(row.first_name or "", row.last_name or "", row.company or "",
                                        _split_tags(row.tags or ""), dict(row.fields or {})))
            for row in rows}


def _insert(conn: Connection, emails: list[str], rows: _Rows) -> list[int]:
    """Insert the new leads; returns their ids, in the order of emails."""
    if not emails:
        return []
    lead = Lead.__table__
    # Ids chosen here (max + 1 under SQLite's write lock; the sequence on PostgreSQL) spare
    # reading 100,000 rows back to learn them.
    ids = next_ids(conn, lead.name, len(emails))
    now = binder(conn, lead.c.created_at)(utcnow())
    columns = ("id", "email", "first_name", "last_name", "company", "tags", "fields", "created_at", "search")
    # Values in database form at the driver's speed (storage/bulk.py): the file's fields are
    # JSON text already (_stored_values).
    executemany(conn, insert(lead), [dict(zip(columns, (lead_id, email, *values, now, _search(email, values)),
                                              strict=True))
                                     for lead_id, email in zip(ids, emails, strict=True)
                                     for values in (rows.values(email),)])
    return ids


def _update(conn: Connection, pairs: list[tuple[int, str, _Record, _Record]]) -> None:
    """Write back each existing lead whose values the file changes."""
    lead = Lead.__table__
    to_json, changes = binder(conn, lead.c.fields), []
    for lead_id, email, before, from_file in pairs:
        after = before.copy()
        after.merge(from_file)
        if after != before:
            tags = ",".join(after.tags)
            changes.append({"b_id": lead_id, "b_first": after.first_name, "b_last": after.last_name,
                            "b_company": after.company, "b_tags": tags, "b_fields": to_json(after.fields),
                            "b_search": _search(email, (after.first_name, after.last_name,
                                                        after.company, tags))})
    executemany(conn, update(lead).where(lead.c.id == bindparam("b_id")).values(
        first_name=bindparam("b_first"), last_name=bindparam("b_last"), company=bindparam("b_company"),
        tags=bindparam("b_tags"), fields=bindparam("b_fields"), search=bindparam("b_search")), changes)


def _search(email: str, values: tuple) -> str:
    """lead.search for an address and its (first name, last name, company, tags, ...) values."""
    return lead_search_text(dict(zip(SEARCH_FIELDS, (email, *values[:4]), strict=True)))
