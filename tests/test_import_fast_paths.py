"""The import's shortcuts (see importer.py) give exactly what the plain way gives.

Each shortcut is here twice: its result must equal the slow way's, and it must actually be
taken (a shortcut that silently stops applying costs seconds per 100,000 rows).
"""

from __future__ import annotations

import gc
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, text
from sqlalchemy.dialects import sqlite

from conftest import ON_POSTGRES
from core import importer, leads
from core.importer import CsvImportError, run_import
from models import Lead
from storage.database import immediate

pytestmark = pytest.mark.postgres  # runs again on PostgreSQL (make test)

LEAD = Lead.__table__


def outcome(check, raw: str) -> tuple[str, str]:
    try:
        return "ok", check(raw)
    except ValueError as exc:
        return "invalid", str(exc)


# --- addresses: email-validator's verdict, its parts called directly -------------------

LOCAL_64, DOMAIN_189 = "a" * 64, "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"


@pytest.mark.parametrize("raw", [
    "anna@example.com", " Anna.Nowak+vip@Example.COM ", "postmaster@example.com",
    f"{LOCAL_64}@{DOMAIN_189}",  # 254 characters: the longest address
    f"{LOCAL_64}@{DOMAIN_189}x",  # 255
    # 254 ASCII characters, but 74 bytes too long once the domain is decoded (40 times 中):
    f"{LOCAL_64}@{'b' * 62}.{'c' * 62}.{'d' * 12}.xn--fiq{'a' * 39}.com",
    "a" * 65 + "@example.com",  # a local part over 64 is still accepted (strict is off)
    "a@" + "b" * 64 + ".com",  # a label over 63
    "a@xn--80ak6aa92e.com", "a@xn--abc.com", "a@ab--cd.com", "a@münchen.de", "zażółć@example.pl",
    '"anna"@example.com', '"a b"@example.com', "Anna <anna@example.com>", "<anna@example.com>",
    "a@[192.168.0.1]", "a@b@example.com", "a@@example.com", "@example.com", "anna@", "anna",
    "a..b@example.com", ".a@example.com", "a.@example.com", "a@example.com.", "a@-example.com",
    "a@example..com", "a@localhost", "a@example.local", "a@sub.example.test", "a@example.123",
    "a b@example.com", "a@exam_ple.com", "a(b)@example.com", "a\\b@example.com", "",
])
def test_the_fast_address_check_gives_email_validators_verdict_and_reason(raw):
    assert outcome(importer.check_address, raw) == outcome(leads.check_email, raw)


def test_plain_addresses_skip_the_full_parse_and_each_domain_is_checked_once(monkeypatch):
    full, domains = Counting(monkeypatch, leads, "validate_email"), Counting(
        monkeypatch, importer, "validate_email_domain_name")
    importer._domain_accepted.cache_clear()
    try:
        for i in range(300):
            assert importer.check_address(f" Lead{i}@Company{i % 3}.example.pl") == \
                f"lead{i}@company{i % 3}.example.pl"
        assert (full.calls, domains.calls) == (0, 3)
        with pytest.raises(ValueError, match="special-use or reserved"):
            importer.check_address("lead@example.test")  # refused: the full parse gives the reason
        assert full.calls == 1
    finally:
        importer._domain_accepted.cache_clear()  # the counting wrapper's answers stay out of the cache


class Counting:
    """Replace module.name by a wrapper that counts its calls."""

    def __init__(self, monkeypatch, module, name: str) -> None:
        self.calls, original = 0, getattr(module, name)

        def wrapper(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)


# --- stored values: straight from the cells, as from a merged record --------------------

MAPPINGS = [
    {0: "email", 1: "first_name", 2: "last_name", 3: "company", 4: "tags", 5: "field:City",
     6: 'field:Uwagi "ł"\\'},
    {0: "email", 2: "field:a", 1: "field:b"},  # no name, company or tags column; fields out of order
    {3: "email", 0: "tags"},
]
CELL = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    [" ", " vip ; warm,vip ", ";;,", "Łódź", '"q"', "back\\slash", "\x00\x1f\u2028", "é\u0301"])


@settings(max_examples=300, database=None, deadline=None)
@given(st.sampled_from(MAPPINGS), st.lists(CELL, min_size=7, max_size=7))
def test_values_from_cells_equal_the_records_and_sqlalchemys_json(mapping, cells):
    record = importer._builder(mapping)(cells)
    values = importer._record_values(record)
    assert importer._stored_values(mapping)(cells) == values
    to_json = LEAD.c.fields.type.dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())
    assert values[4] == json.dumps(record.fields) == to_json(record.fields)
    assert values[3] == ",".join(record.tags)


