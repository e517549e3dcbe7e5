"""Classifying what a mailbox received (#18), on real samples written in Polish and English
(tests/data/replies/*.eml): pure logic, no server."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from core.replies import asks_to_unsubscribe, latest_reply, read_message, return_date
from models import ReplyKind

SAMPLES = Path(__file__).with_name("data") / "replies"
RECEIVED = datetime(2026, 11, 30, 9, 0)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.mark.parametrize(("name", "kind"), [
    ("reply_pl_gmail.eml", ReplyKind.REPLY),
    ("reply_en_outlook_html.eml", ReplyKind.REPLY),
    ("reply_html_hostile.eml", ReplyKind.REPLY),
    ("reply_quoted_unsubscribe.eml", ReplyKind.REPLY),  # "unsubscribe" only in the quoted thread
    ("ooo_pl.eml", ReplyKind.AUTO_REPLY),  # Auto-Submitted: auto-replied
    ("ooo_en.eml", ReplyKind.AUTO_REPLY),  # X-Autoreply
    ("ooo_pl_subject_only.eml", ReplyKind.AUTO_REPLY),  # "Nieobecność" in the subject only
    ("ooo_en_far.eml", ReplyKind.AUTO_REPLY),  # Precedence: auto_reply
    ("ooo_no_date.eml", ReplyKind.AUTO_REPLY),
    ("dsn_hard_postfix.eml", ReplyKind.BOUNCE_HARD),  # RFC 3464, Status 5.1.1
    ("dsn_soft_headers.eml", ReplyKind.BOUNCE_SOFT),  # Status 4.2.2
    ("bounce_qmail.eml", ReplyKind.BOUNCE_HARD),  # not a DSN: flufl.bounce's qmail detector
    ("unsubscribe_pl.eml", ReplyKind.UNSUBSCRIBE),
    ("unsubscribe_en.eml", ReplyKind.UNSUBSCRIBE),
    ("wypisz.eml", ReplyKind.UNSUBSCRIBE),
])
def test_each_sample_is_classified(name, kind):
    assert read_message(sample(name), RECEIVED).kind == kind


def test_a_bounce_names_its_failed_addresses_status_and_the_original_message():
    hard = read_message(sample("dsn_hard_postfix.eml"), RECEIVED)
    assert hard.hard == {"lead0009@example.com"} and hard.soft == set()
    assert hard.original_ids == ["<ORIGINAL-MESSAGE-ID>"]  # the attached message/rfc822
    assert hard.snippet.startswith("lead0009@example.com: 5.1.1 smtp; 550 5.1.1")
    soft = read_message(sample("dsn_soft_headers.eml"), RECEIVED)
    assert soft.soft == {"lead0010@example.com"} and soft.hard == set()
    assert soft.original_ids == ["<ORIGINAL-MESSAGE-ID>"]  # text/rfc822-headers
    assert read_message(sample("bounce_qmail.eml"), RECEIVED).hard == {"lead0011@example.com"}


def test_a_reply_keeps_only_its_newest_part_as_text():
    polish = read_message(sample("reply_pl_gmail.eml"), RECEIVED)
    assert polish.from_address == "lead0001@example.com"  # normalized
    assert "Jestem zainteresowany" in polish.text
    assert "napisał" not in polish.text and "wypisz" not in polish.text
    outlook = read_message(sample("reply_en_outlook_html.eml"), RECEIVED)  # HTML only
    assert outlook.text.startswith("Thanks, not interested") and "Unsubscribe" not in outlook.text
    assert "color: red" not in outlook.text and "<p>" not in outlook.text


def test_html_becomes_text_without_script_or_remote_content():
    hostile = read_message(sample("reply_html_hostile.eml"), RECEIVED)
    assert "Call me tomorrow & bring the offer." in hostile.snippet
    assert "alert" not in hostile.snippet and "tracker.invalid" not in hostile.snippet
    assert "<" not in hostile.snippet


@pytest.mark.parametrize(("name", "expected"), [
    ("ooo_pl.eml", datetime(2026, 12, 15)),  # "do 15.12.2026"
    ("ooo_en.eml", datetime(2026, 12, 15)),  # "until December 15, 2026"
    ("ooo_pl_subject_only.eml", datetime(2026, 12, 10)),  # "wracam 2026-12-10"
    ("ooo_en_far.eml", datetime(2026, 12, 30, 9, 0)),  # 2027-03-01 is too far: 30 days at most
    ("ooo_no_date.eml", None),
])
def test_an_auto_reply_return_date(name, expected):
    assert read_message(sample(name), RECEIVED).return_date == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Wracam 14 grudnia 2026.", datetime(2026, 12, 14)),
    ("Back on Dec 3rd, 2026", datetime(2026, 12, 3)),
    ("Nieobecny do 07.12", datetime(2026, 12, 7)),  # no year: the next 7 December
    ("Urlop od 01.12.2026 do 11.12.2026", datetime(2026, 12, 11)),  # the latest date named
    ("I was away until 2026-11-20", None),  # in the past
    ("Out until 31.02.2026", None),  # not a date
])
def test_return_dates_in_common_formats(text, expected):
    assert return_date(text, RECEIVED) == expected


@pytest.mark.parametrize(("text", "asks"), [
    ("wypisz mnie", True), ("Proszę mnie usunąć z bazy", True), ("prosze mnie usunac", True),
    ("Nie piszcie więcej!", True), ("Please UNSUBSCRIBE me", True), ("remove me please", True),
    ("Chętnie porozmawiam o ofercie", False), ("Sounds good, call me", False),
])
def test_unsubscribe_requests_in_polish_and_english(text, asks):
    assert asks_to_unsubscribe(text) is asks


def test_quoted_lines_are_cut_even_without_a_known_header():
    assert latest_reply("Tak, poproszę.\n\n> stara wiadomość\n> wypisz się tutaj") == "Tak, poproszę."


def test_a_broken_message_is_still_read():
    raw = b"From: =?bad?Q?x\nSubject: \xff\xfe\nContent-Type: text/plain; charset=nonesuch\n\n\xffok"
    reading = read_message(raw, RECEIVED)
    assert reading.kind == ReplyKind.REPLY and "ok" in reading.text
