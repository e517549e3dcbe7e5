"""Bad input end to end, through the browser routes and the CLI: huge and broken CSV files,
CR/LF and Polish text in the forms, and a database that is read-only or locked."""

from __future__ import annotations

import csv
import io
import os
import re
import sqlite3
import stat
import subprocess
import sys
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from app import create_app
from conftest import ROOT, env_for
from delivery.tokens import make_token
from helpers import make_campaign, serve_requests
from models import CampaignLead, Lead, SendLog, Suppression, User, db
from storage.database import write_session
from test_web import csrf_token, login  # noqa: F401 - the login fixture

CORPUS = Path(__file__).parent / "data" / "csv"
TEN_MB = 10 * 1024 * 1024


def upload_csv(client, data: bytes, name: str = "leads.csv"):
    token = csrf_token(client.get("/leads/import").data)
    response = client.post("/leads/import", data={"csrf_token": token, "file": (io.BytesIO(data), name)})
    # werkzeug's test client spools a big body to a temporary file and leaves it open.
    response.request.environ["wsgi.input"].close()
    return response


def import_upload(client, location: str, columns: list[str], campaign: int = 0):
    """Step 2 of the import page: map the columns (in order) and import."""
    form = {"csrf_token": csrf_token(client.get("/").data), "campaign": str(campaign)}
    form |= {f"column-{i}": target for i, target in enumerate(columns)}
    return client.post(location.split("?")[0], data=form)


def count(engine, model) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar()


def uploads(app) -> list[str]:
    folder = Path(app.instance_path) / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def result_counts(page: str) -> tuple[int, ...]:
    """(new, merged, rejected[, enrolled]) from the import result page."""
    return tuple(int(n) for n in re.findall(
        r"(?:Nowe leady|Scalone z istniejącymi|Odrzucone|Dodane do kampanii|New leads|Merged with existing|"
        r"Rejected|Enrolled): (\d+)", page))


# --- CSV files through the upload page and the CLI -------------------------------------------


@pytest.mark.slow
def test_a_hundred_thousand_rows_through_the_import_page(app, client, login, engine):  # noqa: F811
    cid = make_campaign(engine, 0, start=False)
    rows = []
    for i in range(100_000):
        if i % 1000 == 999:
            rows.append(f"not-an-address-{i},Bad,Row")  # 100 rejected
        elif i % 1000 == 998:
            rows.append(f" LEAD{i - 998}@Example.COM ,Again,Later")  # 100 repeats of earlier rows: rejected
        else:
            rows.append(f"lead{i}@example.com,Imię{i},Nazwisko{i}")
    data = ("email,imię,nazwisko\n" + "\n".join(rows) + "\n").encode()
    login()
    response = upload_csv(client, data)
    assert response.status_code == 302
    result = import_upload(client, response.location, ["email", "first_name", "last_name"], campaign=cid)
    page = result.get_data(as_text=True)
    assert result.status_code == 200
    assert result_counts(page) == (99_800, 0, 200, 99_800)
    assert count(engine, Lead) == 99_800 and count(engine, CampaignLead) == 99_800
    with engine.connect() as conn:
        again = conn.execute(select(Lead.first_name).where(Lead.email == "lead1000@example.com")).scalar()
    assert again == "Imię1000"  # the first row wins; the repeat is rejected, not merged
    rejected = client.get(response.location.split("?")[0] + "/rejected.csv").get_data(as_text=True)
    lines = list(csv.reader(io.StringIO(rejected)))
    assert len(lines) == 201 and lines[1][0] == "1000"  # header is line 1: row i=998 is line 1000
    assert lines[1][1] == "ten sam adres co w wierszu 2"


def long_line_file(where: str) -> bytes:
    """Five good rows and one row with a 10 MB cell (in the preview, or later as its address)."""
    good = [f"good{i}@example.com,Good{i},note {i}" for i in range(5)]
    huge = ("huge@example.com,Huge," + "x" * TEN_MB) if where == "notes" else ("y" * TEN_MB + ",Huge,n")
    at = 2 if where == "notes" else 5
    return ("email,first_name,notes\n" + "\n".join(good[:at] + [huge] + good[at:]) + "\n").encode()


