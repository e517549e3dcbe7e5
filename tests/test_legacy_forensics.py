"""Legacy-log forensics on logs exported the ways real systems export them (#15).

Every log here is generated from a list of sends written down first; the expected numbers
are computed from that list by the small reference functions below, never by the code under
test.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.csvfile import CsvFileError
from test_timeline import incident_events
from timeline import words
from timeline.analysis import analyse, to_json
from timeline.legacy_log import MissingColumns, parse_log
from timeline.words import finding

WARSAW = ZoneInfo("Europe/Warsaw")


# ---- the independent reference ---------------------------------------------------------------

def ref_counts(sends: list[tuple]) -> tuple[int, int, int]:
    """(sends, unique keys, duplicates) of (at, key...) tuples."""
    keys = {s[1:] for s in sends}
    return len(sends), len(keys), len(sends) - len(keys)


def ref_split(sends: list[tuple]) -> tuple[int, int]:
    """(before, from) the first send of the first key that is repeated, by a plain loop."""
    ordered = sorted(sends)
    seen, repeated = set(), None
    for _at, *key in ordered:
        if tuple(key) in seen:
            repeated = tuple(key)
            break
        seen.add(tuple(key))
    if repeated is None:
        return len(ordered), 0
    first = next(i for i, (at, *key) in enumerate(ordered) if tuple(key) == repeated)
    return first, len(ordered) - first


def utc(local: datetime) -> datetime:
    return local.replace(tzinfo=WARSAW).astimezone(UTC).replace(tzinfo=None)


# ---- point 1: milliseconds ---------------------------------------------------------------------

def incident_with_milliseconds() -> list[tuple[datetime, str]]:
    """incident.md's sends with milliseconds: each pair's sends .314 and .465 into their second."""
    sends, seen = [], Counter()
    for event in incident_events(with_workers=False):
        seen[event.lead] += 1
        millis = (314, 465)[seen[event.lead] - 1] if event.lead >= "270" else 120
        sends.append((event.at + timedelta(milliseconds=millis), event.lead))
    return sends


def test_milliseconds_put_the_first_duplicates_original_in_the_after_period():
    sends = incident_with_milliseconds()
    data = "sentAt,leadId\n" + "".join(f"{at.isoformat(timespec='milliseconds')}Z,{lead}\n"
                                        for at, lead in sends)
    a = analyse(parse_log(data.encode()).events)
    assert (a.before.sends, a.after.sends) == ref_split(sends) == (20, 32)
    assert (a.after.unique_keys, a.after.duplicate_sends) == (16, 16)
    assert a.split_at == min(at for at, lead in sends if lead == "270")
    assert to_json(a)["from_first_duplicate_at"] == "2025-01-14T11:40:01.314000"


# ---- point 2: the status column ---------------------------------------------------------------

def status_log() -> list[tuple[datetime, str, str, str]]:
    """(at, campaign, lead, status): sends, a FAILED then SENT retry, bounces, opens and clicks."""
    start, rows = datetime(2026, 3, 2, 9, 0, 0), []
    for i in range(40):
        rows.append((start + timedelta(minutes=3 * i, seconds=7), "7", f"lead{i}@example.pl", "SENT"))
    for i in (5, 9, 14):  # failed first, retried 15 minutes later: one mail each
        rows.append((start + timedelta(minutes=3 * i - 15, seconds=7), "7", f"lead{i}@example.pl", "FAILED"))
    rows.append((start + timedelta(hours=3), "7", "lead3@example.pl", "BOUNCED"))
    for i in range(0, 40, 2):
        rows.append((start + timedelta(minutes=3 * i + 40), "7", f"lead{i}@example.pl", "OPENED"))
        rows.append((start + timedelta(minutes=3 * i + 41), "7", f"lead{i}@example.pl", "CLICKED"))
    # One real duplicate, so the counts are not all zero.
    rows.append((start + timedelta(minutes=60, seconds=7, milliseconds=200), "7", "lead20@example.pl",
                 "SENT"))
    return rows


def as_csv(rows, header=("sentAt", "campaignId", "email", "status"), fmt=lambda at: at.isoformat() + "Z",
           delimiter=",") -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([fmt(r[0]), *r[1:]] for r in rows)
    return out.getvalue()


def test_failed_bounced_and_engagement_rows_are_not_sends():
    rows = status_log()
    result = parse_log(as_csv(rows).encode())
    sent = [(at, campaign, lead) for at, campaign, lead, status in rows if status == "SENT"]
    a = analyse(result.events)
    assert (a.total_sends, a.unique_keys, a.duplicate_sends) == ref_counts(sent) == (41, 40, 1)
    left_out = Counter(status for *_, status in rows if status != "SENT")
    assert result.left_out == {"failed": {"FAILED": left_out["FAILED"]}, "bounced": {"BOUNCED": 1},
                               "engagement": {"OPENED": left_out["OPENED"], "CLICKED": left_out["CLICKED"]}}
    assert len(result.events) + result.left_out_rows() + len(result.rejected) == len(rows)
    # The retry 15 minutes after a FAILED row is not "sent again later".
    assert [g.lead for g in a.duplicate_groups] == ["lead20@example.pl"]
    assert "Pominięto 3 wiersze (FAILED ×3): nieudana wysyłka, mail nie wyszedł." in \
        words.left_out_lines(result.left_out)


def test_an_opens_and_clicks_export_has_no_sends_and_the_cli_says_so(runner, tmp_path):
    rows = [r for r in status_log() if r[3] in ("OPENED", "CLICKED")]
    path = tmp_path / "engagement.csv"
    path.write_text(as_csv(rows, header=("timestamp", "campaign", "email", "event")))
    result = runner.invoke(args=["timeline", "--log", str(path), "--json", "--lang", "en"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["total_sends"], data["duplicate_sends"], data["left_out_rows"]) == (0, 0, len(rows))
    assert data["left_out"] == {"engagement": dict(Counter(r[3] for r in rows))}
    assert "no row of the log is a delivered send" in result.stderr


def test_polish_statuses_and_delivered_confirmations_count_once():
    at = datetime(2026, 3, 2, 9, 0, 0)
    text = ("Data wysyłki;Lead;Status\n"
            f"{at:%d.%m.%Y %H:%M:%S};1;wysłano\n{at:%d.%m.%Y %H:%M:%S};1;dostarczono\n"
            f"{at:%d.%m.%Y} 09:05:00;2;błąd\n{at:%d.%m.%Y} 09:20:00;2;Wysłano\n")
    result = parse_log(text.encode("cp1250"))
    assert [e.lead for e in result.events] == ["1", "2"]
    assert result.left_out == {"delivered": {"DOSTARCZONO": 1}, "failed": {"BŁĄD": 1}}
    assert analyse(result.events).duplicate_sends == 0


# ---- point 3: a Polish Excel export ------------------------------------------------------------

def polish_excel_rows(seed: int = 3) -> list[tuple[datetime, str, str, str, str]]:
    """(local Warsaw time, campaign, lead, variant, status) of a Polish team's campaign."""
    rnd, rows = random.Random(seed), []
    start = datetime(2026, 3, 12, 9, 3, 11)
    for i in range(60):
        rows.append((start + timedelta(seconds=97 * i), "Jesień — Łódź", str(500 + i), rnd.choice("AB"),
                     "Wysłano"))
    for i in range(8):  # the incident's shape: every 5 minutes a lead twice at :01
        at = datetime(2026, 3, 12, 11, 40, 1) + timedelta(minutes=5 * i)
        rows += [(at, "Jesień — Łódź", str(700 + i), "A", "Wysłano")] * 2
    rows.append((datetime(2026, 3, 12, 12, 30, 0), "Jesień — Łódź", "701", "A", "Błąd"))
    return rows


