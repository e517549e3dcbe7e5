"""Findings of the outside security review (issue #13): each test failed before its fix."""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import quote, urlsplit
from urllib.request import urlopen

import pytest
from sqlalchemy import func, select, update
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from app import create_app
from conftest import ROOT, app_config, env_for
from core import campaigns, importer
from core.csvfile import neutralized
from delivery import templating
from delivery.lease import acquire
from delivery.tokens import make_token
from helpers import logged_in_client, make_campaign
from models import Campaign, CampaignLead, Lead, SendLog, Suppression, Variant, db
from procs import wait_for
from smtp_sink import free_port
from storage import schema
from storage.database import immediate
from storage.timeutil import utcnow
from test_security import quick_user, send_now  # noqa: F401 - a fixture
from test_web import csrf_token, login  # noqa: F401 - the login fixture


def suppressions(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Suppression)).scalar()


# --- 1. only POST unsubscribes ----------------------------------------------------------------


def test_head_and_options_on_an_unsubscribe_link_change_nothing(app, client, engine):
    token = make_token(app.config["SECRET_KEY"], "lead@example.com", 1)
    for method in ("HEAD", "OPTIONS", "GET"):
        response = client.open(f"/u/{token}", method=method)
        assert response.status_code == 200, method
        assert suppressions(engine) == 0, method  # a link scanner's HEAD must not unsubscribe
    for method in ("PUT", "DELETE", "PATCH"):
        assert client.open(f"/u/{token}", method=method).status_code == 405, method
    assert suppressions(engine) == 0
    assert client.post(f"/u/{token}").status_code == 200
    assert suppressions(engine) == 1


# --- 4. enroll by tag matches whole tags, literally ---------------------------------------------

TAGGED = {"pct@example.com": "100%", "under@example.com": "q1_webinar", "dash@example.com": "q1-webinar",
          "two@example.com": "vip,q1-webinar", "none@example.com": ""}


def enrolled_by_tag(engine, tag: str) -> set[str]:
    cid = campaigns.create(engine, name=f"tag {tag}", from_address="team@sendonce.test")
    campaigns.add_variant(engine, cid, "A", "s", "b")
    try:
        campaigns.enroll_leads(engine, cid, tag)
    except campaigns.CampaignError:
        pass
    with engine.connect() as conn:
        return set(conn.execute(select(Lead.email).join(CampaignLead, CampaignLead.lead_id == Lead.id)
                                .where(CampaignLead.campaign_id == cid)).scalars())


def test_enroll_by_tag_matches_whole_tags_and_no_wildcards(app, engine):
    rows = "email,tags\n" + "".join(f'{email},"{tags}"\n' for email, tags in TAGGED.items())
    assert importer.import_leads(engine, rows.encode()).imported == len(TAGGED)
    assert enrolled_by_tag(engine, "%") == set()
    assert enrolled_by_tag(engine, "_") == set()
    assert enrolled_by_tag(engine, "q1_webinar") == {"under@example.com"}
    assert enrolled_by_tag(engine, "q1-webinar") == {"dash@example.com", "two@example.com"}
    assert enrolled_by_tag(engine, "100%") == {"pct@example.com"}
    assert enrolled_by_tag(engine, "vip,q1-webinar") == set()  # one tag, not a list of them
    assert enrolled_by_tag(engine, " vip ") == {"two@example.com"}


# --- 2. formula injection: every cell start, for every list separator ---------------------------

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
HOSTILE_ADDRESSES = ["x;=1+1;", "x,=1+1", "a\t=cmd|' /C calc'!A0", "ok;+1;-2;@SUM(1)", "=HYPERLINK(1)",
                     "a;;=1", "a;\t=1"]


def cells_as_spreadsheets_split_them(text: str) -> list[str]:
    """Every cell of a CSV text, read with each list separator Excel may use (Polish: ";")."""
    return [cell for delimiter in (",", ";", "\t")
            for row in csv.reader(io.StringIO(text), delimiter=delimiter) for cell in row]


