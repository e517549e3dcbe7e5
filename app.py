"""SendOnce: the Flask application factory.

Configuration, lowest to highest priority: the defaults below, instance/config.py,
then FLASK_* environment variables (FLASK_SMTP_HOST=..., FLASK_TICK_SECONDS=...).
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import flask_babel
import flask_sqlalchemy.session
from flask import Flask, Response, current_app, render_template
from flask_babel import lazy_gettext
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.exc import InternalError, OperationalError
from werkzeug.exceptions import RequestEntityTooLarge

import cli
import scheduler
from delivery.transport import stale_floor
from models import db
from storage.database import (
    BUSY_TIMEOUT_MS,
    configure_engine,
    forbid_writes,
    is_busy,
    is_postgres,
    is_read_only,
)
from web import (
    accesslog,
    accounts,
    auth,
    common,
    editor,
    errors,
    i18n,
    mailboxes,
    replies,
    sequences,
    unsubscribe,
)
from web import alerts as alert_pages
from web import campaigns as views
from web import leads as lead_pages
from web import sendlog as sendlog_pages
from web import suppressions as suppression_pages
from web import timeline as timeline_pages
from web.common import csv_with_bom, label, pause_text, reply_text, translate, unsubscribe_company

csrf = CSRFProtect()
# migrations/ beside this file (Flask-Migrate's convention), whatever the working directory.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
migrate = Migrate(directory=str(MIGRATIONS), render_as_batch=True, transactional_ddl=True)
login_manager = LoginManager()
log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: over HTTPS, Flask-WTF refuses a POST whose Referer is missing.
    "Referrer-Policy": "same-origin",
    # Defence in depth behind escaping: no inline or foreign scripts, no framing.
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
}


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: config, database, login, CSRF, pages, CLI and (if enabled) scheduler."""
    app = Flask(__name__, instance_relative_config=True)
    instance = Path(app.instance_path)
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)  # database, secret key, uploads
    app.config.from_mapping(_defaults(instance))
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
        app.config.from_prefixed_env()
    else:
        app.config.from_mapping(test_config)
    _finish_config(app, instance)
    logging.basicConfig(level=app.config["LOG_LEVEL"],
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    accesslog.install()

    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)
    forbid_writes(flask_sqlalchemy.session.Session)
    migrate.init_app(app, db)
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = lazy_gettext("Please log in to see this page.")

    i18n.babel.init_app(app, locale_selector=i18n.select_locale)
    app.jinja_env.globals.update(language_form=i18n.language_form, get_locale=flask_babel.get_locale)
    app.jinja_env.filters.update(tr=translate, reply=reply_text)
    app.jinja_env.globals.update(label=label, pause_text=pause_text, unsubscribe_company=unsubscribe_company)
    _register_pages(app)
    app.after_request(_security_headers)
    app.after_request(csv_with_bom)
    app.register_error_handler(OperationalError, _database_unavailable)
    app.register_error_handler(InternalError, _database_unavailable)  # PostgreSQL's read-only
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    cli.register(app)
    scheduler.init_app(app)
    return app


def _register_pages(app: Flask) -> None:
    app.url_map.converters["int"] = common.BoundedIntConverter
    for module in (auth, accounts, views, editor, lead_pages, sendlog_pages, suppression_pages,
                   timeline_pages, alert_pages, mailboxes, replies, i18n, unsubscribe, errors, sequences):
        app.register_blueprint(module.bp)
    csrf.exempt(unsubscribe.bp)  # RFC 8058 one-click POSTs carry the signed token instead


