"""What the pages share: the bare action form, the page size, upload paths, safe redirects, texts."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flask import abort, current_app, url_for
from flask_babel import gettext
from flask_wtf import FlaskForm

from storage.texts import Text

PAGE_SIZE = 50  # rows per page of every paged list (leads, suppressions, send log, timeline)


class ActionForm(FlaskForm):
    """A bare form: its CSRF token is all a POST-only button needs."""


def page_count(total: int) -> int:
    """How many pages `total` rows fill; one (empty) page when there are none."""
    return max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)


def upload_path(token: str, suffix: str) -> Path:
    """Where an upload kept under `token` lives; 404 for a token that could leave the folder."""
    if not token.isalnum():
        abort(404)
    folder = Path(current_app.instance_path) / "uploads"
    folder.mkdir(exist_ok=True)
    return folder / f"{token}{suffix}"


def local_path(target: str | None) -> str:
    """`target` if it is a path on this site, else the dashboard.

    `next=https://evil.example` (or `//evil.example`, or `/\\evil.example`, which browsers
    read as another host) must not turn our redirects into an open redirector.
    """
    if (not target or not target.startswith("/") or target.startswith(("//", "/\\"))
            or urlsplit(target).netloc or urlsplit(target).scheme):
        return url_for("views.dashboard")
    return target


def translate(text: str) -> str:
    """A text made below the web layer (storage.texts.Text) in the UI language; others as they are."""
    if isinstance(text, Text):
        return gettext(text.msgid, **text.values)
    return text
