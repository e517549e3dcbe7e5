"""Languages: Polish first, English complete; each user's choice persists.

UI strings are written in English in the code and templates and translated through
gettext (Flask-Babel); Polish is the default. The catalogs in translations/ are compiled
by `make run` and `make test`.
"""

from __future__ import annotations

from flask import Blueprint, redirect, request, session
from flask_babel import Babel
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import update
from wtforms import HiddenField, SelectChoice, SelectField

from auth import local_path
from database import write_session
from models import User, db

LANGUAGES = {"pl": "Polski", "en": "English"}
DEFAULT = "pl"

babel = Babel()
bp = Blueprint("i18n", __name__)


class LanguageForm(FlaskForm):
    language = SelectField(choices=[SelectChoice(code, name) for code, name in LANGUAGES.items()])
    back = HiddenField()


def select_locale() -> str:
    """The logged-in user's language, else this browser's choice, else Polish."""
    if current_user.is_authenticated and current_user.language in LANGUAGES:
        return current_user.language
    return session.get("language") if session.get("language") in LANGUAGES else DEFAULT


def language_form() -> LanguageForm:
    """The header's language switch, pre-set to the current language."""
    return LanguageForm(language=select_locale(), back=request.full_path)


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
