"""The legacy-log pages (#15): stored once, filtered, in the team's zone and language."""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.csvfile import CsvFileError
from models import LegacyEvent, LegacyLog
from test_timeline import INCIDENT_CSV, incident_events
from test_web import csrf_token, login  # noqa: F401 - the login fixture
from timeline.legacy_log import parse_log

TOTALS = re.compile(r"<tr><th>[^<]*</th><td>(\d+)</td><td>(\d+)</td><td[^>]*>(\d+)</td>")


def upload(client, data: bytes, filename: str = "log.csv", follow: bool = False, **form):
    token = csrf_token(client.get("/timeline").data)
    form = {"csrf_token": token, "file": (io.BytesIO(data), filename), **form}
    response = client.post("/timeline/legacy", data=form, follow_redirects=follow)
    # werkzeug's test client spools a big body to a temporary file and leaves it open.
    response.request.environ["wsgi.input"].close()
    return response


def english(client) -> None:
    client.post("/language", data={"csrf_token": csrf_token(client.get("/").data), "language": "en"})


def team_log() -> bytes:
    """The incident as the old system exported it: UTC times, 10:40:01Z for the team's 11:40:01."""
    rows = [f"{(e.at - timedelta(hours=1)).isoformat()}Z,{e.lead},{e.campaign}" for e in incident_events()]
    return ("sentAt,leadId,campaignId\n" + "\n".join(rows) + "\n").encode()


def test_an_upload_is_parsed_once_stored_listed_and_deleted(app, client, login, engine):  # noqa: F811
    login()
    kept = set((Path(app.instance_path) / "uploads").glob("*"))
    response = upload(client, INCIDENT_CSV.read_bytes(), "incydent.csv", tz="UTC", name="Incydent z marca")
    assert response.status_code == 302
    log_id = int(response.location.split("?")[0].rsplit("/", 1)[1])
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(LegacyEvent)) == 52
        assert conn.scalar(select(LegacyLog.ready)) is True
    # Nothing of the upload is kept as a file: every view comes from the stored rows.
    assert set((Path(app.instance_path) / "uploads").glob("*")) == kept
    html = client.get(response.location).get_data(as_text=True)
    assert TOTALS.findall(html) == [("52", "36", "16"), ("20", "20", "0"), ("32", "16", "16")]
    assert "Incydent z marca" in html
    # The events page by page, newest first, as the reference order says.
    newest = sorted(incident_events(), reverse=True)
    page2 = client.get(f"/timeline/legacy/{log_id}?tz=UTC&page=2").get_data(as_text=True)
    shown = re.findall(r"<tr><td>(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)</td><td>1</td><td>(\d+)</td>", page2)
    assert shown == [(e.at.strftime("%Y-%m-%d %H:%M:%S"), e.lead) for e in newest[50:52]]
    listing = client.get("/timeline").get_data(as_text=True)
    assert "Incydent z marca" in listing and f"/timeline/legacy/{log_id}/delete" in listing
    deleted = client.post(f"/timeline/legacy/{log_id}/delete",
                          data={"csrf_token": csrf_token(listing.encode())})
    assert deleted.status_code == 302
    assert client.get(response.location).status_code == 404
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(LegacyEvent)) == 0
    assert "Incydent z marca" not in client.get("/timeline").get_data(as_text=True)


def test_since_and_until_are_applied_to_an_uploaded_log(client, login):  # noqa: F811
    login()
    location = upload(client, INCIDENT_CSV.read_bytes(), tz="UTC").location
    since, until = datetime(2025, 1, 14, 11, 40), datetime(2025, 1, 14, 12, 0)
    inside = [e for e in incident_events() if since <= e.at < until]
    keys = {(e.campaign, e.lead) for e in inside}
    html = client.get(f"{location.split('?')[0]}?tz=UTC&from={since.isoformat()}&to={until.isoformat()}")
    assert TOTALS.findall(html.get_data(as_text=True))[0] == \
        (str(len(inside)), str(len(keys)), str(len(inside) - len(keys)))
    bad = client.get(f"{location.split('?')[0]}?tz=UTC&from=yesterday").get_data(as_text=True)
    assert "yesterday to nie data i godzina" in bad  # said, not silently ignored
    assert TOTALS.findall(bad)[0] == ("52", "36", "16")