def test_neutralized_quotes_every_cell_start_after_a_separator():
    for text in HOSTILE_ADDRESSES + ["-1", "plain", "a, b; c"]:
        safe = neutralized(text)
        assert safe.replace("'", "") == text.replace("'", "")  # only quotes were added
        for piece in re.split(r"[,;\t\r\n]", safe)[1:] + [safe]:
            assert not piece.startswith(FORMULA_START), (text, safe)
    assert neutralized("a, b; c") == "a, b; c" and neutralized("plain") == "plain"


def test_rejected_rows_csv_has_no_formula_for_any_separator(app, engine):
    out = io.StringIO()
    csv.writer(out).writerows([["email", "first_name"]] + [[raw, "x"] for raw in HOSTILE_ADDRESSES])
    report = importer.import_leads(engine, out.getvalue().encode())
    assert len(report.rejected) == len(HOSTILE_ADDRESSES)
    for (_, reason), raw in zip(report.rejected, HOSTILE_ADDRESSES, strict=True):
        assert neutralized(reason) == reason  # no raw formula start was copied into the reason
        assert repr(neutralized(raw)) in reason  # but the reason still names it
    written = importer.rejected_csv(report)
    cells = cells_as_spreadsheets_split_them(written)
    assert len(cells) > 3 * len(HOSTILE_ADDRESSES)
    assert [c for c in cells if c.lstrip('"').startswith(FORMULA_START)] == []


# --- 8. smaller findings ----------------------------------------------------------------------


@pytest.fixture
def admin(app, client, login, engine, smtp):  # noqa: F811
    """Logged in, with a campaign of two leads (one sent) to show."""
    cid = make_campaign(engine, 2)
    send_now(app, cid)
    login()
    return cid


def test_unexpected_query_keys_and_huge_numbers_are_not_500s(app, client, admin):
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a 500 shows as a status, not as a raised error
    huge = "99999999999999999999"
    for url in ["/timeline?campaign=1", "/timeline?_method=DELETE", "/timeline?_external=1&_anchor=x",
                f"/campaigns/{admin}/log?campaign_id=2", f"/campaigns/{admin}/timeline?campaign_id=2",
                f"/campaigns/{admin}/log?_method=DELETE&endpoint=x&page=2", "/leads?_method=DELETE",
                f"/leads?page={huge}", f"/suppressions?page={huge}", f"/timeline?page={huge}",
                f"/campaigns/{admin}/log?page={huge}", f"/timeline?campaign={huge}",
                f"/timeline/export.csv?campaign={huge}", f"/campaigns/{huge}", f"/leads/{huge}",
                f"/sends/{huge}/resolve", f"/campaigns/{admin}/variants/A?lead={huge}",
                f"/campaigns/{admin}/timeline?page=-{huge}", "/leads?page=-5"]:
        response = client.get(url)
        assert response.status_code in (200, 404), (url, response.status_code)
        response.close()


def test_an_overlong_token_is_a_404(app, client, admin):
    app.config["PROPAGATE_EXCEPTIONS"] = False
    for token in ("a" * 300, "a" * 5000, "0" * 256):
        for url in (f"/leads/import/{token}", f"/leads/import/{token}/rejected.csv",
                    f"/timeline/legacy/{token}", f"/u/{token}"):
            assert client.get(url).status_code == 404, url


def test_control_characters_in_next_go_to_the_dashboard(app, client, quick_user):  # noqa: F811
    app.config["PROPAGATE_EXCEPTIONS"] = False
    for target in ("/leads\r\nSet-Cookie: x=1", "/leads%0d%0aX: 1", "/leads\n", "/le\x00ads", "/leads\x7f"):
        token = csrf_token(client.get("/login").data)
        response = client.post("/login?next=" + quote(target, safe="%/"), data={
            "email": "admin@example.com", "password": "correct horse", "csrf_token": token})
        assert response.status_code == 302, target
        assert response.location == "/", target
        client.post("/logout", data={"csrf_token": csrf_token(client.get("/").data)})


