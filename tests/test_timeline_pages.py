"""The timeline through the CLI and the pages, for legacy logs and SendOnce's own sends."""

from __future__ import annotations

import io
import json
import re

import pytest
from sqlalchemy import create_engine, text

from conftest import database_url
from core.csvfile import neutralized
from helpers import make_campaign
from test_timeline import INCIDENT_CSV, incident_events
from test_web import csrf_token, login  # noqa: F401 - the login fixture
from timeline import analysis as timeline
from timeline import live as timeline_sql

pytestmark = pytest.mark.postgres  # runs again on PostgreSQL (make test)

INCIDENT_JSON = {"total_sends": 52, "unique_leads": 36, "duplicate_sends": 16,
                 "first_duplicate_at": "2025-01-14T11:40:01",
                 "before": {"sends": 20, "unique_leads": 20, "duplicate_sends": 0},
                 "after": {"sends": 32, "unique_leads": 16, "duplicate_sends": 16},
                 "duplicate_second_histogram": {"1": 15, "4": 1}, "median_interval_seconds": 300.0}


def test_cli_json_reproduces_the_incident(runner):
    result = runner.invoke(args=["timeline", "--log", str(INCIDENT_CSV), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {k: data[k] for k in INCIDENT_JSON} == INCIDENT_JSON
    assert len(data["duplicate_groups"]) == 16
    assert data["duplicate_groups"][0] == {"campaign": "1", "lead": "270", "variant": "A", "count": 2,
                                           "times": ["2025-01-14T11:40:01", "2025-01-14T11:40:01"]}


def test_cli_text_report_reads_like_the_incident(runner):
    result = runner.invoke(args=["timeline", "--log", str(INCIDENT_CSV)])
    assert result.exit_code == 0
    assert "11:40:01" in result.output and "dwa równoległe" in result.output


def test_cli_on_sendonce_sends_shows_zero_duplicates(runner, engine, app, smtp):
    make_campaign(engine, 5)
    for _ in range(5):
        runner.invoke(args=["send-due"])
    data = json.loads(runner.invoke(args=["timeline", "--json"]).output)
    assert (data["total_sends"], data["duplicate_sends"]) == (5, 0)


def test_cli_refuses_both_sources_and_unreadable_logs(runner, tmp_path):
    assert runner.invoke(args=["timeline", "--campaign", "1", "--log", str(INCIDENT_CSV)]).exit_code == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    result = runner.invoke(args=["timeline", "--log", str(bad)])
    assert result.exit_code == 1 and "Error" in result.output


def test_sql_path_agrees_with_the_python_analysis_on_duplicates(tmp_path):
    # SendOnce's own send_log cannot hold duplicates (unique index), so the SQL path's
    # duplicate handling is checked on a table shaped like send_log without that index
    # (a SQLite file, or a fresh PostgreSQL database in the PostgreSQL run).
    events = incident_events()
    engine = create_engine(database_url(tmp_path / "legacy.db"))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE lead (id INTEGER PRIMARY KEY, email TEXT)"))
        conn.execute(text('CREATE TABLE send_log (id INTEGER PRIMARY KEY, campaign_id INT, lead_id INT, '
                          'variant_letter TEXT, status TEXT, "trigger" TEXT, worker TEXT, '
                          "claimed_at TIMESTAMP)"))
        conn.execute(text("INSERT INTO lead VALUES (:id, :email)"),
                     [{"id": int(e.lead), "email": e.lead} for e in {e.lead: e for e in events}.values()])
        conn.execute(text('INSERT INTO send_log (id, campaign_id, lead_id, variant_letter, status, '
                          '"trigger", worker, claimed_at) VALUES (:id, :c, :l, :v, \'sent\', :t, :w, :at)'),
                     [{"id": i, "c": int(e.campaign), "l": int(e.lead), "v": e.variant, "t": e.trigger,
                       "w": e.worker, "at": e.at.isoformat(sep=" ") + ".000000"}
                      for i, e in enumerate(events, 1)])
    with engine.connect() as sql:
        from_sql = timeline_sql.analyse(sql, timeline_sql.Scope())
        buckets = timeline_sql.buckets(sql, timeline_sql.Scope(), 60, events)
    engine.dispose()
    in_memory = timeline.analyse(events)
    assert timeline.to_json(from_sql) == timeline.to_json(in_memory)
    assert [(b.start, b.sends, b.duplicates) for b in buckets] == [
        (b.start, b.sends, b.duplicates) for b in timeline.bucket(events, 60) if b.sends]


def upload_incident(client, tz="UTC"):
    token = csrf_token(client.get("/timeline").data)
    response = client.post("/timeline/legacy", data={
        "csrf_token": token, "tz": tz, "file": (io.BytesIO(INCIDENT_CSV.read_bytes()), "incident.csv")})
    assert response.status_code == 302
    return response.location


def test_legacy_upload_page_shows_the_incident(client, login, engine):  # noqa: F811
    login()
    html = client.get(upload_incident(client)).get_data(as_text=True)
    cells = re.findall(r"<tr><th>[^<]*</th><td>(\d+)</td><td>(\d+)</td><td[^>]*>(\d+)</td>", html)
    assert cells == [("52", "36", "16"), ("20", "20", "0"), ("32", "16", "16")]
    assert "Od 11:40:01 co 5 minut" in html
    assert html.count('class="dup"') >= 16 + 1  # the red cells of 16 groups (+ the totals)
    assert "<rect class=\"dup\"" in html  # duplicates drawn in red in the chart


def test_legacy_log_is_never_written_into_send_log(client, login, engine):  # noqa: F811
    login()
    client.get(upload_incident(client))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM send_log").scalar() == 0


def test_live_page_after_real_sends_shows_zero_duplicates(client, login, engine, app, smtp, runner):  # noqa: F811
    cid = make_campaign(engine, 4)
    for _ in range(4):
        runner.invoke(args=["send-due"])
    login()
    for url in ("/timeline", f"/campaigns/{cid}/timeline", "/timeline?fragment=1"):
        html = client.get(url).get_data(as_text=True)
        assert re.search(r"<tr><th>[^<]*</th><td>4</td><td>4</td><td[^>]*>0</td>", html), url
        assert "0 duplikatów" in html
    export = client.get("/timeline/export.csv").get_data().decode("utf-8-sig").splitlines()  # BOM for Excel
    assert export[0] == "time,campaign,lead,variant,status,trigger,worker" and len(export) == 5


def test_csv_cells_that_look_like_formulas_are_neutralized():
    assert [neutralized(v) for v in ("=1+1", "+48", "-2", "@SUM(A1)", "ok", None)] == [
        "'=1+1", "'+48", "'-2", "'@SUM(A1)", "ok", ""]