def test_an_unknown_zone_is_said_not_silently_replaced(client, login):  # noqa: F811
    login()
    location = upload(client, INCIDENT_CSV.read_bytes(), tz="UTC").location
    html = client.get(f"{location.split('?')[0]}?tz=Mars/Base").get_data(as_text=True)
    assert "Nieznana strefa czasowa Mars/Base: czasy w strefie Europe/Warsaw." in html


def test_times_default_to_the_teams_zone_and_the_finding_names_it(client, login):  # noqa: F811
    login()
    location = upload(client, team_log(), tz="UTC").location
    page = client.get(location.split("?")[0]).get_data(as_text=True)  # no ?tz=: the Polish default
    assert "Od 11:40:01 co 5 minut" in page and "(Europe/Warsaw) to duplikaty" in page
    client.set_cookie("tz", "UTC")  # the browser's zone, as app.js stores it
    assert "Od 10:40:01 co 5 minut" in client.get(location.split("?")[0]).get_data(as_text=True)


def test_the_polish_page_words_rejections_in_polish_and_english_says_1_duplicate(client, login):  # noqa: F811
    login()
    data = b"sentAt,leadId\n2026-03-12 10:00:00,1\n2026-03-12 10:00:00,1\nyesterday,2\n2026-03-12 10:00:00,\n"
    location = upload(client, data, tz="UTC").location
    page = client.get(location).get_data(as_text=True)
    assert "nieczytelny czas" in page and "brak leada" in page and "unreadable time" not in page
    english(client)
    page = client.get(location).get_data(as_text=True)
    assert "unreadable time" in page and "1 duplicate." in page and "1 duplicates" not in page


def test_left_out_statuses_are_listed_on_the_page(client, login):  # noqa: F811
    login()
    data = ("Data wysyłki;Lead;Status\n12.03.2026 10:00:00;1;wysłano\n12.03.2026 09:45:00;1;błąd\n"
            "12.03.2026 11:00:00;1;otwarto\n").encode("cp1250")
    page = client.get(upload(client, data, tz="Europe/Warsaw").location).get_data(as_text=True)
    assert "Pominięto 1 wiersz (BŁĄD ×1): nieudana wysyłka, mail nie wyszedł." in page
    assert TOTALS.findall(page)[0] == ("1", "1", "0")


def test_unknown_columns_lead_to_the_mapping_step(client, login, engine):  # noqa: F811
    login()
    data = b"Kiedy;Kto;Co\n" + b"2026-03-12 10:00:00;jan@example.pl;Wiosna\n" * 2
    page = upload(client, data, "dziwny.csv", tz="UTC")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'name="role-time"' in html and "jan@example.pl" in html
    action = re.search(r'action="(/timeline/legacy/map/[0-9a-f]+)"', html).group(1)
    done = client.post(action, data={"csrf_token": csrf_token(page.data), "name": "dziwny.csv", "tz": "UTC",
                                     "view": "recipient", "role-time": "1", "role-lead": "2",
                                     "role-campaign": "3"})
    assert done.status_code == 302
    assert TOTALS.findall(client.get(done.location).get_data(as_text=True))[0] == ("2", "1", "1")


def test_an_upload_over_the_size_cap_gets_a_clear_message(app, client, login):  # noqa: F811
    app.config["LEGACY_LOG_MAX_BYTES"] = 2000
    login()
    response = upload(client, INCIDENT_CSV.read_bytes(), tz="UTC")
    assert response.status_code == 413
    assert "Plik jest większy niż 1 KB; wyeksportuj krótszy okres" in response.get_data(as_text=True)


def test_the_row_cap_is_a_clear_error():
    with pytest.raises(CsvFileError, match="more than 10 rows; export a shorter period"):
        parse_log(INCIDENT_CSV.read_bytes(), max_rows=10)
    assert len(parse_log(INCIDENT_CSV.read_bytes(), max_rows=52).events) == 52


def test_a_huge_header_does_not_make_a_huge_page(client, login):  # noqa: F811
    login()
    header = ",".join(f"column_with_a_long_name_{i}_{'x' * 80}" for i in range(40_000))  # ~4 MB
    data = (header + "\n" + ",".join("1" for _ in range(40_000)) + "\n").encode()
    response = upload(client, data, tz="UTC")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and 'name="role-time"' in html
    assert "Kolejnych kolumn (39800) nie pokazano." in html
    assert len(html) < 2_000_000