def test_a_variant_letter_is_one_letter_and_nothing_else(app, client, admin, engine):
    page = client.get(f"/campaigns/{admin}/variants/new").data
    for letter in ("A\n", "A\r", "\nA", "AA", "Ą", "1"):
        response = client.post(f"/campaigns/{admin}/variants/new", data={
            "csrf_token": csrf_token(page), "letter": letter, "subject": "s", "body": "b", "weight": "1"})
        assert response.status_code == 200, letter  # the form again, with the error
    for letter in ("A\n", " B", "AA"):
        with pytest.raises(campaigns.CampaignError):
            campaigns.add_variant(engine, admin, letter, "s", "b")
    with engine.connect() as conn:
        assert sorted(conn.execute(select(Variant.letter).where(Variant.campaign_id == admin)).scalars()) \
            == ["A", "B"]


def test_healthz_shows_the_lease_holder_only_to_a_logged_in_user(app, client, login, engine):  # noqa: F811
    with app.app_context():
        acquire(engine, "host-7:4242:abc", utcnow(), 60)
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 200 and anonymous.get_json()["database"] == "ok"
    assert anonymous.get_json()["scheduler"]["fresh"] is True
    assert "host-7" not in anonymous.get_data(as_text=True) and "4242" not in anonymous.get_data(as_text=True)
    login()
    assert client.get("/healthz").get_json()["scheduler"]["holder"] == "host-7:4242:abc"


def test_a_failed_test_send_says_it_failed(app, client, admin, smtp):
    smtp.recorder.rcpt_replies["admin@example.com"] = ["550 no such user"]
    page = client.get(f"/campaigns/{admin}/variants/A").data
    response = client.post(f"/campaigns/{admin}/variants/A/test", data={"csrf_token": csrf_token(page)},
                           follow_redirects=True)
    text = html.unescape(response.get_data(as_text=True))
    assert "550" in text
    assert "Wysłano test" not in text and "Test sent" not in text
    assert "Nie udało się wysłać testu do admin@example.com" in text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_database_outbox_and_uploads_are_private(tmp_path, smtp):
    app = create_app(app_config(tmp_path / "private.db", smtp.port, MAIL_BACKEND="outbox",
                                OUTBOX_DIR=str(tmp_path / "outbox")))
    with app.app_context():
        schema.install(db.engine, db.metadata)
        cid = make_campaign(db.engine, 1)
    send_now(app, cid)
    client = logged_in_client(app)
    token = csrf_token(client.get("/").data)
    lead_csv = (io.BytesIO(b"email\nx@example.com\n"), "a.csv")
    lead_upload = client.post("/leads/import", data={"csrf_token": token, "file": lead_csv})
    # A legacy log whose columns are not recognised is kept on disk until they are picked.
    legacy_upload = client.post("/timeline/legacy", data={"csrf_token": token, "tz": "UTC", "file": (
        io.BytesIO(b"kiedy,kto\n2025-01-14T09:00:00Z,a@example.com\n"), "l.csv")})
    page = legacy_upload.get_data(as_text=True)
    legacy_token = re.search(r"/timeline/legacy/map/([0-9a-f]+)", page).group(1)
    uploads = Path(app.instance_path) / "uploads"
    files = [uploads / (urlsplit(lead_upload.location).path.rsplit("/", 1)[1] + ".csv"),
             uploads / f"{legacy_token}.log"]
    files += [tmp_path / "private.db", tmp_path / "private.db-wal", *(tmp_path / "outbox").glob("*.eml")]
    assert len(files) == 5
    for path in files:
        assert mode(path) == 0o600, (path, oct(mode(path)))
    for folder in (uploads, tmp_path / "outbox"):
        assert mode(folder) == 0o700, (folder, oct(mode(folder)))
    with app.app_context():
        db.engine.dispose()


def test_smtp_credentials_are_not_sent_without_tls_unless_the_operator_says_so(tmp_path):
    plain = app_config(tmp_path / "x.db", 25, SMTP_USERNAME="team", SMTP_PASSWORD="secret")
    with pytest.raises(ValueError, match="SMTP_ALLOW_PLAINTEXT_AUTH"):
        create_app(plain)
    create_app({**plain, "SMTP_ALLOW_PLAINTEXT_AUTH": True})  # the explicit flag
    create_app({**plain, "SMTP_SECURITY": "starttls"})
    create_app({**plain, "MAIL_BACKEND": "outbox"})  # no SMTP at all
    create_app(app_config(tmp_path / "x.db", 25))  # no credentials


