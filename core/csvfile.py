"""CSV files in and out: the one reader (leads, suppressions, legacy logs) and formula-safe cells."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, islice

# A spreadsheet starts a cell at the field's start and, when it splits the line with
# another list separator than ours (Excel in Polish uses ";"), after any ",", ";", tab
# or line break inside it: each such spot followed by a formula character gets a quote.
_CELL_STARTS = re.compile(r"(^|[,;\t\r\n])(?=[=+\-@\t\r])")


def neutralized(cell: object) -> str:
    """A cell that a spreadsheet will not run as a formula (CSV injection): quote every cell start."""
    text = "" if cell is None else str(cell)
    return _CELL_STARTS.sub(r"\1'", text)


# The ONE CSV reader, shared by the lead import, the suppression import and legacy send logs:
# decoding (refusing ZIP/binary files), the delimiter, the header and its folding, the
# records with the physical lines they span (RFC 4180: quoted cells may hold delimiters,
# quotes and line breaks), and one error type.

DELIMITERS = (",", ";", "\t")
MAX_CELL = 10_000  # characters in a header name; longer means the first line is not a header
# csv's default 128 KiB field limit would refuse a whole file over one long cell; callers
# read the cell and reject just its row instead.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
_SNIFF_RECORDS = 20
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_C1 = re.compile(r"[\x80-\x9f]")
_POLISH = re.compile(r"[ąćęłńóśźżĄĆĘŁŃÓŚŹŻ]")
_SEP_LINE = re.compile(r"sep=([,;\t|])\r?(?:\n|\Z)", re.IGNORECASE)


class CsvFileError(ValueError):
    """A file that cannot be read as CSV at all (as opposed to one bad row)."""

    def __init__(self, reason: str, line: int = 1) -> None:
        super().__init__(reason)
        self.line = line


@dataclass
class Table:
    """A decoded CSV file: how it was read, its header and its data records (read once)."""

    encoding: str  # a Python codec name: utf-8, utf-8-sig, utf-16, cp1250 or iso-8859-2
    delimiter: str
    header: list[str]
    records: Iterator[tuple[int, int, list[str]]]  # (first line, last line, cells), non-blank


def fold_header(name: str) -> str:
    """A header compared case-, space- and punctuation-insensitively: 'E-mail' == 'e mail' == 'EMAIL'."""
    return "".join(c for c in name.casefold() if c.isalnum())


def decode(data: bytes) -> tuple[str, str]:
    """The text and its codec; CsvFileError for ZIP, binary or undecodable data."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"  # Excel's "Unicode text" export
        except UnicodeDecodeError as exc:
            raise CsvFileError("this is not a CSV file: it is broken UTF-16 text") from exc
    if data.startswith(b"PK\x03\x04"):
        raise CsvFileError("this is a spreadsheet or other ZIP file, not CSV: save it as CSV first")
    if b"\x00" in data:
        raise CsvFileError("this is not a CSV file: it contains binary data")
    if data.startswith(codecs.BOM_UTF8):
        try:
            return data.decode("utf-8-sig"), "utf-8-sig"
        except UnicodeDecodeError:
            data = data[len(codecs.BOM_UTF8):]  # an editor appended cp1250 text after the BOM
    try:
        # Windows-1250 text with Polish letters is almost never valid UTF-8, so valid UTF-8
        # is taken as UTF-8 and the order tells a Polish Excel export apart.
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return _decode_polish(data)


def _decode_polish(data: bytes) -> tuple[str, str]:
    """Windows-1250 or ISO-8859-2 (the two Polish 8-bit encodings): the one giving more Polish letters."""
    readings = []
    for codec in ("cp1250", "iso-8859-2"):
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        # ISO-8859-2 decodes any byte; 0x80-0x9f are control codes there, never in real text.
        if codec == "cp1250" or not _C1.search(text):
            readings.append((len(_POLISH.findall(text)), codec == "cp1250", text, codec))
    if not readings:
        raise CsvFileError("this is not a CSV file: it is neither UTF-8 nor Windows-1250 "
                           "(or ISO-8859-2) text")
    _, _, text, codec = max(readings)
    return text, codec


