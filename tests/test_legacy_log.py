"""Legacy send-log import over awkward files, with exact counts of events and rejected lines."""

from __future__ import annotations

import codecs
import csv
import io
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timeline.analysis import SendEvent
from timeline.legacy_log import LegacyLogError, parse_log


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_semicolons_with_a_bom():
    data = codecs.BOM_UTF8 + (
        b"sentAt;leadId;campaignId;variantLetter\r\n"
        b"2025-01-14 09:19:09;250;7;A\r\n"
        b"2025-01-14 09:20:01;251;7;B\r\n"
    )
    result = parse_log(data)
    assert result.events == [SendEvent(at("2025-01-14 09:19:09"), "7", "250", "A"),
                             SendEvent(at("2025-01-14 09:20:01"), "7", "251", "B")]
    assert result.rejected == []
    assert (result.delimiter, result.encoding) == (";", "utf-8-sig")  # the one CSV reader's label
    # The BOM must not stick to the first header name and hide the time column.
    assert result.columns == {"time": "sentAt", "lead": "leadId", "campaign": "campaignId",
                              "variant": "variantLetter"}


def test_tab_separated_excel_unicode_text_with_email_addresses():
    text = "Sent At\tE-mail\tCampaign\n2025-01-14T09:19:09\tJan.Kowalski@Example.PL\tnewsletter\n"
    result = parse_log(text.encode("utf-16"))  # Excel's "Unicode text": UTF-16 with a BOM, tabs
    assert (result.delimiter, result.encoding) == ("\t", "utf-16")
    assert result.events == [SendEvent(at("2025-01-14 09:19:09"), "newsletter", "jan.kowalski@example.pl")]


def test_a_utf8_bom_before_cp1250_text():
    data = codecs.BOM_UTF8 + "sentAt;lead;campaign\n2025-01-14 09:00:00;1;Jesień\n".encode("cp1250")
    result = parse_log(data)
    assert result.encoding == "cp1250" and result.events[0].campaign == "Jesień"


def test_cp1250_with_polish_characters():
    text = ("created_at;email;campaign;trigger\n"
            "2025-01-14 09:19:09;zofia@example.pl;Promocja świąteczna;przycisk „Wyślij kampanię”\n"
            "2025-01-14 09:20:01;łukasz@example.pl;Promocja świąteczna;cron\n")
    result = parse_log(text.encode("cp1250"))
    assert result.encoding == "cp1250" and result.rejected == []
    assert [(e.lead, e.campaign, e.trigger) for e in result.events] == [
        ("zofia@example.pl", "Promocja świąteczna", "przycisk „Wyślij kampanię”"),
        ("łukasz@example.pl", "Promocja świąteczna", "cron"),
    ]


MIXED = [  # (as written, naive UTC) with naive times in Europe/Warsaw
    ("2025-01-14T09:00:00Z", "2025-01-14 09:00:00"),
    ("2025-01-14T09:00:00.000z", "2025-01-14 09:00:00"),
    ("2025-01-14T10:00:00+01:00", "2025-01-14 09:00:00"),
    ("2025-01-14T04:00:00-0500", "2025-01-14 09:00:00"),
    ("2025-01-14T11:00:00+02", "2025-01-14 09:00:00"),
    ("2025-01-14 09:00:00 UTC", "2025-01-14 09:00:00"),
    ("2025-01-14T10:00:00", "2025-01-14 09:00:00"),  # naive, winter: UTC+1
    ("2025-07-14T10:00:00", "2025-07-14 08:00:00"),  # naive, summer: UTC+2
    ("2025-01-14 10:00:00", "2025-01-14 09:00:00"),
    ("2025-01-14 10:00:00.5", "2025-01-14 09:00:00.500000"),
    ("2025-01-14 10:00:00,25", "2025-01-14 09:00:00.250000"),
    ("2025-01-14T09:00:00.1234567Z", "2025-01-14 09:00:00.123456"),  # 100 ns digits dropped
]


def test_mixed_time_formats_in_a_time_zone():
    lines = ["timestamp;lead"] + [f"{written};{i}" for i, (written, _) in enumerate(MIXED)]
    result = parse_log("\n".join(lines).encode(), tz="Europe/Warsaw")
    assert result.rejected == []
    assert [e.at for e in result.events] == [at(utc) for _, utc in MIXED]
    assert all(e.at.tzinfo is None for e in result.events)