ACCESS_SECRET = "top-secret-search-term"


def test_unsubscribe_tokens_and_search_terms_stay_out_of_the_access_log(app, live_server, caplog):
    caplog.set_level(logging.INFO, logger="werkzeug")
    token = make_token(app.config["SECRET_KEY"], "private.person@example.com", 1)
    for path in (f"/u/{token}", f"/leads?q={ACCESS_SECRET}", f"/suppressions?q={ACCESS_SECRET}&page=2"):
        try:
            urlopen(live_server + path).close()
        except HTTPError as exc:
            exc.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert len(lines) >= 3 and any("/u/" in line for line in lines)  # the requests are logged ...
    for line in lines:
        assert token not in line and ACCESS_SECRET not in line and "private.person" not in line, line


def test_gunicorn_access_log_leaves_out_tokens_and_search_terms(app, config, tmp_path):
    token = make_token(app.config["SECRET_KEY"], "private.person@example.com", 1)
    log = tmp_path / "access.log"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}",
                               "--access-logfile", str(log), "app:create_app()"], cwd=ROOT,
                              env=env_for(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        for path in (f"/u/{token}", f"/leads?q={ACCESS_SECRET}"):
            _answers(f"http://127.0.0.1:{port}{path}")
        wait_for(lambda: log.exists() and log.read_text().count("\n") >= 3, timeout=30)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    assert "/u/" in text and "/leads" in text
    assert token not in text and ACCESS_SECRET not in text and "private.person" not in text, text


def _answers(url: str) -> bool:
    try:
        urlopen(url).close()
    except HTTPError as exc:
        exc.close()
    except OSError:
        return False
    return True


# --- 6. control characters from outside are shown, never obeyed, on the terminal ---------------

ERASE = "\x1b[1A\x1b[2K"  # cursor up one line, erase it
FAKE = "Duplicates: 0"
HOSTILE_VALUES = [f"{ERASE}{FAKE}", f"w\n{FAKE}\n", "\x9b2J", "x\u202eevil", "a\rb", "bell\x07"]
RAW = ("\x1b", "\x9b", "\u202e", "\x07", "\r")


def assert_harmless(text: str) -> None:
    assert not any(char in text for char in RAW), repr(text)
    assert not any(line.startswith(FAKE) for line in text.splitlines()), text


def test_cli_timeline_of_a_hostile_legacy_log_shows_control_characters(runner, tmp_path):
    rows = ["sentAt,lead,campaignId,variantLetter,trigger,worker"]
    for i, value in enumerate(HOSTILE_VALUES * 2):  # each twice: duplicates, so the report quotes them
        rows.append(f'2025-01-14T09:{i % 6:02d}:0{i // 6}Z,"{value}","{value}",A,"{value}","{value}"')
    rows.append(f'not a time{ERASE}{FAKE},x,1,A,cli,w')
    # Ordinary rows around them: a file that is mostly control characters is refused as
    # binary by the CSV reader before anything is printed (core/csvfile.py).
    rows += [f"2025-01-15T10:{i // 60:02d}:{i % 60:02d}Z,ok{i}@example.com,1,A,cli,w" for i in range(400)]
    log = tmp_path / "hostile.csv"
    log.write_text("\n".join(rows) + "\n", encoding="utf-8")
    text = runner.invoke(args=["timeline", "--log", str(log), "--lang", "en"])
    assert text.exit_code == 0, text.output
    assert_harmless(text.output)
    assert "\\x1b[2K" in text.output  # shown, as an escape
    as_json = runner.invoke(args=["timeline", "--log", str(log), "--json"])
    assert as_json.exit_code == 0
    assert_harmless(as_json.output)
    assert json.loads(as_json.stdout)  # still JSON a script can read


def test_cli_outputs_of_lead_campaign_and_smtp_text_show_control_characters(app, runner, engine, tmp_path):
    cid = make_campaign(engine, 1, start=False, name=f"n{ERASE}{FAKE}")
    with immediate(engine) as conn:
        conn.execute(update(Campaign.__table__).values(pause_reason=f"550 {ERASE}{FAKE}"))
        conn.execute(SendLog.__table__.insert().values(
            campaign_id=cid, lead_id=1, variant_letter="A", status="unknown", trigger="cli", worker="w",
            smtp_reply=f"421 \n{FAKE}\x1b]0;title\x07"))
    for args in (["campaign", "show", str(cid)], ["resolve"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, result.output
        assert_harmless(result.output)
        assert "\\x1b" in result.output, args
    bad = tmp_path / "bad.csv"
    bad.write_bytes(f"email\n{ERASE}{FAKE}@x\nx\x9b@example.com\n".encode())
    result = runner.invoke(args=["import-leads", str(bad)])
    assert result.exit_code == 1
    assert_harmless(result.output)
    header = tmp_path / "header.csv"
    header.write_bytes(f"name{ERASE}{FAKE}\nx\n".encode())
    result = runner.invoke(args=["import-leads", str(header)])
    assert result.exit_code == 1 and "nothing was imported" in result.output
    assert_harmless(result.output)


# --- 7. an upload's cost is bounded, and a refusal says why -------------------------------------


def post_big(client, url: str, data: dict):
    """A multipart POST built in memory (the test client spools a big body to a temporary
    file that it never closes: a ResourceWarning, an error under this suite's settings)."""
    boundary, body = encode_multipart(MultiDict(data))
    return client.post(url, data=body, content_type=f"multipart/form-data; boundary={boundary}")


def upload_names(app) -> set[str]:
    folder = Path(app.instance_path) / "uploads"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_an_oversized_legacy_log_is_refused_with_its_limit_and_not_stored(app, client, login):  # noqa: F811
    app.config["LEGACY_LOG_MAX_BYTES"] = 2 * 1024 * 1024
    login()
    token = csrf_token(client.get("/timeline").data)
    before = upload_names(app)
    big = b"sentAt,lead\n" + b"2025-01-14T09:00:00Z,lead@example.com\n" * 60_000  # 2.3 MB
    response = post_big(client, "/timeline/legacy", {"csrf_token": token, "tz": "UTC",
                                                     "file": FileStorage(io.BytesIO(big), "big.csv")})
    page = response.get_data(as_text=True)
    assert response.status_code == 413
    assert "Plik jest większy niż 2 MB" in page and "LEGACY_LOG_MAX_BYTES" in page
    assert upload_names(app) == before
    ok = client.post("/timeline/legacy", data={"csrf_token": token, "tz": "UTC",
                                               "file": (io.BytesIO(big[:100_000]), "small.csv")})
    assert ok.status_code == 302  # under the limit: kept and analysed


def test_a_request_over_max_content_length_gets_a_clear_page(app, client, login):  # noqa: F811
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    login()
    token = csrf_token(client.get("/leads/import").data)
    before = upload_names(app)
    big = FileStorage(io.BytesIO(b"email\n" + b"x" * 2_000_000), "a.csv")
    response = post_big(client, "/leads/import", {"csrf_token": token, "file": big})
    page = response.get_data(as_text=True)
    assert response.status_code == 413
    assert "Plik jest większy niż 1 MB" in page and "MAX_CONTENT_LENGTH" in page
    assert upload_names(app) == before


# --- 5. templates have a time and memory budget -----------------------------------------------

COSTLY = [
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",  # 10**10 steps
    "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ lipsum(10**6) }}",
    "{{ 'a' * 10**9 }}",
    "{{ ['a'] * 10**9 }}",
    "{{ 2 ** 999999999 }}",
    "{{ 10 ** 10000 }}",
    "{{ '%0999999999d'|format(1) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ 'x'.rjust(999999999) }}",
    "{{ 'x'|center(999999999) }}",
    "{{ ('a' * 100000)|replace('a', 'a' * 100000) }}",
    "{{ ('a' * 100000)|indent(100000) }}",
    "{% set s = 'a' * 500000 %}{% set s = s ~ s %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s ~ s }}",
    "{% set s = 'a' * 500000 %}{{ (s + s) + (s + s) + (s + s) + (s + s) + (s + s) }}",
    "{% set s %}{% for i in range(100000) %}{{ 'a' * 1000 }}{% endfor %}{% endset %}{{ s|length }}",
    "{{ ('a' * 1000000)|join('b' * 1000000) }}",
    "{{ range(100000)|batch(999999999, 'x')|list|length }}",
    "{% macro m(s) %}{{ m(s ~ s) }}{% endmacro %}{{ m('a') }}",
    "{{ ['x'] * 1000 }}" * 2000,
    "{% for i in range(1500) %}{{ 'a' * 999 }}{% endfor %}",  # 1.5 M characters of output
]


def outcome_within(seconds: float, function) -> BaseException | object:
    """What `function()` returned or raised, or a failure if it was still running after `seconds`
    (so that, without the limits, this test fails instead of hanging the suite)."""
    done: list = []

    def run() -> None:
        try:
            done.append(function())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            done.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert done, f"still rendering after {seconds} s"
    return done[0]


@pytest.mark.parametrize("source", COSTLY, ids=range(len(COSTLY)))
def test_a_costly_template_is_refused_quickly_with_a_clear_problem(source):
    context = {"first_name": "Anna"}
    refused = outcome_within(30, lambda: templating.render(source, context))
    assert isinstance(refused, templating.TemplateTooCostly), refused
    assert str(refused).startswith("template too large or slow")
    [problem] = [p for p in templating.check("A", source, "ok", context) if p.part == "subject"]
    assert problem.too_costly and "too large or slow" in problem.message


def test_ordinary_templates_still_render():
    context = {"first_name": "Anna", "items": ["a", "b"], "n": 3}
    cases = {
        "Hi {{ first_name }}!": "Hi Anna!",
        "{% for i in items %}{{ loop.index }}{{ i }}{% if not loop.last %}, {% endif %}{% endfor %}":
            "1a, 2b",
        "{{ '%05.1f'|format(3.14159) }} {{ '%s-%s' % ('a', 'b') }} {{ '{:>4}'.format(7) }}": "003.1 a-b    7",
        "{{ 'ab' * 3 }} {{ 2 ** 10 }} {{ items|join('+') }} {{ 'x'|center(5) }}|": "ababab 1024 a+b   x  |",
        "{% set ns = namespace(s='') %}{% for i in range(3) %}{% set ns.s = ns.s ~ i %}{% endfor %}"
        "{{ ns.s }}": "012",
        "{{ range(1000)|sum }} {{ lipsum(1, False, 5, 6)|wordcount }}": "499500 5",
    }
    for source, expected in cases.items():
        assert templating.render(source, context) == expected, source


def test_the_editor_reports_a_costly_template_at_its_field(app, client, admin):
    page = client.get(f"/campaigns/{admin}/variants/new").data
    response = client.post(f"/campaigns/{admin}/variants/new", data={
        "csrf_token": csrf_token(page), "letter": "C", "subject": "{{ 'a' * 10**9 }}",
        "body": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "weight": "1"})
    text = html.unescape(response.get_data(as_text=True))
    assert response.status_code == 200
    assert text.count("Szablon jest za duży albo renderuje się za długo") == 2  # subject and body
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Variant).where(Variant.letter == "C")) == 0


def test_the_sender_renders_with_the_same_limits(app, engine, smtp):
    cid = make_campaign(engine, 2, variants="A", batch_size=2)
    with immediate(engine) as conn:  # as if saved before the limits existed
        conn.execute(update(Variant.__table__).values(body=COSTLY[0]))
    send_now(app, cid)
    assert sum(smtp.recorder.received.values()) == 0
    with engine.connect() as conn:
        campaign = conn.execute(select(Campaign.status, Campaign.pause_reason)).one()
        statuses = conn.execute(select(SendLog.status)).scalars().all()
    assert campaign.status == "paused" and "too large or slow" in campaign.pause_reason
    assert statuses and set(statuses) <= {"retry"}  # nothing sent, nothing lost: back in the queue