def _looks_binary(text: str) -> bool:
    sample = text[:65536]
    return len(_CONTROL.findall(sample)) * 100 > len(sample)


def sniff_delimiter(text: str) -> tuple[str, bool]:
    """The delimiter (comma, semicolon or tab), and whether an Excel "sep=" first line declared it."""
    declared = _SEP_LINE.match(text)
    if declared:
        return declared.group(1), True
    # csv.Sniffer guesses from character frequencies and is easily fooled by commas in
    # names; the delimiter that splits the first records into equal widths >1 is surer.
    # A tie goes to the one most frequent in the first line, then to the comma.
    first = text.split("\n", 1)[0]
    return max(DELIMITERS, key=lambda d: (*_consistency(text, d), first.count(d), d == ",")), False


def _consistency(text: str, delimiter: str) -> tuple[float, int]:
    try:
        widths = [len(cells) for _, _, cells in islice(records(text, delimiter), _SNIFF_RECORDS)]
    except CsvFileError:
        return 0.0, 0
    if not widths or widths[0] < 2:
        return 0.0, 0
    return sum(width == widths[0] for width in widths) / len(widths), widths[0]


def records(text: str, delimiter: str) -> Iterator[tuple[int, int, list[str]]]:
    """Non-blank records as (first line, last line, cells), counting physical lines (RFC 4180)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    end, start = 0, 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if (cells and cells[0].strip()) or "".join(cells).strip():  # the first cell mostly settles it
                yield start, end, cells
    except csv.Error as exc:
        raise CsvFileError(f"line {end + 1}: {exc} (an unclosed quote?)", end + 1) from exc
    # A quote never closed swallows every later row into one cell, silently; a last record
    # spanning several lines with an odd number of quotes is that case.
    if end > start and _odd_quotes_from(text, start):
        raise CsvFileError(f"line {start}: a quoted cell is never closed, so the rows after "
                           "it cannot be read", start)


def _odd_quotes_from(text: str, line: int) -> bool:
    lines = io.StringIO(text, newline="").readlines()
    return "".join(lines[line - 1:]).count('"') % 2 == 1


def clean_header(cells: list[str]) -> list[str]:
    """Header names stripped, trailing empty ones dropped, other empty ones named column_N."""
    names = [cell.strip() for cell in cells]
    if any(len(name) > MAX_CELL for name in names):
        raise CsvFileError(f"line 1: a column name is longer than {MAX_CELL:,} characters; "
                           "is the first line a header?")
    while names and not names[-1]:
        names.pop()  # Excel writes trailing delimiters when a later row is wider
    return [name or f"column_{index + 1}" for index, name in enumerate(names)]


def read_table(data: bytes) -> Table:
    """Decode, find the delimiter and read the header; CsvFileError if the file cannot be read."""
    return table_of_text(*decode(data))


def table_of_text(text: str, encoding: str) -> Table:
    """The header and records of text that `decode` gave."""
    if not text.strip():
        raise CsvFileError("the file is empty")
    if _looks_binary(text):
        raise CsvFileError("this is not a CSV file: it contains binary data")
    delimiter, declared = sniff_delimiter(text)
    rows = records(text, delimiter)
    if declared:
        next(rows)  # Excel's "sep=;" line is not the header
    first = next(rows, None)
    if first is None:
        raise CsvFileError("the file has no header line")
    return Table(encoding, delimiter, clean_header(first[2]), rows)


def peek(table: Table, count: int) -> list[list[str]]:
    """The first `count` data records' cells, left in table.records for the caller to read."""
    head = list(islice(table.records, count))
    table.records = chain(head, table.records)
    return [cells for _, _, cells in head]

def quoted(raw: str) -> str:
    """Untrusted text for a message (e.g. a rejection reason): neutralized, then repr-quoted."""
    return repr(neutralized(raw))