@pytest.mark.parametrize(("written", "reason"), [
    ("2025-01-14T09:00Z", "time without seconds"),
    ("2025-01-14 09:00:0x", "unreadable time"),
    ("14.01.2025 09:00", "time without seconds"),
    ("2025/01/14 09:00:00", "unreadable time"),
    ("1736845200", "unreadable time"),
    ("2025-01-14T24:00:00", "invalid time"),
    ("2025-01-14T09:00:00+25:00", "invalid time"),
    ("0001-01-01T00:30:00", "time out of range"),  # 00:30 in Warsaw is still year 0 in UTC
])
def test_unreadable_times_say_why(written, reason):
    result = parse_log(f"sentAt,leadId\n{written},1\n".encode(), tz="Europe/Warsaw")
    assert result.events == [] and result.rejected[0][0] == 2
    assert result.rejected[0][1].startswith(f"{reason} {written!r}")


def test_naive_times_default_to_utc():
    [event] = parse_log(b"time,to\n2025-07-14 10:00:00,x@example.com\n").events
    assert event.at == at("2025-07-14 10:00:00")


def test_missing_campaign_and_variant_columns():
    result = parse_log(b"timestamp,recipient\n2025-01-14T09:00:00Z,a@example.com\n2025-01-14T09:01:00Z,b\n")
    assert [(e.campaign, e.variant) for e in result.events] == [("1", ""), ("1", "")]
    assert result.columns == {"time": "timestamp", "lead": "recipient"}


GARBAGE = b"""sentAt,leadId,campaignId,variantLetter
2025-01-14T09:00:00Z,1,1,A
yesterday,2,1,A
2025-01-14T09:00:02Z,,1,A
2025-01-14T09:00:03Z,4

2025-01-14T09:00:04Z,5,1,A,extra
2025-01-14T09:00:05Z,6,1,A,
,7,1,A
2025-01-14 09:00,8,1,A
2025-13-14T09:00:00Z,9,1,A
2025-01-14T09:00:10Z,10,,A
,,,
2025-01-14,11,1,A
"2025-01-14T09:00:12Z","12, the ""quoted"" one",1,A
2025-01-14T09:00:13Z,13,1,A
"""


def test_garbage_lines_are_listed_with_line_numbers():
    result = parse_log(GARBAGE)
    assert [e.lead for e in result.events] == ["1", "6", '12, the "quoted" one', "13"]
    assert [line for line, _ in result.rejected] == [3, 4, 5, 7, 9, 10, 11, 12, 14]
    reasons = dict(result.rejected)
    assert reasons[3].startswith("unreadable time 'yesterday'")
    assert reasons[4] == "empty lead"
    assert reasons[5] == "2 columns, expected 4"
    assert reasons[7] == "5 columns, expected 4"
    assert reasons[9] == "empty time"
    assert reasons[10] == "time without seconds '2025-01-14 09:00'"
    assert reasons[11].startswith("invalid time '2025-13-14T09:00:00Z'")
    assert reasons[12] == "empty campaign"
    assert reasons[14].startswith("unreadable time '2025-01-14'")
    # Lines 6 (empty) and 13 (only delimiters) are blank, so not data: 4 + 9 == 13 rows.
    assert len(result.events) + len(result.rejected) == 13


def test_a_quoted_line_break_keeps_the_line_numbers_right():
    data = (b'sentAt,leadId,note\n2025-01-14T09:00:00Z,1,"two\nlines"\nnonsense,2,x\n'
            b'2025-01-14T09:00:02Z,3,x\n')
    result = parse_log(data)
    assert [e.lead for e in result.events] == ["1", "3"]
    assert result.rejected == [(4, "unreadable time 'nonsense' (expected ISO-8601, YYYY-MM-DD HH:MM:SS, "
            "DD.MM.YYYY HH:MM:SS or an Excel date number)")]


def test_an_unclosed_quote_refuses_the_file_with_its_line():
    # It would swallow every later row into one cell: the one CSV reader refuses the file.
    data = (b'sentAt,leadId,note\n2025-01-14T09:00:00Z,1,x\n2025-01-14T09:00:02Z,"3\n'
            b'2025-01-14T09:00:03Z,4,x\n')
    with pytest.raises(LegacyLogError, match="line 3: a quoted cell is never closed"):
        parse_log(data)


