"""CSV import over a corpus of awkward files (tests/data/csv): exact counts and reasons."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest
from email_validator import EmailNotValidError
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from core import importer, leads
from core.importer import CsvImportError, ImportReport, rejected_csv, run_import, sniff
from helpers import make_campaign
from models import CampaignLead, Lead
from storage.database import immediate

pytestmark = pytest.mark.postgres  # runs again on PostgreSQL (make test)

CORPUS = Path(__file__).parent / "data" / "csv"


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def all_leads(engine) -> dict[str, dict]:
    """Every lead by address, as plain values."""
    with engine.connect() as conn:
        rows = conn.execute(select(Lead.email, Lead.first_name, Lead.last_name, Lead.company,
                                   Lead.tags, Lead.fields)).all()
    return {r.email: {"first_name": r.first_name, "last_name": r.last_name, "company": r.company,
                      "tags": r.tags, "fields": r.fields} for r in rows}


def counts(report: ImportReport) -> tuple[int, int, int]:
    return report.imported, report.merged, len(report.rejected)


@pytest.mark.parametrize(("name", "encoding", "delimiter", "header"), [
    ("utf8.csv", "utf-8", ",", ["email", "first_name", "last_name", "company", "tags", "city"]),
    ("utf8_bom.csv", "utf-8-sig", ",", ["E-mail", "Imię", "Nazwisko", "Firma"]),
    ("excel_cp1250.csv", "cp1250", ";", ["Adres e-mail", "Imię", "Nazwisko", "Firma", "Miasto"]),
    ("excel_sep_line.csv", "utf-8", ";", ["email", "firma"]),
    ("tabs.tsv", "utf-8", "\t", ["email", "first_name", "notes"]),
    ("excel_unicode.txt", "utf-16", "\t", ["E-mail", "Imię", "Firma"]),
])
def test_sniff_detects_encoding_delimiter_and_header(name, encoding, delimiter, header):
    sniffed = sniff(corpus(name))
    assert (sniffed.encoding, sniffed.delimiter, sniffed.header) == (encoding, delimiter, header)


def test_sniff_suggests_polish_aliases_and_keeps_other_columns_as_fields():
    sniffed = sniff(corpus("excel_cp1250.csv"))
    assert sniffed.suggested_mapping == {0: "email", 1: "first_name", 2: "last_name", 3: "company",
                                         4: "field:Miasto"}
    assert sniffed.preview == [
        ["lukasz@example.pl", "Łukasz", "Żółć", "Zażółć gęślą jaźń Sp. z o.o.", "Łódź"],
        ["grzegorz@example.pl", "Grzegorz", "Brzęczyszczykiewicz", "Chrząszcz, Trzcina i S-ka",
         "Szczebrzeszyn"],
    ]


def test_sniff_preview_is_the_first_five_rows_and_aliases_ignore_case():
    data = ("E-MAIL;First Name;NAZWISKO;Tagi;Telefon\n"
            + "".join(f"p{i}@example.com;P{i};Q;t;{i}\n" for i in range(9))).encode()
    sniffed = sniff(data)
    assert [row[0] for row in sniffed.preview] == [f"p{i}@example.com" for i in range(5)]
    assert sniffed.suggested_mapping == {0: "email", 1: "first_name", 2: "last_name", 3: "tags",
                                         4: "field:Telefon"}


def test_sniff_guesses_the_address_column_when_no_header_names_it():
    sniffed = sniff(b"Kontakt,Osoba\nanna@example.com,Anna\n")
    assert sniffed.suggested_mapping == {0: "email", 1: "field:Osoba"}


def test_repeated_unnamed_and_trailing_empty_header_cells(engine):
    data = b"email,Telefon,,Telefon,email,,\na@example.com,1,x,2,b@example.com,,\n"
    sniffed = sniff(data)
    assert sniffed.header == ["email", "Telefon", "column_3", "Telefon", "email"]
    assert sniffed.suggested_mapping == {0: "email", 1: "field:Telefon", 2: "field:column_3",
                                         3: "field:Telefon_4", 4: "field:email_5"}
    assert sniffed.targets() == ["email", "first_name", "last_name", "company", "tags", "field:email",
                                 "field:Telefon", "field:column_3", "field:Telefon_4", "field:email_5",
                                 "skip"]
    assert counts(run_import(engine, data)) == (1, 0, 0)
    assert all_leads(engine)["a@example.com"]["fields"] == {
        "Telefon": "1", "column_3": "x", "Telefon_4": "2", "email_5": "b@example.com"}


@pytest.mark.parametrize(("name", "imported", "people"), [
    ("utf8.csv", 3, {"anna.nowak@example.com": ("Anna", "Nowak", "Kowalski i Syn", "vip,warm",
                                                {"city": "Kraków"})}),
    ("utf8_bom.csv", 2, {"ewa@example.com": ("Ewa", "Żak", "Zażółć gęślą jaźń", "", {})}),
    ("excel_cp1250.csv", 2, {"lukasz@example.pl": ("Łukasz", "Żółć", "Zażółć gęślą jaźń Sp. z o.o.", "",
                                                   {"Miasto": "Łódź"})}),
    ("tabs.tsv", 2, {"tab1@example.com": ("Tomasz", "", "", "",
                                          {"notes": 'likes commas, semicolons; and "quotes"'})}),
    ("excel_unicode.txt", 1, {"ula@example.com": ("Ula", "", "Łódzkie Zakłady", "", {})}),
])
def test_clean_files_import_every_row_with_its_letters(engine, name, imported, people):
    report = run_import(engine, corpus(name))
    assert counts(report) == (imported, 0, 0)
    stored = all_leads(engine)
    assert len(stored) == len(report.lead_ids) == imported
    for email, (first, last, company, tags, fields) in people.items():
        assert stored[email] == {"first_name": first, "last_name": last, "company": company,
                                 "tags": tags, "fields": fields}


def test_excel_sep_line_is_skipped_and_lines_stay_physical(engine):
    report = run_import(engine, corpus("excel_sep_line.csv"))
    assert counts(report) == (1, 0, 1)
    assert report.rejected == [(4, "invalid email 'zly-adres': An email address must have an @-sign.")]
    assert all_leads(engine)["a@example.pl"]["company"] == "A, B i C"


def test_quoted_commas_and_newlines_keep_line_numbers_physical(engine):
    report = run_import(engine, corpus("quoted_multiline.csv"))
    assert counts(report) == (5, 0, 4)
    assert report.rejected == [
        (5, "invalid email 'not-an-address': An email address must have an @-sign."),
        (6, "expected 4 columns, found 3"),
        (10, "expected 4 columns, found 5"),
        (12, "expected 4 columns, found 2 (the row spans lines 12-13: an unclosed quote?)"),
    ]
    stored = all_leads(engine)
    assert sorted(stored) == [f"{c}@example.com" for c in "abdfh"]
    assert stored["a@example.com"]["company"] == "Acme, Inc."
    assert stored["a@example.com"]["fields"] == {"notes": "first line\nsecond line, with a comma"}
    assert stored["b@example.com"]["company"] == 'Foo "Bar"'
    assert stored["d@example.com"]["fields"] == {"notes": "multi\n\nthree"}
    assert stored["f@example.com"]["first_name"] == "Fi"  # trailing empty cells are not extra columns


def test_a_repeated_address_in_the_file_is_rejected_and_the_database_lead_merges(engine):
    with immediate(engine) as conn:
        conn.execute(Lead.__table__.insert().values(email="jan@example.com", company="Old Co", tags="old",
                                                    fields={"city": "Gdańsk", "phone": "123"}))
        conn.execute(Lead.__table__.insert().values(email="other@example.com", first_name="Untouched",
                                                    fields={}))
    report = run_import(engine, corpus("duplicates.csv"))
    # anna: new, her two later rows rejected; jan: matches the database, his later row rejected.
    assert counts(report) == (1, 1, 3)
    assert report.rejected == [(3, "same address as line 2"), (4, "same address as line 2"),
                               (6, "same address as line 5")]
    stored = all_leads(engine)
    assert len(stored) == 3 and len(report.lead_ids) == 2
    # The first row wins whole: no later row's surname or tag slips in.
    assert stored["anna@example.com"] == {"first_name": "Anna", "last_name": "", "company": "",
                                          "tags": "vip", "fields": {"city": "Kraków"}}
    assert stored["jan@example.com"] == {"first_name": "Jan", "last_name": "", "company": "Old Co",
                                         "tags": "old",
                                         "fields": {"city": "Gdańsk", "phone": "123"}}
    assert stored["other@example.com"]["first_name"] == "Untouched"


def test_blank_lines_between_rows_are_listed(engine):
    report = run_import(engine, b"email\na@example.com\n\n  \nb@example.com\n\nc@example.com\n")
    assert counts(report) == (3, 0, 0)
    assert report.blank == [3, 4, 6]


def test_lead_ids_are_distinct_and_in_file_order(engine):
    first = run_import(engine, b"email\nb@example.com\n")
    report = run_import(engine, b"email\na@example.com\nB@example.com\nA@example.com\nc@example.com\n")
    assert counts(report) == (2, 1, 1)
    with engine.connect() as conn:
        ids = dict(conn.execute(select(Lead.email, Lead.id)).all())
    assert report.lead_ids == [ids["a@example.com"], first.lead_ids[0], ids["c@example.com"]]


def test_a_second_import_of_the_same_file_only_merges(engine):
    run_import(engine, corpus("utf8.csv"))
    before = all_leads(engine)
    report = run_import(engine, corpus("utf8.csv"))
    assert counts(report) == (0, 3, 0)
    assert all_leads(engine) == before


def test_invalid_addresses_are_rejected_with_email_validators_reason(engine):
    report = run_import(engine, corpus("invalid.csv"))
    assert counts(report) == (1, 0, 7)
    assert report.rejected == [
        (2, "no email address"),
        (3, "invalid email 'no-at-sign': An email address must have an @-sign."),
        (4, "invalid email 'a@b': The part after the @-sign is not valid. It should have a period."),
        (5, "invalid email 'Jan Kowalski <jan@example.com>': A display name and angle brackets "
            "around the email address are not permitted here."),
        (6, "invalid email 'a b@example.com': The email address contains invalid characters "
            "before the @-sign: SPACE."),
        (7, "invalid email 'x@example.test': The part after the @-sign is a special-use or reserved "
            "name that cannot be used with email."),
        (9, "invalid email 'a@@example.com': The part after the @-sign contains invalid "
            "characters: '@'."),
    ]
    assert list(all_leads(engine)) == ["ok@example.com"]


def test_a_header_without_rows_imports_nothing_and_is_no_error(engine):
    report = run_import(engine, b"email;imie\r\n\r\n;\r\n")
    assert counts(report) == (0, 0, 0) and report.lead_ids == []


def test_old_mac_line_endings_and_blank_lines_count_as_lines(engine):
    report = run_import(engine, b"email,first_name\r\rA@example.com,A\rbad,B\r\r")
    assert counts(report) == (1, 0, 1)
    assert report.rejected[0][0] == 4


def test_a_giant_cell_rejects_its_row_only(engine):
    report = run_import(engine, b'email,notes\na@example.com,"' + b"x" * 200_000 + b'"\nb@example.com,ok\n')
    assert report.rejected == [(2, "a cell holds 200,000 characters; at most 10,000 are accepted")]
    assert report.imported == 1


@pytest.mark.parametrize(("name", "data", "message"), [
    ("empty", corpus("empty.csv"), "the file is empty"),
    ("only a BOM", b"\xef\xbb\xbf", "the file is empty"),
    ("blank lines", b"\r\n  \n\n", "the file is empty"),
    ("missing email column", corpus("no_email_column.csv"), "no email column"),
    ("no header line", corpus("no_header.csv"), "the first line holds an address"),
    ("PNG image", corpus("image.png"), "binary data"),
    ("xlsx workbook", corpus("workbook.xlsx"), "save it as CSV first"),
    ("neither UTF-8 nor cp1250", bytes(range(1, 256)) * 4, "neither UTF-8 nor Windows-1250"),
    ("control characters", b"\x01\x02\x03\x04abc,def\n" * 50, "binary data"),
    ("unclosed quote", corpus("unclosed_quote.csv"), "line 2: a quoted cell is never closed"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 40 else "")
def test_unreadable_files_raise_and_change_nothing(engine, name, data, message):
    run_import(engine, b"email,first_name\nkeep@example.com,Keep\n")
    before = all_leads(engine)
    with pytest.raises(CsvImportError, match=message):
        run_import(engine, data)
    assert all_leads(engine) == before


def test_the_legacy_entry_point_reports_an_unreadable_file_instead_of_raising(engine):
    report = importer.import_leads(engine, corpus("no_email_column.csv"))
    assert counts(report) == (0, 0, 1)
    assert report.rejected == [(1, "no email column: name one 'email' or map a column to email")]
    assert all_leads(engine) == {}


def test_a_custom_mapping_skips_and_renames_columns(engine):
    mapping = {0: "email", 1: "first_name", 3: "field:firma", 4: "skip", 5: "skip"}  # 2 left out
    report = run_import(engine, corpus("utf8.csv"), mapping)
    assert counts(report) == (3, 0, 0)
    assert all_leads(engine)["anna.nowak@example.com"] == {
        "first_name": "Anna", "last_name": "", "company": "", "tags": "",
        "fields": {"firma": "Kowalski i Syn"}}


def test_a_mapping_can_name_the_email_column_the_header_does_not(engine):
    report = run_import(engine, b"Kontakt;Osoba\nANNA@example.com;Anna\n", {0: "email", 1: "first_name"})
    assert counts(report) == (1, 0, 0)
    assert all_leads(engine)["anna@example.com"]["first_name"] == "Anna"


@pytest.mark.parametrize(("mapping", "message"), [
    ({0: "email", 1: "email"}, "both mapped to email"),
    ({0: "email", 1: "field:x", 2: "field: x"}, "both mapped to field:x"),
    ({0: "email", 1: "phone"}, "unknown target 'phone'"),
    ({0: "email", 1: "field:"}, "unknown target 'field:'"),
    ({0: "email", 9: "company"}, "column 9 is not in the file"),
    ({1: "first_name"}, "no email column"),
])
def test_a_mapping_that_cannot_apply_changes_nothing(engine, mapping, message):
    with pytest.raises(CsvImportError, match=message):
        run_import(engine, corpus("utf8.csv"), mapping)
    assert all_leads(engine) == {}


def test_import_into_a_campaign_enrolls_the_files_leads(engine):
    cid = make_campaign(engine, 2, start=False)  # lead0000 and lead0001, enrolled
    data = b"email\nLEAD0001@example.com\nnew1@example.com\nnew2@example.com\nbad\n"
    report = run_import(engine, data, campaign_id=cid)
    assert counts(report) == (2, 1, 1)
    assert report.enrolled == 2  # lead0001 was enrolled already
    with engine.connect() as conn:
        enrolled = set(conn.execute(select(CampaignLead.lead_id).where(CampaignLead.campaign_id == cid))
                       .scalars())
    assert set(report.lead_ids) < enrolled and len(enrolled) == 4


def test_enrollment_in_chunks_enrolls_every_lead_once(engine, monkeypatch):
    monkeypatch.setattr(importer, "_ENROLL_CHUNK", 2)
    cid = make_campaign(engine, 1, start=False)  # lead0000, enrolled
    data = ("email\n" + "".join(f"lead{i:04d}@example.com\n" for i in range(5))).encode()
    report = run_import(engine, data, campaign_id=cid)
    assert counts(report) == (4, 1, 0) and report.enrolled == 4
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CampaignLead)).scalar() == 5


@pytest.mark.parametrize(("variants", "campaign", "message"), [
    ("AB", 999, "campaign 999 does not exist"),
    ("", None, "has no variant"),
])
def test_a_campaign_that_cannot_take_leads_stops_the_import(engine, variants, campaign, message):
    cid = make_campaign(engine, 0, start=False, variants=variants)
    with pytest.raises(CsvImportError, match=message):
        run_import(engine, corpus("utf8.csv"), campaign_id=campaign or cid)
    assert all_leads(engine) == {}


def test_rejected_rows_download_as_csv_with_formulas_neutralized(engine):
    report = run_import(engine, corpus("quoted_multiline.csv"))
    report.rejected += [(20, "=HYPERLINK(\"http://evil\")"), (21, "+1"), (22, "-2"), (23, "@SUM(A1)")]
    rows = list(csv.reader(io.StringIO(rejected_csv(report))))
    assert rows[0] == ["line", "reason"]
    assert rows[1] == ["5", "invalid email 'not-an-address': An email address must have an @-sign."]
    assert rows[-4:] == [["20", "'=HYPERLINK(\"http://evil\")"], ["21", "'+1"], ["22", "'-2"],
                         ["23", "'@SUM(A1)"]]
    assert len(rows) == 1 + 4 + 4


LABELS = st.one_of(
    st.text(alphabet="ab0-xnłZ_", min_size=0, max_size=64),
    st.sampled_from(["test", "local", "localhost", "onion", "arpa", "invalid", "example", "com", "pl",
                     "xn--80ak6aa92e", "xn--abc", "ab--cd", "c0m", "1", "a" * 63, "a" * 64]),
)


@settings(max_examples=500, database=None, deadline=None)
@given(st.one_of(
    st.text(alphabet="ab.-_@+ ąZ1\"<>()[],\\", max_size=24),
    st.builds(lambda local, labels: f"{local}@{'.'.join(labels)}",
              st.one_of(st.text(alphabet="aZ09._+-'!#=\"<[ ", max_size=70), st.just("a" * 64)),
              st.lists(LABELS, min_size=1, max_size=5)),
    # Around the 254-character limit, where only the length decides.
    st.builds(lambda local, size: f"{local}@{'b' * 60}.{'c' * 60}.{'d' * 60}.{'e' * size}.pl",
              st.sampled_from(["a" * 64, "a" * 65, "A.b"]), st.integers(1, 63)),
))
def test_the_fast_address_check_agrees_with_email_validator(raw):
    expected = outcome(leads.check_email, raw)
    assert outcome(importer.check_address, raw) == expected


def outcome(check, raw: str) -> tuple[str, str]:
    try:
        return "ok", check(raw)
    except EmailNotValidError as exc:
        return "invalid", str(exc)


@pytest.mark.slow
def test_a_hundred_thousand_rows(engine):
    n = 100_000
    existing = "".join(f"lead{i}@company{i % 3000}.pl\n" for i in range(0, n, 10))
    run_import(engine, ("email\n" + existing).encode())  # every tenth lead is already there
    rows = [f"Lead{i}@Company{i % 3000}.pl;Imię{i};Nazwisko{i};Firma {i % 3000};tag{i % 7};Miasto {i}"
            for i in range(n)]
    data = ("email;imię;nazwisko;firma;tagi;miasto\n" + "\n".join(rows) + "\n").encode("cp1250")
    started, cpu = time.perf_counter(), time.process_time()
    report = run_import(engine, data)
    # CPU time too: on a busy machine the wall clock mostly measures the neighbours.
    print(f"\n100,000-row import: {time.perf_counter() - started:.2f} s wall, "
          f"{time.process_time() - cpu:.2f} s CPU")
    assert counts(report) == (90_000, 10_000, 0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Lead)).scalar() == n
