"""The one CSV reader (core/csvfile.py) that leads, suppressions and legacy logs all go through."""

from __future__ import annotations

import codecs
import csv
import io
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from core import csvfile, importer, suppressions
from core.csvfile import CsvFileError, decode, fold_header, read_table
from models import Lead, Suppression
from timeline import legacy_log

CORPUS = Path(__file__).parent / "data" / "csv"
NOW = datetime(2026, 3, 12, 11, 0)
POLISH = "Zażółć gęślą jaźń ŁÓDŹ Śląsk"


def rows(data: bytes) -> list[tuple[int, int, list[str]]]:
    return list(read_table(data).records)


@pytest.mark.parametrize(("data", "text", "label"), [
    ("e-mail;imię\n".encode(), "e-mail;imię\n", "utf-8"),
    (codecs.BOM_UTF8 + "e-mail;imię\n".encode(), "e-mail;imię\n", "utf-8-sig"),
    # A BOM says UTF-8, but an editor appended Windows-1250 text after it.
    (codecs.BOM_UTF8 + f"a;{POLISH}\n".encode("cp1250"), f"a;{POLISH}\n", "cp1250"),
    (f"a;{POLISH}\n".encode("cp1250"), f"a;{POLISH}\n", "cp1250"),
    (f"a;{POLISH}\n".encode("iso-8859-2"), f"a;{POLISH}\n", "iso-8859-2"),
    (f"a\t{POLISH}\n".encode("utf-16"), f"a\t{POLISH}\n", "utf-16"),
])
def test_every_encoding_a_polish_office_writes_is_read_with_one_label(data, text, label):
    assert decode(data) == (text, label)


@pytest.mark.parametrize(("data", "message"), [
    ((CORPUS / "workbook.xlsx").read_bytes(), "spreadsheet or other ZIP file, not CSV: save it as CSV first"),
    (b"email\na@x.pl\x00\n", "it contains binary data"),
    ((CORPUS / "image.png").read_bytes(), "binary data"),
    (b"\x01\x02\x03\x04abc,def\n" * 50, "binary data"),
    (bytes(range(1, 256)) * 4, "neither UTF-8 nor Windows-1250"),
    (b"", "the file is empty"),
    (codecs.BOM_UTF8 + b"\r\n \n", "the file is empty"),
    (b'email,notes\na@x.pl,"never closed\nb@x.pl,Bob\n', "line 2: a quoted cell is never closed"),
])
def test_unreadable_files_raise_the_one_error_type(data, message):
    with pytest.raises(CsvFileError, match=message):
        rows(data)  # records are read lazily: an unclosed quote shows when they are


def test_leads_suppressions_and_legacy_logs_share_the_error_type():
    assert importer.CsvImportError is CsvFileError and legacy_log.LegacyLogError is CsvFileError


@pytest.mark.parametrize(("text", "delimiter"), [
    ("email,first_name\na@x.pl,Ann\n", ","),
    ("email;imię;firma\na@x.pl;Anna;Kowalski, Nowak i S-ka\n", ";"),  # a comma inside a cell
    ("email\tnotes\na@x.pl\tone, two; three\n", "\t"),
    ("sep=;\nemail,x;firma\na@x.pl,1;ACME\n", ";"),  # Excel's declared separator wins
    ("email\na@x.pl\n", ","),
])
def test_one_delimiter_sniffer(text, delimiter):
    assert read_table(text.encode()).delimiter == delimiter


@pytest.mark.parametrize(("names", "folded"), [
    (["E-mail", "e_mail", " EMAIL ", "e mail", "E.Mail"], "email"),
    (["Data wysyłki", "data_wysyłki", "DATA-WYSYŁKI"], "datawysyłki"),
    (["sentAt", "Sent At", "SENT_AT"], "sentat"),
])
def test_one_header_folding_rule(names, folded):
    assert {fold_header(name) for name in names} == {folded}


def test_the_header_is_cleaned_once_for_everyone():
    table = read_table(b" email ;;Firma;;\na@x.pl;1;ACME;;\n")
    assert table.header == ["email", "column_2", "Firma"]


def test_rfc4180_quoted_cells_span_lines_and_keep_the_line_numbers():
    data = (b'id,body,who\r\n'
            b'1,"first line\r\nsecond, with a comma\r\n""quoted"" third",ann\r\n'
            b'2,plain,bob\r\n'
            b'3,"a\n\nblank line inside",cy\r\n')
    assert rows(data) == [
        (2, 4, ["1", 'first line\r\nsecond, with a comma\r\n"quoted" third', "ann"]),
        (5, 5, ["2", "plain", "bob"]),
        (6, 8, ["3", "a\n\nblank line inside", "cy"]),
    ]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.text(alphabet='ab ,;\t"\r\nł', max_size=8), min_size=3, max_size=3),
                min_size=1, max_size=15))
def test_any_rfc4180_file_written_by_pythons_csv_reads_back(cells):
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", quoting=csv.QUOTE_ALL)
    writer.writerow(["a", "b", "c"])
    writer.writerows(cells)
    data = out.getvalue().encode()
    expected = [row for row in cells if "".join(row).strip()]  # blank records are not data
    assert [record for _, _, record in rows(data)] == expected


def test_the_suppression_import_reads_a_bom_with_cp1250_text(engine):
    data = codecs.BOM_UTF8 + "Adres e-mail;Powód\nłukasz@example.pl;Rezygnacja\r\n".encode("cp1250")
    assert suppressions.import_csv(engine, data, NOW) == (1, [])
    with engine.connect() as conn:
        assert conn.scalars(select(Suppression.email)).all() == ["łukasz@example.pl"]


def test_the_suppression_import_keeps_line_numbers_across_a_multi_line_cell(engine):
    data = b'email,note\nbad,"one\ntwo"\nok@example.com,x\nworse,y\n'
    assert suppressions.import_csv(engine, data, NOW)[1] == [
        (2, "An email address must have an @-sign."), (5, "An email address must have an @-sign.")]


def test_the_lead_import_reads_latin2_and_bom_with_cp1250(engine):
    latin2 = "E-mail;Imię;Nazwisko\nzofia@example.pl;Zofia;Śląska\n".encode("iso-8859-2")
    bom_cp1250 = codecs.BOM_UTF8 + "E-mail;Imię\njan@example.pl;Łukasz\n".encode("cp1250")
    assert importer.run_import(engine, latin2).imported == 1
    assert importer.run_import(engine, bom_cp1250).imported == 1
    with engine.connect() as conn:
        names = dict(conn.execute(select(Lead.email, Lead.last_name)).all())
    assert names["zofia@example.pl"] == "Śląska"
    assert importer.sniff(latin2).encoding == "iso-8859-2"


def test_a_legacy_log_is_read_by_the_same_reader():
    # Excel's "sep=" line and a ZIP refusal, which the legacy reader did not know before.
    result = legacy_log.parse_log(b"sep=;\nsentAt;leadId\n2025-01-14 09:00:00;1\n")
    assert (result.delimiter, len(result.events)) == (";", 1)
    with pytest.raises(CsvFileError, match="save it as CSV first"):
        legacy_log.parse_log((CORPUS / "workbook.xlsx").read_bytes())


def test_neutralized_is_still_the_writer_helper():
    assert csvfile.neutralized("=1+1") == "'=1+1"