@pytest.mark.parametrize("name", ["sentAt", "sent_at", "Sent At", "SENT-AT", "createdAt", "created_at",
                                  "timestamp", "Time", "date", " Sent.At "])
def test_time_column_names(name):
    result = parse_log(f"{name},lead\n2025-01-14 09:00:00,1\n".encode())
    assert result.columns["time"] == name.strip() and len(result.events) == 1


@pytest.mark.parametrize("name", ["leadId", "lead_id", "Lead ID", "LEAD", "email", "E-Mail", "recipient",
                                  "To"])
def test_lead_column_names(name):
    result = parse_log(f"sentAt,{name}\n2025-01-14 09:00:00,1\n".encode())
    assert result.columns["lead"] == name and len(result.events) == 1


def test_the_send_time_wins_over_the_creation_time():
    result = parse_log(b"createdAt,email,sentAt\n2025-01-14 08:00:00,a@x.pl,2025-01-14 09:00:00\n")
    assert result.columns["time"] == "sentAt" and result.events[0].at == at("2025-01-14 09:00:00")


def test_separate_date_and_time_columns_are_joined():
    result = parse_log(b"Date;Time;Email\n2025-01-14;9:19:09;a@x.pl\n2025-01-14;10:00:01.5;b@x.pl\n")
    assert [e.at for e in result.events] == [at("2025-01-14 09:19:09"), at("2025-01-14 10:00:01.5")]


def test_trigger_and_worker_columns_are_kept():
    result = parse_log(b"sent_at,lead_id,campaign_id,variant,Trigger,Worker ID\n"
                       b"2025-01-14 09:00:01,270,3,A,cron,next:311\n")
    assert result.events == [SendEvent(at("2025-01-14 09:00:01"), "3", "270", "A", "cron", "next:311")]


def test_a_header_without_rows_is_an_empty_log():
    assert parse_log(b"sentAt,leadId\n\n").events == [] and parse_log(b"sentAt,leadId").rejected == []


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (codecs.BOM_UTF8, "empty"),
    (b"\r\n  \n", "empty"),
    (b"leadId,campaignId\n1,1\n", "no time column"),
    (b"sentAt,campaignId\n2025-01-14 09:00:00,1\n", "no lead column"),
    # A file without a header: its first row is taken as one and names no columns.
    (b"2025-01-14 09:00:00,1,1,A\n", "no time column"),
    (b"sentAt,leadId\n\x81\x83\n", "neither UTF-8 nor Windows-1250"),
])
def test_unreadable_files_raise(data, message):
    with pytest.raises(LegacyLogError, match=message):
        parse_log(data)


def test_an_unknown_time_zone_raises():
    with pytest.raises(LegacyLogError, match="unknown time zone 'Mars/Base'"):
        parse_log(b"sentAt,leadId\n", tz="Mars/Base")


CELLS = {
    "time": ["2025-01-14T09:00:00Z", "2025-01-14 09:00:01", "2025-01-14 09:00", "nonsense", "", " "],
    "lead": ["1", "a@x.pl", "", '"q;uoted"'],
    "campaign": ["1", "", "kampania"],
}


@settings(max_examples=150)
@given(st.lists(st.one_of(
    st.tuples(*(st.sampled_from(v) for v in CELLS.values())).map(";".join),
    st.sampled_from(["", ";;", "1", "2025-01-14T09:00:00Z;1;1;extra", '"unclosed;1;1'])),
    max_size=30))
def test_nothing_is_dropped_silently(lines):
    text = "\n".join(["sentAt;leadId;campaignId", *lines])
    try:
        result = parse_log(text.encode())
    except LegacyLogError as exc:
        # Refused as a whole only for a quote never closed, and then with its line.
        assert "a quoted cell is never closed" in str(exc) or "(an unclosed quote?)" in str(exc)
        return
    line_numbers = [line for line, _ in result.rejected]
    assert line_numbers == sorted(set(line_numbers))
    assert all(2 <= line <= len(lines) + 1 for line in line_numbers)
    # Rows are counted as csv reads them: a quoted field may join several physical lines.
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=";") if any(c.strip() for c in r)]
    assert len(result.events) + len(result.rejected) == len(rows) - 1
