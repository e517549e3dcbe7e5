"""Languages: Polish first, English complete; each user's choice persists.

UI strings are written in English in the code and templates and translated through
gettext (Flask-Babel); Polish is the default. The catalogs in translations/ are compiled
by `make run` and `make test`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flask_babel
from babel.support import NullTranslations
from flask import Blueprint, Flask, g, has_app_context, redirect, request, session
from flask_babel import Babel, get_locale
from flask_login import current_user
from flask_wtf import FlaskForm
from markupsafe import Markup, escape
from sqlalchemy import update
from wtforms import HiddenField, SelectChoice, SelectField

from models import User, db
from storage.database import write_session
from web.common import local_path

LANGUAGES = {"pl": "Polski", "en": "English"}
DEFAULT = "pl"


def _catalog() -> NullTranslations:
    """This request's catalog, found once per request rather than once per string.

    Flask-Babel's own lookup re-selects the locale through a dozen context proxies on every
    call (~60 us), and a page says 10-60 strings. The catalog is kept where Flask-Babel's
    refresh() and force_locale() clear it (babel_translations in its per-request state), so
    a locale switched mid-request still takes effect at once.
    """
    if not has_app_context():
        return flask_babel.get_translations()
    catalog = getattr(g.get("_flask_babel"), "babel_translations", None)
    if catalog is None:
        catalog = flask_babel.get_translations()  # selects the locale first, if not done yet
        g._flask_babel.babel_translations = catalog
    return catalog


class _Babel(Babel):
    """Flask-Babel, with the templates' _() and ngettext() reading _catalog()."""

    def init_app(self, app: Flask, *args, **kwargs) -> None:
        super().init_app(app, *args, **kwargs)
        app.jinja_env.install_gettext_callables(
            gettext=lambda s: _catalog().ugettext(s),
            ngettext=lambda s, p, n: _catalog().ungettext(s, p, n),
            pgettext=lambda c, s: _catalog().upgettext(c, s),
            npgettext=lambda c, s, p, n: _catalog().unpgettext(c, s, p, n),
            newstyle=True)


babel = _Babel()
bp = Blueprint("i18n", __name__)


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "extract this, translate later"
    return message


# Campaign, enrollment and send statuses as the pages show them.
STATUS_LABELS = {
    "draft": N_("draft"), "active": N_("active"), "paused": N_("paused"), "finished": N_("finished"),
    "pending": N_("pending"), "sending": N_("sending"), "sent": N_("sent"), "retry": N_("retry"),
    "failed": N_("failed"), "unknown": N_("unknown"), "skipped": N_("skipped"), "archived": N_("archived"),
}


@bp.app_template_global()
def status_badge(value: str) -> Markup:
    """A status as a coloured label, in the UI language: <span class="status sent">wysłano</span>.

    A Python function, not a Jinja macro: a send log page shows 50 of them, and a macro
    call (or Markup.format) costs several times more than the f-string with escape() here.
    """
    label = _catalog().ugettext(STATUS_LABELS[value]) if value in STATUS_LABELS else value
    return Markup(f'<span class="status {escape(value)}">{escape(label)}</span>')


class LanguageForm(FlaskForm):
    language = SelectField(choices=[SelectChoice(code, name) for code, name in LANGUAGES.items()])
    back = HiddenField()


def select_locale() -> str:
    """The logged-in user's language, else this browser's choice, else Polish."""
    if current_user.is_authenticated and current_user.language in LANGUAGES:
        return current_user.language
    if session.get("language") in LANGUAGES:
        return session["language"]
    if request.blueprint == "unsubscribe":  # a recipient, not our team: their browser's language
        return request.accept_languages.best_match(LANGUAGES) or DEFAULT
    return DEFAULT


@dataclass(frozen=True)
class LanguageSwitch:
    current: str
    back: str
    choices: dict[str, str] = field(default_factory=lambda: LANGUAGES)


def language_form() -> LanguageSwitch:
    """What base.html needs for the header's language switch, pre-set to the current language.

    base.html writes the form's HTML itself (the same names LanguageForm validates on POST):
    building a WTForms form on every page cost ~1 ms, most of it re-reading WTForms' own
    message catalog for each request.
    """
    return LanguageSwitch(str(get_locale()), request.full_path)


@bp.route("/language", methods=["POST"])
def set_language():
    """Remember the chosen language (in the session, and on the user when logged in)."""
    form = LanguageForm()
    if form.validate_on_submit():
        session["language"] = form.language.data
        if current_user.is_authenticated:
            with write_session(db.engine) as ws:
                ws.execute(update(User).where(User.id == current_user.id)
                           .values(language=form.language.data))
    return redirect(local_path(form.back.data))