@pytest.mark.parametrize(("where", "line"), [("notes", 4), ("email", 7)])
def test_a_10_mb_line_rejects_its_row_and_the_good_rows_go_in(app, client, login, engine, runner,  # noqa: F811
                                                              tmp_path, where, line):
    data = long_line_file(where)
    login()
    response = upload_csv(client, data)
    assert response.status_code == 302, response.get_data(as_text=True)[-2000:]
    mapping = client.get(response.location)
    assert mapping.status_code == 200 and len(mapping.data) < 1_000_000  # the preview is clipped
    result = import_upload(client, response.location, ["email", "first_name", "field:notes"])
    page = result.get_data(as_text=True)
    assert result.status_code == 200 and len(page) < 100_000
    assert result_counts(page) == (5, 0, 1, 0)
    assert re.search(rf"<td>{line}</td><td>komórka ma 10,485,7\d\d znaków", page), page[-3000:]
    with engine.connect() as conn:
        stored = conn.execute(select(Lead.email, Lead.fields)).all()
    assert sorted(email for email, _ in stored) == [f"good{i}@example.com" for i in range(5)]
    assert all(len(str(fields)) < 100 for _, fields in stored)
    # The CLI reads the same file the same way (the leads are there already: all merge).
    path = tmp_path / "long.csv"
    path.write_bytes(data)
    result = runner.invoke(args=["import-leads", str(path)])
    assert result.exit_code == 0, result.output[-500:]
    assert "imported 0, merged 5, rejected 1" in result.output
    assert f"line {line}: a cell holds" in result.output and len(result.output) < 1000


UNREADABLE = [
    ("empty.csv", b"", "the file is empty"),
    ("blank.csv", b"\r\n  \n\n", "the file is empty"),
    ("image.png", (CORPUS / "image.png").read_bytes(), "binary data"),
    ("workbook.xlsx", (CORPUS / "workbook.xlsx").read_bytes(), "spreadsheet or other ZIP file"),
    ("random.bin", bytes(range(256)) * 64, "binary data"),
]