def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _database_unavailable(exc: OperationalError | InternalError) -> tuple[str, int, dict[str, str]]:
    """A locked or read-only database: a 503 page in the UI language, not a traceback."""
    if isinstance(exc, InternalError) and not is_read_only(exc):
        raise exc  # a server's internal error is a bug to see, not a busy database
    log.error("database unavailable: %s", exc.orig)
    kind = "locked" if is_busy(exc) else ("unavailable" if not is_read_only(exc) else
                                          "read-only-server" if is_postgres(db.engine) else "read-only")
    seconds = current_app.config.get("SQLITE_BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS) / 1000
    try:
        page = render_template("error.html", kind=kind, seconds=seconds)
    except OperationalError:  # the page needed the database too (to find the user's language)
        page = "503 Service Unavailable: the database cannot be used right now."
    return page, 503, {"Retry-After": "5"}


def _too_large(_exc: RequestEntityTooLarge) -> tuple[str, int]:
    """An upload over MAX_CONTENT_LENGTH: say so and what the limit is, in the UI language."""
    return render_template("too_large.html", limit=common.megabytes(current_app.config["MAX_CONTENT_LENGTH"]),
                           setting="MAX_CONTENT_LENGTH"), 413


def _defaults(instance: Path) -> dict[str, Any]:
    return {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance / 'sendonce.db'}",
        "MAIL_BACKEND": "outbox",  # or "smtp"
        "OUTBOX_DIR": str(instance / "outbox"),
        # Made once, 0600, when SECRET_KEY is not configured; `flask backup` copies it.
        "SECRET_KEY_FILE": str(instance / "secret_key"),
        # Mailbox passwords and tokens are encrypted with the keys in this file (0600, made
        # on first use; storage/secrets.py). Back it up apart from the database.
        "MAILBOX_KEY_FILE": str(instance / "secret.keys"),
        # Replies and bounces (#18): every mailbox with an IMAP host is read by the lease holder
        # each tick, INBOX and this folder too when set (e.g. "Bounces"; "" for none).
        "IMAP_BOUNCE_FOLDER": "",
        "IMAP_TIMEOUT": 30,
        # A mailbox pauses itself when more than RATE x SENDS of its last SENDS sends bounced.
        "BOUNCE_GUARD_SENDS": 100,
        "BOUNCE_GUARD_RATE": 0.03,
        "SMTP_HOST": "localhost",
        "SMTP_PORT": 25,
        "SMTP_USERNAME": "",
        "SMTP_PASSWORD": "",
        "SMTP_SECURITY": "none",  # none | starttls | ssl
        "SMTP_ALLOW_PLAINTEXT_AUTH": False,  # send SMTP_USERNAME/PASSWORD over an unencrypted link
        "SMTP_TIMEOUT": 30,
        "MAIL_FROM": "sendonce@localhost",
        "COMPANY_NAME": "",  # shown to recipients (unsubscribe page); empty: the campaign's sender name
        "BASE_URL": "http://127.0.0.1:5000",
        "SCHEDULER_ENABLED": True,
        "TICK_SECONDS": 60,
        "REQUEST_POLL_SECONDS": 1,  # how often a process looks for "send now" requests
        "LEASE_SECONDS": 180,
        "STALE_SENDING_SECONDS": None,  # default: derived from SMTP_TIMEOUT below
        "HEARTBEAT_SECONDS": 5,  # a claim in flight longer than this is heartbeaten
        "MAX_ATTEMPTS": 5,
        "RETRY_BASE_SECONDS": 60,
        "PAUSE_AFTER_FAILURES": 5,
        "LOG_LEVEL": "INFO",
        # Online backups (flask backup): where, and how many to keep. Same disk is not a backup:
        # point BACKUP_DIR at another disk or copy the folder off the machine (README: Operations).
        "BACKUP_DIR": str(instance / "backups"),
        "BACKUP_KEEP": 14,
        # Alerts (core/alerts.py): at most one alert mail to the admins per this many seconds
        # (later alerts wait and go together); the lease may stay unheld this long while
        # campaigns are active before it is an alert (None: 3 x TICK_SECONDS).
        "ALERT_MIN_INTERVAL_SECONDS": 3600,
        "ALERT_LEASE_SECONDS": None,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        # A login ends after this long without a request (the signed cookie's own age is
        # checked) and, however active, SESSION_ABSOLUTE_LIFETIME (seconds) after it began.
        "PERMANENT_SESSION_LIFETIME": timedelta(hours=12),
        "SESSION_ABSOLUTE_LIFETIME": 14 * 86400,
        "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,  # any request body: uploads (CSV imports, legacy logs)
        # A legacy log is analysed on the server; its size bounds that work (refused above it).
        "LEGACY_LOG_MAX_BYTES": 64 * 1024 * 1024,
        "BABEL_DEFAULT_LOCALE": i18n.DEFAULT,
        "BABEL_TRANSLATION_DIRECTORIES": str(Path(__file__).parent / "translations"),
    }


def _finish_config(app: Flask, instance: Path) -> None:
    config = app.config
    if not config.get("SECRET_KEY"):
        config["SECRET_KEY"] = _instance_secret(Path(config["SECRET_KEY_FILE"]))
    floor = stale_floor(float(config["SMTP_TIMEOUT"]))
    if config["STALE_SENDING_SECONDS"] is None:
        config["STALE_SENDING_SECONDS"] = floor + 60
    if float(config["STALE_SENDING_SECONDS"]) < floor:
        # Below the floor a live, merely slow send could be judged lost, and a person's
        # "send again" could race its final dot: a duplicate.
        raise ValueError(f"STALE_SENDING_SECONDS={config['STALE_SENDING_SECONDS']} is below its floor "
                         f"{floor:g} (6 x SMTP_TIMEOUT: a send may take that long before it ends or gives "
                         "up); raise it, or lower SMTP_TIMEOUT")
    if float(config["HEARTBEAT_SECONDS"]) <= 0:
        raise ValueError("HEARTBEAT_SECONDS must be positive")
    if float(config["REQUEST_POLL_SECONDS"]) <= 0:
        raise ValueError("REQUEST_POLL_SECONDS must be positive")
    if float(config["LEASE_SECONDS"]) <= float(config["TICK_SECONDS"]):
        raise ValueError("LEASE_SECONDS must be longer than TICK_SECONDS, or the lease "
                         "expires between two ticks of its own holder")
    if config["SMTP_SECURITY"] not in ("none", "starttls", "ssl"):
        raise ValueError("SMTP_SECURITY must be none, starttls or ssl")
    if (config["MAIL_BACKEND"] == "smtp" and config["SMTP_USERNAME"] and config["SMTP_SECURITY"] == "none"
            and not config["SMTP_ALLOW_PLAINTEXT_AUTH"]):
        # Anyone on the path would read the password: TLS first, or the operator's explicit choice.
        raise ValueError("SMTP_USERNAME is set but SMTP_SECURITY is none: the password would cross the "
                         "network in clear; set SMTP_SECURITY to starttls or ssl, or "
                         "SMTP_ALLOW_PLAINTEXT_AUTH=true if the link is safe (e.g. a relay on this host)")


def _instance_secret(path: Path) -> str:
    """A random secret created once and kept in instance/ (never a constant in code)."""
    if not path.exists():
        # Several workers may start at once: write aside, then link, which fails if
        # another process got there first; everyone then reads the one winner.
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


login_manager.user_loader(auth.load_user)