def polish_excel_bytes(rows, fmt="%d.%m.%Y %H:%M:%S") -> bytes:
    """The rows as a Polish Excel saves them: cp1250, semicolons, CRLF, the date column last."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(["Kampania", "Lead", "Wariant", "Status", "Data wysyłki"])
    writer.writerows([c, lead, v, s, at.strftime(fmt)] for at, c, lead, v, s in rows)
    return out.getvalue().encode("cp1250")


@pytest.mark.parametrize("fmt", ["%d.%m.%Y %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%d.%m.%Y %H:%M:%S,%f"])
def test_a_polish_excel_export_in_cp1250_with_day_first_dates(fmt):
    rows = polish_excel_rows()
    result = parse_log(polish_excel_bytes(rows, fmt), tz="Europe/Warsaw")
    assert (result.encoding, result.delimiter, result.rejected) == ("cp1250", ";", [])
    assert result.columns == {"time": "Data wysyłki", "lead": "Lead", "campaign": "Kampania",
                              "variant": "Wariant", "status": "Status"}
    sent = [(utc(at), c, lead, v) for at, c, lead, v, s in rows if s == "Wysłano"]
    assert sorted((e.at, e.campaign, e.lead, e.variant) for e in result.events) == sorted(sent)
    a = analyse(result.events)
    assert (a.total_sends, a.unique_keys, a.duplicate_sends) == ref_counts(sent)
    assert (a.before.sends, a.after.sends) == ref_split(sent)
    assert result.left_out == {"failed": {"BŁĄD": 1}}
    assert finding(a, tz="Europe/Warsaw").startswith("Od 11:40:01 co 5 minut ten sam lead dostaje 2 maile")


def test_excel_date_numbers_are_read_to_the_second():
    local = datetime(2026, 3, 12, 11, 40, 1)
    serial = (local - datetime(1899, 12, 30)).total_seconds() / 86400
    result = parse_log(f"Data;Odbiorca\n{serial:.10f};jan@example.pl\n".encode(), tz="Europe/Warsaw")
    assert [e.at for e in result.events] == [utc(local)]


def test_separate_polish_date_and_time_columns():
    result = parse_log("Data;Godzina;Adres e-mail\n12.03.2026;9:19:09;a@x.pl\n".encode("cp1250"),
                       tz="Europe/Warsaw")
    assert [e.at for e in result.events] == [utc(datetime(2026, 3, 12, 9, 19, 9))]


def test_unrecognised_columns_offer_the_mapping_step():
    text = "Kiedy;Kto;Co\n2026-03-12 10:00:00;jan@example.pl;Wiosna\n"
    with pytest.raises(MissingColumns) as caught:
        parse_log(text.encode())
    assert caught.value.header == ["Kiedy", "Kto", "Co"]
    assert caught.value.preview == [["2026-03-12 10:00:00", "jan@example.pl", "Wiosna"]]
    result = parse_log(text.encode(), columns={"time": "Kiedy", "lead": "2", "campaign": "co"})
    assert [(e.lead, e.campaign) for e in result.events] == [("jan@example.pl", "Wiosna")]


def test_the_cli_picks_columns_by_hand(runner, tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("Kiedy;Kto\n2026-03-12 10:00:00;1\n2026-03-12 10:00:00;1\n")
    assert runner.invoke(args=["timeline", "--log", str(path)]).exit_code == 1
    result = runner.invoke(args=["timeline", "--log", str(path), "--json", "--columns",
                                 "time=Kiedy,lead=Kto"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["duplicate_sends"] == 1


# ---- point 4: the recipient view ---------------------------------------------------------------

def variant_switch_rows() -> list[tuple[datetime, str, str, str, str]]:
    """(at, campaign, lead, step, variant): leads that got A and then B of one step in one second,
    and leads that got step 2 (a follow-up, not a duplicate) a day later."""
    at, rows = datetime(2026, 3, 12, 10, 0, 1), []
    for i in range(10):
        rows.append((at + timedelta(minutes=i), "3", str(i), "1", "A"))
        if i % 3 == 0:
            rows.append((at + timedelta(minutes=i, milliseconds=150), "3", str(i), "1", "B"))
        rows.append((at + timedelta(days=1, minutes=i), "3", str(i), "2", "A"))
    return rows


def test_a_variant_switch_is_a_duplicate_to_the_recipient_and_a_step_is_not():
    rows = variant_switch_rows()
    text = as_csv(rows, header=("sentAt", "campaignId", "leadId", "sequenceStep", "variantLetter"))
    events = parse_log(text.encode()).events
    exact, recipient = analyse(events, view="exact"), analyse(events, view="recipient")
    assert exact.duplicate_sends == ref_counts(rows)[2] == 0
    assert recipient.duplicate_sends == ref_counts([r[:4] for r in rows])[2] == 4
    assert (recipient.other_view_duplicates, exact.other_view_duplicates) == (0, 4)
    assert "Jeden mail to ta sama kampania, lead i krok (widok odbiorcy" in finding(recipient)
    assert "another variant of the same campaign (4x; not counted as duplicates)" in finding(exact, "en")
    assert "(the recipient's view: another variant is a second mail); duplicates in the other view: 0." in \
        finding(recipient, "en")


# ---- point 5: rejected counts in --json, exit 1 -------------------------------------------------

def test_the_cli_json_counts_rejected_rows_by_kind_and_exits_1_when_nothing_was_read(runner, tmp_path):
    path = tmp_path / "bad.csv"
    bad = ["yesterday,1", ",2", "2026-03-12 10:00,3", "2026-03-12 10:00:00,", "2026-13-12 10:00:00,5"]
    path.write_text("sentAt,leadId\n" + "\n".join(bad) + "\n")
    result = runner.invoke(args=["timeline", "--log", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["total_sends"], data["rows_read"], data["rejected_rows"]) == (0, len(bad), len(bad))
    assert data["rejected_by_reason"] == {"unreadable_time": 1, "empty_time": 1, "no_seconds": 1,
                                          "empty_lead": 1, "invalid_time": 1}
    good = tmp_path / "good.csv"
    good.write_text("sentAt,leadId\n2026-03-12 10:00:00,1\nnonsense,2\n")
    data = json.loads(runner.invoke(args=["timeline", "--log", str(good), "--json"]).stdout)
    assert (data["total_sends"], data["rejected_rows"], data["rejected_by_reason"]) == \
        (1, 1, {"unreadable_time": 1})


# ---- point 6: JSON exports and short errors -----------------------------------------------------

def json_records() -> list[dict]:
    at = datetime(2026, 3, 12, 9, 40, 1, tzinfo=UTC)
    return [{"id": i, "sentAt": (at + timedelta(minutes=i // 2)).isoformat(), "leadId": 100 + i % 7,
             "campaignId": 4, "status": "sent", "meta": {"ip": None}} for i in range(30)]


def test_a_one_line_json_array_export_is_read():
    records = json_records()
    result = parse_log(json.dumps(records, separators=(",", ":")).encode())
    assert (result.format, result.rejected) == ("json", [])
    sends = [(datetime.fromisoformat(r["sentAt"]).replace(tzinfo=None), str(r["campaignId"]),
              str(r["leadId"])) for r in records]
    assert sorted((e.at, e.campaign, e.lead) for e in result.events) == sorted(sends)
    a = analyse(result.events)
    assert (a.total_sends, a.unique_keys, a.duplicate_sends) == ref_counts(sends)


def test_ndjson_with_epoch_milliseconds_and_a_bad_line():
    records = json_records()
    lines = [json.dumps({"ts": int(datetime.fromisoformat(r["sentAt"]).timestamp() * 1000),
                         "email": r["leadId"]}) for r in records] + ['"just a string"']
    result = parse_log("\n".join(lines).encode())
    assert result.format == "ndjson" and len(result.events) == len(records)
    assert result.events[0].at == datetime(2026, 3, 12, 9, 40, 1)
    assert [(r.line, r.kind) for r in result.rejections] == [(len(lines), "not_object")]


def test_a_huge_header_is_not_echoed_whole(runner, tmp_path):
    header = ",".join(f"column_with_a_long_name_{i}_{'x' * 80}" for i in range(40_000))  # ~4 MB
    path = tmp_path / "wide.csv"
    path.write_text(header + "\n" + ",".join("1" for _ in range(40_000)) + "\n")
    result = runner.invoke(args=["timeline", "--log", str(path)])
    assert result.exit_code == 1 and "no time column" in result.output
    assert len(result.output) < 2000
    with pytest.raises(CsvFileError) as caught:
        parse_log(path.read_bytes())
    assert len(str(caught.value)) < 2000


# ---- point 8: Postgres CSV with multi-line cells ------------------------------------------------

def test_a_postgres_copy_csv_with_offsets_nulls_and_multi_line_cells():
    rnd, rows = random.Random(8), []
    start = datetime(2026, 3, 12, 9, 0, 0, 123000)
    for i in range(120):
        at = start + timedelta(seconds=41 * i)
        lead = str(1000 + (i if i % 17 else i - 1))  # every 17th send repeats the previous lead
        body = f"Dzień dobry,\n\nlinia {i}\n\"cytat\", przecinek"
        rows.append((at, "12", lead, None if i % 5 else "B", body))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # \copy … CSV HEADER: LF, quotes only where needed
    writer.writerow(["id", "campaign_id", "lead_id", "variant", "sent_at", "body"])
    for i, (at, campaign, lead, variant, body) in enumerate(rows, start=1):
        offset = rnd.choice([0, 1, 2])
        shown = (at + timedelta(hours=offset)).isoformat(sep=" ") + f"+{offset:02d}"
        writer.writerow([i, campaign, lead, "" if variant is None else variant, shown, body])
    result = parse_log(out.getvalue().encode())
    assert result.rejected == []  # the multi-line quoted bodies are valid RFC 4180
    sends = [(at, c, lead, v or "") for at, c, lead, v, _ in rows]
    assert sorted((e.at, e.campaign, e.lead, e.variant) for e in result.events) == sorted(sends)
    a = analyse(result.events, view="exact")
    assert (a.total_sends, a.unique_keys, a.duplicate_sends) == ref_counts(sends)


# ---- point 12: plurals and Polish reasons --------------------------------------------------------

def test_one_duplicate_in_english_and_polish_rejection_reasons():
    events = parse_log(b"sentAt,leadId\n2026-03-12 10:00:00,1\n2026-03-12 10:00:00,1\n").events
    text = finding(analyse(events), "en")
    assert "1 duplicate." in text and "1 duplicates" not in text
    result = parse_log(b"sentAt,leadId\nyesterday,1\n2026-03-12 10:00,2\n2026-03-12 10:00:00,\n")
    assert [words.rejection(r, "pl") for r in result.rejections] == [
        "nieczytelny czas 'yesterday' (oczekiwano ISO-8601, RRRR-MM-DD GG:MM:SS, DD.MM.RRRR GG:MM:SS "
        "albo liczby daty z Excela)",
        "czas bez sekund '2026-03-12 10:00' (analiza potrzebuje sekundy minuty)", "brak leada"]


# ---- point 9: bursts per campaign in a long log -------------------------------------------------

# (campaign, first send, minutes between, pairs, copies, seconds between copies)
BURSTS = [("11", datetime(2026, 2, 3, 10, 40, 1), 5, 15, 2, 0.15),
          ("12", datetime(2026, 2, 9, 14, 0, 31), 1, 30, 3, 0.2),
          ("12", datetime(2026, 2, 20, 8, 15, 7), 10, 6, 2, 3),
          ("14", datetime(2026, 2, 27, 22, 0, 45), 2, 10, 2, 0)]


def long_log(total: int = 200_000, seed: int = 9) -> list[tuple[datetime, str, str]]:
    """(at, campaign, lead): `total` sends over 30 days in four campaigns, with BURSTS in them."""
    rnd, start, rows = random.Random(seed), datetime(2026, 2, 1), []
    for n, (campaign, first, every, pairs, copies, apart) in enumerate(BURSTS):
        for i in range(pairs):
            at = first + timedelta(minutes=every * i)
            rows += [(at + timedelta(seconds=apart * c), campaign, f"b{n}-{i}") for c in range(copies)]
    for i in range(total - len(rows)):
        at = start + timedelta(seconds=rnd.randrange(30 * 86400), milliseconds=rnd.randrange(1000))
        rows.append((at, rnd.choice("11 12 13 14".split()), f"lead{i}"))  # every background lead once
    return rows


def ref_bursts(rows) -> list[tuple[str, datetime, datetime, int, int, int]]:
    """(campaign, start, end, sends in it, duplicate sends, leads) of each injected burst."""
    expected = []
    for campaign, first, every, pairs, copies, apart in BURSTS:
        end = first + timedelta(minutes=every * (pairs - 1), seconds=apart * (copies - 1))
        inside = sum(1 for at, c, _ in rows if c == campaign and first <= at <= end)
        expected.append((campaign, first, end, inside, pairs * (copies - 1), pairs))
    return expected


def test_several_bursts_in_several_campaigns_are_told_apart():
    rows = long_log()
    text = as_csv(rows, header=("sentAt", "campaignId", "leadId"), fmt=lambda at: at.isoformat(sep=" "))
    result = parse_log(text.encode())
    assert len(result.events) == len(rows) == 200_000
    a = analyse(result.events, view="recipient")
    assert (a.total_sends, a.unique_keys, a.duplicate_sends) == ref_counts(rows)
    assert [(b.campaign, b.start, b.end, b.sends, b.duplicate_sends, b.leads) for b in a.bursts] == \
        ref_bursts(rows)
    text = finding(a)
    assert text.startswith("Duplikaty w 4 osobnych seriach (czas: UTC):")
    for campaign, first, end, inside, dups, _ in ref_bursts(rows):
        assert (f"kampania {campaign}, od {first:%Y-%m-%d %H:%M:%S} do {end:%Y-%m-%d %H:%M:%S}: "
                f"{dups} z {inside} wysyłek to duplikaty") in text
    assert "co 5 minut ten sam lead dostaje 2 maile w tej samej sekundzie, w sekundzie :01 — " \
           "prawdopodobnie dwa równoległe procesy wysyłki" in text
    assert "co minutę ten sam lead dostaje 3 maile w tej samej sekundzie, w sekundzie :31" in text
    assert "co 10 minut ten sam lead dostaje 2 maile w ciągu 3 s" in text
    assert "dni" not in text  # no pattern stretched over days
