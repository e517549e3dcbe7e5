"""What the pages share: the bare action form, page sizes and bounded numbers from URLs,
which query keys a link may carry, upload paths (private files), safe redirects, logins, and
the texts stored in English shown in the UI language."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from flask import Response, abort, current_app, request, session, url_for
from flask_babel import gettext
from flask_babel import lazy_gettext as _l
from flask_login import login_user
from flask_wtf import FlaskForm
from werkzeug.routing import IntegerConverter

from delivery.tokens import read_token
from models import Campaign, User, db
from storage.texts import Text

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


LEAD_UPLOAD = re.compile(r"[0-9a-f]{24}(\.rejected)?\.csv")  # not the timeline's <token>.log.csv
UPLOAD_MAX_AGE = timedelta(days=1)


def remove_stale_lead_uploads(now: float | None = None) -> int:
    """Delete lead-import uploads (and rejected-rows files) older than a day; how many.

    An upload waits for its mapping and a rejected-rows file for its download; one a day old
    was abandoned, and it holds people's addresses that nobody needs kept.
    """
    folder = Path(current_app.instance_path) / "uploads"
    if not folder.is_dir():
        return 0
    limit = (time.time() if now is None else now) - UPLOAD_MAX_AGE.total_seconds()
    removed = 0
    for path in folder.iterdir():
        if LEAD_UPLOAD.fullmatch(path.name) and path.stat().st_mtime < limit:
            path.unlink(missing_ok=True)  # another worker may have removed it a moment ago
            removed += 1
    return removed


def unsubscribe_company() -> str:
    """Who sends the mail an unsubscribe link came in: COMPANY_NAME, else the campaign's sender."""
    if current_app.config.get("COMPANY_NAME"):
        return current_app.config["COMPANY_NAME"]
    found = read_token(current_app.config["SECRET_KEY"], (request.view_args or {}).get("token", ""))
    campaign = db.session.get(Campaign, found[1]) if found else None
    if campaign is None:
        return ""
    return campaign.from_name or campaign.from_address.rsplit("@", 1)[-1]


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


def translate(text: str) -> str:
    """A text made below the web layer (storage.texts.Text) in the UI language; others as they are."""
    if isinstance(text, Text):
        return gettext(text.msgid, **text.values)
    return text


# Texts the engine stores in English (send_log.smtp_reply, campaign.pause_reason, the
# suppression reason, the trigger) shown in the UI language; the server's own words follow
# in parentheses. A stored text none of these match is shown as it is.
_REPLY_PREFIXES = [
    ("connect: ", _l("could not connect to the mail server")),
    ("lost during DATA, before the final dot: ", _l("connection lost before the end of the message: "
                                                     "not delivered, tried again")),
    ("lost after DATA: ", _l("connection lost after the whole message was sent: the server may have "
                             "accepted it")),
    ("lost before DATA: ", _l("connection lost before the message was sent")),
    ("transport error: ", _l("unexpected error while sending")),
    ("message not built: ", _l("the message could not be built")),
    ("outbox ", _l("written to the outbox folder")),
]
_REPLY_WHOLE = {
    "not sent: the send deadline passed before the end of DATA": _l(
        "not sent: the time for this send ran out before the message was complete"),
    "not sent: a non-ASCII address needs SMTPUTF8, not supported": _l(
        "not sent: an address with non-Latin letters needs SMTPUTF8, which the server does not offer"),
    "released before sending: claim or lease lost": _l("not sent: another process took over sending"),
}
_PAUSED_AFTER = re.compile(r"(\d+) failed sends in a row; last: (.*)", re.DOTALL)
LABELS = {
    "trigger": {"scheduler": _l("scheduler"), "button": _l("button"), "cli": _l("command line")},
    "suppression": {"manual": _l("added by hand"), "unsubscribed": _l("unsubscribed"),
                    "bounce": _l("address rejected by the server"), "erased": _l("erased on request (GDPR)"),
                    "domain": _l("whole domain")},
    # Form fields as the session-expired page names them when it gives a draft back.
    "field": {"subject": _l("Subject"), "body": _l("Body"), "name": _l("Name"), "tag": _l("tag"),
              "from_name": _l("Sender name"), "detail": _l("Note"), "first_name": _l("First name"),
              "last_name": _l("Last name"), "company": _l("Company"), "tags": _l("Tags")},
    "target": {"email": _l("email address"), "first_name": _l("first name"), "last_name": _l("last name"),
               "company": _l("company"), "tags": _l("tags"), "skip": _l("— skip this column —")},
}


def reply_text(reply: str | None) -> str:
    """A stored send outcome in the UI language, the server's own reply in parentheses."""
    if not reply:
        return ""
    if reply in _REPLY_WHOLE:
        return str(_REPLY_WHOLE[reply])
    for prefix, text in _REPLY_PREFIXES:
        if reply.startswith(prefix):
            return f"{text} ({reply[len(prefix):]})"
    return reply  # the server's own reply, e.g. "250 OK queued"


def pause_text(reason: str | None) -> str:
    """Why a campaign is paused, in the UI language."""
    if reason == "paused by hand":
        return gettext("paused by hand")
    if match := _PAUSED_AFTER.fullmatch(reason or ""):
        return gettext("%(n)s failed sends in a row; the last one: %(reply)s", n=match[1],
                       reply=reply_text(match[2]))
    return gettext("the mail server refused the settings (%(reply)s)", reply=reply_text(reason))


def label(kind: str, value: str) -> str:
    """A stored code (a trigger, a suppression reason, an import target) as a person reads it."""
    if kind == "target" and value.startswith("field:"):
        return gettext("custom field “%(name)s”", name=value[len("field:"):])
    text = LABELS[kind].get(value)
    return value if text is None else str(text)


_UNDEFINED = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


def template_error(message: str) -> str:
    """A template's error in the UI language, with how to fix an unknown merge field."""
    if match := _UNDEFINED.search(message):
        name = match[1] or match[2]
        return gettext("unknown merge field {{ %(name)s }}: not every lead has it; write "
                       "{{ %(name)s|default(\"…\") }} to give the others a text", name=name)
    return gettext("the template cannot be used (%(detail)s)", detail=message)


BOM = "\ufeff".encode()


def csv_with_bom(response: Response) -> Response:
    """Every CSV download starts with the UTF-8 BOM: Polish Excel garbles ąęłó without it."""
    if response.mimetype != "text/csv" or response.direct_passthrough:
        return response
    if not response.is_streamed:
        data = response.get_data()
        if not data.startswith(BOM):
            response.set_data(BOM + data)
        return response
    response.response = _bom_first(response.iter_encoded())
    return response


def _bom_first(chunks: Iterator[bytes]) -> Iterator[bytes]:
    first = next(chunks, b"")
    yield first if first.startswith(BOM) else BOM + first
    yield from chunks