@pytest.mark.parametrize(("name", "data", "message"), UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_an_unreadable_file_is_refused_on_the_upload_page(app, client, login, engine, runner, tmp_path,  # noqa: F811
                                                          name, data, message):
    login()
    kept = uploads(app)
    response = upload_csv(client, data, name)
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert re.search(rf'<small class="error">[^<]*{re.escape(message)}', page), page[-2000:]
    assert 'type="file"' in page  # the upload form again, to choose another file
    assert uploads(app) == kept and count(engine, Lead) == 0  # nothing stored, nothing imported
    path = tmp_path / name
    path.write_bytes(data)
    result = runner.invoke(args=["import-leads", str(path)])
    assert result.exit_code == 1 and message in result.output and count(engine, Lead) == 0


def test_thousands_of_bad_suppression_lines_keep_the_session_cookie_small(client, login, engine):  # noqa: F811
    login()
    lines = [f"{i:05x}-not-an-address-{i * 7919 % 100_003}" for i in range(3000)]
    lines[1500:1500] = ["one@example.com", "two@example.com"]
    token = csrf_token(client.get("/suppressions").data)
    response = client.post("/suppressions/import", data={
        "csrf_token": token, "file": (io.BytesIO(("email\n" + "\n".join(lines)).encode()), "s.csv")})
    assert response.status_code == 302
    assert len(response.headers["Set-Cookie"]) < 4093  # browsers drop a bigger cookie, messages and all
    page = client.get("/suppressions").get_data(as_text=True)
    assert "Dodano adresy do listy wykluczeń: 2." in page
    assert page.count("Wiersz ") == 10 and "kolejne wiersze, które nie są adresami: 2990." in page
    with engine.connect() as conn:
        assert conn.execute(select(Suppression.email)).scalars().all() == [
            "one@example.com", "two@example.com"]


# --- CR/LF and Polish letters typed into the forms, then sent ---------------------------------

INJECT = "\r\nBcc: victim@example.org\r\nX-Evil: 1"


def test_crlf_and_polish_letters_from_the_forms_never_make_a_header(app, client, login, engine, smtp):  # noqa: F811
    login()
    token = csrf_token(client.get("/campaigns/new").data)
    created = client.post("/campaigns/new", data={
        "csrf_token": token, "name": "Jesień" + INJECT, "from_address": "zespol@example.com",
        "from_name": "Zażółć Gęślą" + INJECT, "interval_seconds": "0", "batch_size": "5",
        "window_weekdays": [str(d) for d in range(7)], "window_start_hour": "0", "window_end_hour": "24",
        "timezone": "Europe/Warsaw"})
    assert created.status_code == 302
    cid = int(re.search(r"/campaigns/(\d+)/", created.location).group(1))
    saved = client.post(f"/campaigns/{cid}/variants/new", data={
        "csrf_token": token, "letter": "A", "subject": "Cześć {{ first_name }}" + INJECT,
        "body": "Treść: źdźbło\r\n.\r\nKoniec {{ unsubscribe_url }}", "weight": "1"})
    assert saved.status_code == 302
    leads_csv = 'email,first_name\nlucja@example.com,"Łucja\nX-Injected: yes"\n'.encode()
    import_upload(client, upload_csv(client, leads_csv).location, ["email", "first_name"], campaign=cid)
    client.post(f"/campaigns/{cid}/start", data={"csrf_token": token})
    page = client.get(f"/campaigns/{cid}").data
    key = re.search(rb'name="key" type="hidden" value="([0-9a-f]+)"', page).group(1).decode()
    client.post(f"/campaigns/{cid}/send", data={"csrf_token": token, "key": key})
    serve_requests(app)

    assert dict(smtp.recorder.received) == {"lucja@example.com": 1}  # nobody else: no Bcc
    (msg,) = smtp.recorder.messages
    assert sorted(msg.keys()) == sorted([
        "From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post",
        "Content-Type", "Content-Transfer-Encoding", "MIME-Version"])
    assert all(str(value).isascii() for value in msg.values())  # non-ASCII only as encoded words
    assert "=?utf-8?" in msg["Subject"].lower() and "=?utf-8?" in msg["From"].lower()

    def decoded(name: str) -> str:
        return str(make_header(decode_header(msg[name])))

    assert decoded("Subject") == "Cześć Łucja X-Injected: yes Bcc: victim@example.org X-Evil: 1"
    assert decoded("From") == "Zażółć Gęślą Bcc: victim@example.org X-Evil: 1 <zespol@example.com>"
    assert decoded("To") == "Łucja X-Injected: yes <lucja@example.com>"
    body = msg.get_payload(decode=True).decode("utf-8").replace("\r\n", "\n")
    assert body.startswith("Treść: źdźbło\n.\nKoniec http://sendonce.test/u/")  # the lone dot survived
    with engine.connect() as conn:
        assert conn.execute(select(SendLog.status)).scalars().all() == ["sent"]


# --- a read-only or locked database ----------------------------------------------------------


def dump(path: Path) -> list[str]:
    """Every row of every table, to compare before and after."""
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def copy_session(source, target) -> None:
    cookie = source.get_cookie("session")
    target.set_cookie("session", cookie.value)


def database_posts(app, client, cid: int, upload_location: str) -> dict[str, tuple[str, dict]]:
    """One POST of each kind of write a user can make, ready to send with `client`."""
    token = csrf_token(client.get(f"/campaigns/{cid}").data)
    page = client.get(f"/campaigns/{cid}").data
    key = re.search(rb'name="key" type="hidden" value="([0-9a-f]+)"', page).group(1).decode()
    unsubscribe = make_token(app.config["SECRET_KEY"], "lead0000@example.com", cid)
    return {
        "send button": (f"/campaigns/{cid}/send", {"csrf_token": token, "key": key}),
        "new campaign": ("/campaigns/new", {
            "csrf_token": token, "name": "Nowa", "from_address": "a@example.com", "interval_seconds": "0",
            "batch_size": "1", "window_weekdays": ["0"], "window_start_hour": "0", "window_end_hour": "24",
            "timezone": "UTC"}),
        "suppress": ("/suppressions", {"csrf_token": token, "email": "stop@example.com", "detail": ""}),
        "import": (upload_location.split("?")[0],
                   {"csrf_token": token, "campaign": "0", "column-0": "email"}),
        "pause": (f"/campaigns/{cid}/pause", {"csrf_token": token}),
        "language": ("/language", {"csrf_token": token, "language": "en"}),
        "unsubscribe": (f"/u/{unsubscribe}", {}),
    }


@pytest.fixture
def prepared(app, client, login, engine, smtp):  # noqa: F811
    """A started campaign of 3 leads, a logged-in admin and an upload waiting to be imported."""
    cid = make_campaign(engine, 3, batch_size=3)
    login()
    location = upload_csv(client, b"email\nnew@example.com\n").location
    return cid, location


def assert_clear_503(response, words: str, what: str) -> None:
    page = response.get_data(as_text=True)
    assert response.status_code == 503, (what, page[:300])
    assert words in page, (what, page)
    assert "Traceback" not in page and "OperationalError" not in page and "sqlite" not in page.lower(), what
    assert response.headers["Retry-After"] == "5", what


def test_a_locked_database_gives_a_clear_503_and_changes_nothing(app, client, engine, smtp, prepared, config):
    cid, location = prepared
    path = Path(config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    fast = create_app({**config, "SQLITE_BUSY_TIMEOUT_MS": 200})  # the same file, a short wait
    user = fast.test_client()
    copy_session(client, user)
    posts = database_posts(fast, user, cid, location)
    before = dump(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock, and keeps it
    try:
        for name, (url, form) in posts.items():
            response = user.post(url, data=form)
            assert_clear_503(response, "Baza danych jest zajęta", name)
            assert "ponad 0.2 s" in response.get_data(as_text=True), name
        fresh = fast.test_client()  # a login writes too (the throttle's counters)
        assert_clear_503(fresh.post("/login", data={"email": "admin@example.com", "password": "correct horse",
                                                    "csrf_token": csrf_token(fresh.get("/login").data)}),
                         "Baza danych jest zajęta", "login")
        assert user.get(f"/campaigns/{cid}").status_code == 200  # reading still works
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with fast.app_context():
        db.engine.dispose()
    assert dump(path) == before and smtp.recorder.messages == []
    assert Path(app.instance_path, "uploads", location.split("?")[0].rsplit("/", 1)[1] + ".csv").exists()
    # Nothing was half-done: the very same clicks work now, the send button's key included.
    url, form = posts["send button"]
    assert user.post(url, data=form).status_code == 302
    serve_requests(fast)
    assert sum(smtp.recorder.received.values()) == 3
    url, form = posts["import"]
    assert user.post(url, data=form).status_code == 200 and count(engine, Lead) == 4


def test_a_read_only_database_gives_a_clear_503_in_the_users_language(app, client, engine, smtp, prepared,
                                                                      config):
    cid, location = prepared
    token = csrf_token(client.get("/").data)
    client.post("/language", data={"csrf_token": token, "language": "en"})
    path = Path(config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    before = dump(path)
    read_only = create_app({**config, "SQLALCHEMY_DATABASE_URI": read_only_uri(path)})
    user = read_only.test_client()
    copy_session(client, user)
    posts = database_posts(read_only, user, cid, location)
    try:
        for name, (url, form) in posts.items():
            if name == "language":
                continue  # (this user's choice is English already)
            assert_clear_503(user.post(url, data=form), "The database file is read-only", name)
        assert user.get("/leads").status_code == 200  # reading still works
    finally:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        with read_only.app_context():
            db.engine.dispose()
    assert dump(path) == before and smtp.recorder.messages == []


def test_a_database_that_cannot_be_opened_gives_a_503_too(app, client, login, config, tmp_path):  # noqa: F811
    login()
    gone = create_app({**config, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/no/such/dir/x.db"})
    stranger = gone.test_client()
    form = {"email": "admin@example.com", "password": "x",
            "csrf_token": csrf_token(stranger.get("/login").data)}
    assert_clear_503(stranger.post("/login", data=form), "Baza danych jest teraz niedostępna", "login")
    admin = gone.test_client()
    copy_session(client, admin)
    # Logged in, the page itself needs the database (to know the user and their language):
    # a plain sentence then, still no traceback.
    assert_clear_503(admin.get("/"), "the database cannot be used right now", "dashboard")


def read_only_uri(path: Path) -> str:
    """The database opened read-only: the file's mode says so, and (root ignores modes) SQLite too."""
    os.chmod(path, stat.S_IRUSR)
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def test_the_busy_timeout_comes_from_the_config(config):
    for extra, expected in (({}, 10_000), ({"SQLITE_BUSY_TIMEOUT_MS": 200}, 200)):
        app = create_app({**config, **extra})
        with app.app_context():
            assert db.session.execute(text("PRAGMA busy_timeout")).scalar() == expected
            db.engine.dispose()


def flask_cli(config: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT,
                          env=env_for(config), capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], result.stderr


def test_the_cli_says_the_database_is_locked_in_one_line(app, engine, config, tmp_path, runner):
    make_campaign(engine, 2)
    path = Path(config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    leads_file = tmp_path / "leads.csv"
    leads_file.write_text("email\nnew@example.com\n")
    before = dump(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        fast = {**config, "SQLITE_BUSY_TIMEOUT_MS": 200}
        assert_one_line_error(flask_cli(fast, "import-leads", str(leads_file)), "the database is locked")
        assert_one_line_error(flask_cli(fast, "send-due"), "the database is locked")
        quick = create_app(fast).test_cli_runner()
        for args in (["campaign", "create", "--name", "X"], ["campaign", "pause", "1"], ["recover"],
                     ["create-user", "a@example.com", "--password", "a long enough passphrase"]):
            result = quick.invoke(args=args)
            assert result.exit_code == 1, (args, result.output)
            assert result.output.startswith("Error: the database is locked"), (args, result.output)
            assert result.output.count("\n") == 1, (args, result.output)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert dump(path) == before


def test_the_cli_says_the_database_is_read_only_in_one_line(app, engine, config, tmp_path):
    make_campaign(engine, 2)
    path = Path(config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    leads_file = tmp_path / "leads.csv"
    leads_file.write_text("email\nnew@example.com\n")
    with app.app_context():
        db.engine.dispose()
    before = dump(path)
    try:
        read_only = {**config, "SQLALCHEMY_DATABASE_URI": read_only_uri(path)}
        assert_one_line_error(flask_cli(read_only, "import-leads", str(leads_file)), "cannot be written")
        assert_one_line_error(flask_cli(read_only, "campaign", "pause", "1"), "cannot be written")
    finally:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    assert dump(path) == before
    with write_session(engine) as session:  # and the file is fine afterwards
        session.add(User(email="after@example.com", password_hash="x"))
