"""What the pages share: the bare action form, page sizes and bounded numbers from URLs,
which query keys a link may carry, upload paths (private files) and safe redirects."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from flask import abort, current_app, request, session, url_for
from flask_login import login_user
from flask_wtf import FlaskForm
from werkzeug.routing import IntegerConverter

from models import User

PAGE_SIZE = 50  # rows per page of every paged list (leads, suppressions, send log, timeline)


class ActionForm(FlaskForm):
    """A bare form: its CSRF token is all a POST-only button needs."""


def page_count(total: int) -> int:
    """How many pages `total` rows fill; one (empty) page when there are none."""
    return max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)


def upload_path(token: str, suffix: str) -> Path:
    """Where an upload kept under `token` lives; 404 for a token that could leave the folder
    (or is too long to name a file)."""
    if not token.isalnum() or len(token) > MAX_TOKEN:
        abort(404)
    return uploads_folder(current_app.instance_path) / f"{token}{suffix}"


def local_path(target: str | None) -> str:
    """`target` if it is a path on this site, else the dashboard.

    `next=https://evil.example` (or `//evil.example`, or `/\\evil.example`, which browsers
    read as another host) must not turn our redirects into an open redirector.
    """
    if (not target or not target.startswith("/") or target.startswith(("//", "/\\"))
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)  # CR/LF cannot go into a header
            or urlsplit(target).netloc or urlsplit(target).scheme):
        return url_for("views.dashboard")
    return target

SQL_INT_MAX = 2**63 - 1  # SQLite's INTEGER (and PostgreSQL's BIGINT): larger ids overflow the driver
MAX_PAGE = 10**9  # far past any real page; (page - 1) * page size stays a valid OFFSET
MAX_TOKEN = 64  # upload tokens are 24 hex digits; a longer one names no file (and may be too long to open)


class BoundedIntConverter(IntegerConverter):
    """`<int:…>` in a route, but a number no table can hold is a 404, not an overflow (500)."""

    def __init__(self, map, *args, **kwargs) -> None:  # noqa: A002 - werkzeug's name
        kwargs.setdefault("max", SQL_INT_MAX)
        super().__init__(map, *args, **kwargs)


def page_arg() -> int:
    """The `page` query argument, clamped to 1..MAX_PAGE (absent or unreadable: 1)."""
    return min(max(request.args.get("page", 1, type=int), 1), MAX_PAGE)


def id_arg(name: str, source: Mapping[str, str] | None = None) -> int | None:
    """A row id from the query string (or `source`), or None if absent or no table could hold it."""
    value = (request.args if source is None else source).get(name, type=int)
    return value if value is not None and 0 < value <= SQL_INT_MAX else None


def link_args(names: Iterable[str]) -> dict[str, str]:
    """The non-empty query arguments a page's own links carry on, and no others.

    Passing every key through would let `?_method=…` or `?campaign_id=…` collide with
    url_for's own parameters (a 500); only the page's filter fields are kept.
    """
    return {name: request.args[name] for name in names if request.args.get(name)}


def megabytes(size: int | float) -> str:
    """A byte count as the pages show a limit: MB with at most one decimal."""
    return f"{size / (1024 * 1024):.1f}".removesuffix(".0")


def uploads_folder(instance_path: str) -> Path:
    """instance/uploads, readable by the service account only (uploads hold personal data)."""
    folder = Path(instance_path) / "uploads"
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)  # also one made by an older version (0755)
    return folder


def write_private(path: Path, data: bytes) -> None:
    """Write a file that only its owner can read (0600), whatever the process's umask."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)


def start_session(user: User) -> None:
    """Log `user` in on a fresh session: nothing from before the login (a CSRF token, a
    planted value) survives it, and the session's absolute lifetime starts now."""
    session.clear()
    login_user(user)
    session.permanent = True  # expires after PERMANENT_SESSION_LIFETIME without a request
    session["login_at"] = int(time.time())
    session["language"] = user.language