def test_stored_fields_are_json_dumps_text_and_read_back_as_written(engine):
    data = ('email,Miasto,Uwagi\na@example.com,Łódź,"say ""hi"", \\ then\nleave"\n'
            "b@example.com,,\n").encode()
    run_import(engine, data)
    with engine.connect() as conn:
        raw = dict(conn.exec_driver_sql("SELECT email, CAST(fields AS TEXT) FROM lead").all())
        parsed = dict(conn.execute(select(LEAD.c.email, LEAD.c.fields)).all())
    expected = {"a@example.com": {"Miasto": "Łódź", "Uwagi": 'say "hi", \\ then\nleave'},
                "b@example.com": {"Miasto": "", "Uwagi": ""}}
    assert parsed == expected
    assert raw == {email: json.dumps(fields) for email, fields in expected.items()}


# --- ids and the lookup of existing leads -----------------------------------------------

def test_new_leads_take_the_ids_after_the_highest_in_file_order(engine):
    with immediate(engine) as conn:
        conn.execute(insert(LEAD), [{"id": 7, "email": "keep@example.com", "fields": {}},
                                    {"id": 40, "email": "top@example.com", "fields": {}},
                                    {"id": 55, "email": "gone@example.com", "fields": {}}])
        if ON_POSTGRES:  # rows written with their ids: the sequence is moved past them (as copy-to does)
            conn.execute(text("SELECT setval(pg_get_serial_sequence('lead', 'id'), 55)"))
        conn.execute(delete(LEAD).where(LEAD.c.id == 55))
    report = run_import(engine, b"email\nnew1@example.com\nKEEP@example.com\nnew2@example.com\n")
    with engine.connect() as conn:
        ids = dict(conn.execute(select(LEAD.c.email, LEAD.c.id)).all())
    # SQLite: max + 1 under the write lock (the deleted 55 is free again); PostgreSQL: the sequence.
    first = 56 if ON_POSTGRES else 41
    assert ids == {"keep@example.com": 7, "top@example.com": 40, "new1@example.com": first,
                   "new2@example.com": first + 1}
    assert report.lead_ids == [first, 7, first + 1]


def test_every_existing_lead_is_found_in_a_long_file(engine):
    run_import(engine, ("email,first_name\n" + "".join(f"l{i}@example.com,Old\n" for i in range(0, 3000, 3)))
               .encode())
    data = "email,company\n" + "".join(f"L{i}@Example.com,Co{i}\n" for i in range(3000))
    report = run_import(engine, data.encode())
    assert (report.imported, report.merged, report.rejected) == (2000, 1000, [])
    with engine.connect() as conn:
        stored = {row.email: (row.id, row.first_name, row.company) for row in conn.execute(select(LEAD))}
    assert len(stored) == 3000
    assert all(stored[f"l{i}@example.com"][1:] == ("Old" if i % 3 == 0 else "", f"Co{i}")
               for i in range(3000))
    assert report.lead_ids == [stored[f"l{i}@example.com"][0] for i in range(3000)]


# --- rows: the quick tests and the slow ones agree ----------------------------------------

def test_blank_rows_are_skipped_and_a_row_with_only_later_cells_is_not_blank(engine):
    report = run_import(engine, b"email,first_name\n \t, \n,\n  ,Anna\nb@example.com,B\n")
    assert report.rejected == [(4, "no email address")]
    assert report.imported == 1


def test_a_giant_cell_in_a_skipped_column_does_not_reject_its_row(engine):
    data = b'email,notes,first_name\na@example.com,"' + b"x" * 20_000 + b'",Anna\n'
    report = run_import(engine, data, {0: "email", 1: "skip", 2: "first_name"})
    assert (report.imported, report.rejected) == (1, [])
    report = run_import(engine, data.replace(b"a@", b"b@"), {0: "email", 1: "field:notes"})
    assert report.rejected == [(2, "a cell holds 20,000 characters; at most 10,000 are accepted")]


def test_extra_empty_cells_are_no_extra_columns_but_a_giant_one_still_rejects(engine):
    report = run_import(engine, b"email,first_name\na@example.com,A,,\nb@example.com,B,,x\n")
    assert report.rejected == [(3, "expected 2 columns, found 4")]
    report = run_import(engine, b"email\nc@example.com,,\"" + b" " * 20_000 + b'"\n')
    assert report.imported == 1  # the extra cells are blank and map to nothing


# --- the cycle collector ------------------------------------------------------------------

def test_the_cycle_collector_is_paused_during_an_import_and_back_after_even_a_failed_one(engine, monkeypatch):
    seen: list[bool] = []
    collect = importer._collect
    monkeypatch.setattr(importer, "_collect", lambda *args: (seen.append(gc.isenabled()), collect(*args))[1])
    assert gc.isenabled()
    run_import(engine, b"email\na@example.com\n")
    assert seen == [False] and gc.isenabled()
    with pytest.raises(CsvImportError, match="campaign 999 does not exist"):
        run_import(engine, b"email\nb@example.com\n", campaign_id=999)
    assert gc.isenabled()


def test_an_import_leaves_a_collector_someone_else_disabled_disabled(engine):
    gc.disable()
    try:
        run_import(engine, b"email\na@example.com\n")
        assert not gc.isenabled()
    finally:
        gc.enable()
