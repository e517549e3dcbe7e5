"""Fixtures: a fresh SQLite *file* per test, a real SMTP server, an app bound to both.

With SENDONCE_TEST_DB=postgresql (make test's second run, `-m postgres`), each test's
database is instead a new database in one throwaway PostgreSQL cluster started for the
session (tests/pg_server.py): the same tests, the same code paths, the other engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app import create_app
from models import db
from sender import Settings
from storage import schema
from tests.smtp_sink import SmtpSink

# The repository root: pyproject.toml's pythonpath puts it on sys.path for pytest; real
# subprocesses get it (and tests/, for worker helpers) through PYTHONPATH (env_for).
ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """Compile the translation catalogs, as `make test` does, so a bare pytest agrees."""
    from babel.messages.frontend import CommandLineInterface

    CommandLineInterface().run(["pybabel", "-q", "compile", "-d", str(ROOT / "translations")])


ON_POSTGRES = os.environ.get("SENDONCE_TEST_DB") == "postgresql"
_cluster = None  # the session's PostgreSQL cluster (ON_POSTGRES only)
_databases: dict[Path, str] = {}  # a test's database path -> its PostgreSQL database URL


def database_url(db_path: Path) -> str:
    """The database a test's `db_path` stands for: that SQLite file, or (ON_POSTGRES) a new
    PostgreSQL database made for it, the same one every time the path is asked for."""
    global _cluster
    if not ON_POSTGRES:
        return f"sqlite:///{db_path}"
    if db_path not in _databases:
        if _cluster is None:
            from tests.pg_server import start_or_attach

            _cluster = start_or_attach()
        _databases[db_path] = _cluster.new_database()
    return _databases[db_path]


def sqlite_only(why: str):
    """Skip a test on the PostgreSQL run: it checks SQLite's own machinery (`why` says which);
    the same guarantee has its PostgreSQL test beside it or in tests/test_postgres.py."""
    return pytest.mark.skipif(ON_POSTGRES, reason=f"SQLite only: {why}")


def pg_cluster():
    """The session's PostgreSQL cluster (started on first use), for tests that need it."""
    database_url(Path("/nonexistent/cluster-start"))
    return _cluster


def pytest_sessionfinish(session, exitstatus):
    if _cluster is not None:
        _cluster.stop()


def app_config(db_path: Path, smtp_port: int, **extra) -> dict:
    """The configuration tests (and their subprocesses) run with."""
    config = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-not-for-production",
        # A URL given wins (the chaos run's own database): none is made for db_path then.
        "SQLALCHEMY_DATABASE_URI": extra.pop("SQLALCHEMY_DATABASE_URI", None) or database_url(db_path),
        # Beside the test's database, never in the repository's instance/ folder.
        "MAILBOX_KEY_FILE": str(db_path.parent / "secret.keys"),
        "OUTBOX_DIR": str(db_path.parent / "outbox"),
        "MAIL_BACKEND": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": smtp_port,
        "SMTP_TIMEOUT": 5,
        "SCHEDULER_ENABLED": False,
        "TICK_SECONDS": 1,
        "LEASE_SECONDS": 5,
        "RETRY_BASE_SECONDS": 0,
        "LOG_LEVEL": "WARNING",
        "BASE_URL": "http://sendonce.test",
    }
    config.update(extra)
    return config


def env_for(config: dict) -> dict[str, str]:
    """The same configuration as FLASK_* variables, for real subprocesses."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    for key, value in config.items():
        env[f"FLASK_{key}"] = value if isinstance(value, str) else json.dumps(value)
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'tests'}"
    return env


@pytest.fixture(autouse=True)
def _close_postgres_connections():
    """PostgreSQL run: every engine a test made (create_app in a test, a bench helper...) is
    disposed at its end; an open psycopg connection left to the garbage collector warns,
    where an sqlite3 one closes silently."""
    if not ON_POSTGRES:
        yield
        return
    import weakref

    from sqlalchemy import Engine, event

    engines: weakref.WeakSet = weakref.WeakSet()

    def seen(conn) -> None:
        engines.add(conn.engine)

    event.listen(Engine, "engine_connect", seen)
    yield
    event.remove(Engine, "engine_connect", seen)
    for engine in list(engines):
        engine.dispose()


@pytest.fixture
def smtp():
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def config(tmp_path, smtp) -> dict:
    return app_config(tmp_path / "sendonce.db", smtp.port)


_template: str | None = None  # PostgreSQL run: a database made as below, copied for each app


def _from_template(config: dict) -> None:
    """PostgreSQL run: the test's (still unused) database becomes a copy of one installed
    once per session: the same tables, triggers and stamp as schema.install makes, by a
    file copy instead of ~40 CREATEs per test."""
    global _template
    if _template is None:
        url = _cluster.new_database("template")
        made = create_app({**config, "SQLALCHEMY_DATABASE_URI": url})
        with made.app_context():
            schema.install(db.engine, db.metadata)
            db.engine.dispose()  # a template may have no connection while it is copied
        _template = url.split("/")[3].split("?")[0]
    _cluster.refill(config["SQLALCHEMY_DATABASE_URI"], _template)


@pytest.fixture
def app(config):
    if ON_POSTGRES:
        _from_template(config)
    app = create_app(config)
    with app.app_context():
        schema.install(db.engine, db.metadata)  # tables and triggers, as init-db makes them
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def engine(app):
    # No app context stays pushed during the test: each test-client request gets its own,
    # and so its own db.session, as in production (a shared one would read stale snapshots).
    with app.app_context():
        return db.engine


@pytest.fixture
def settings(app) -> Settings:
    return Settings.from_config(app.config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture(scope="session")
def dovecot():
    """One throwaway Dovecot (IMAP + LMTP on free loopback ports) for the whole session."""
    from tests.imap_server import Dovecot

    server = Dovecot().start()
    yield server
    server.cleanup()


CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "tests" / "screenshots"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    # Debian's chromium (Playwright's own browser download cannot work on this machine);
    # these flags keep it from reaching for a network it does not have.
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": [
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]}


@pytest.fixture
def live_server(app):
    """The app served by werkzeug on a free loopback port, in a thread."""
    import threading

    from werkzeug.serving import make_server

    from tests.smtp_sink import free_port

    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def screenshot(page):
    """Save a full-page screenshot under tests/screenshots/ (git-ignored) to look at."""
    SCREENSHOTS.mkdir(exist_ok=True)

    def take(name: str) -> None:
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    return take
