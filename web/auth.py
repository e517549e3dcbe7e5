"""Login and logout (Flask-Login); every other admin page requires a login."""

from __future__ import annotations

import time
from datetime import timedelta

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_required, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from werkzeug.security import generate_password_hash
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired

from core.accounts import end_sessions
from core.leads import normalize_email
from models import User, db
from storage.database import write_session
from storage.timeutil import utcnow
from web.common import local_path, start_session

bp = Blueprint("auth", __name__)
LOCK_AFTER = 5  # failed logins in a row before each further try must wait


class LoginForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[DataRequired()])
    password = PasswordField(_l("Password"), validators=[DataRequired()])


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form; on POST, log in or say that the pair did not match."""
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.scalar(select(User).where(User.email == normalize_email(form.email.data)))
        if user is None:
            # The same scrypt work as a real check: timing must not tell who has an account.
            generate_password_hash(form.password.data)
        elif _try_password(user, form.password.data):
            start_session(user)
            return redirect(local_path(request.args.get("next")))
        # One message for a wrong address, a wrong password and a locked account alike.
        flash(_("Wrong email or password."), "error")
    return render_template("login.html", form=form)


def _try_password(candidate: User, password: str) -> bool:
    """Check a password, slowing guessers down: after 5 failures the account waits."""
    # scrypt takes 0.1-0.4 s: run it before taking the write lock, which every send
    # needs, and for a locked account too (same timing); the lock is decided below.
    matches = candidate.check_password(password)
    now = utcnow()
    with write_session(db.engine) as session:
        user = session.get(User, candidate.id)
        if user.disabled or (user.locked_until is not None and user.locked_until > now):
            return False
        if matches:
            user.failed_logins, user.locked_until = 0, None
            return True
        user.failed_logins += 1
        if user.failed_logins >= LOCK_AFTER:
            seconds = min(30 * 2 ** (user.failed_logins - LOCK_AFTER), 900)
            user.locked_until = now + timedelta(seconds=seconds)
        return False


def load_user(user_key: str) -> User | None:
    """The user of a session cookie, if its session is still valid (Flask-Login's user loader).

    Valid means: the user exists and is not disabled, the cookie's session generation is
    the user's current one (logout, a password change or "log out everywhere" bump it),
    and the login is younger than SESSION_ABSOLUTE_LIFETIME however active it stayed.
    """
    user_id, _, generation = user_key.partition(":")
    if not (user_id.isdigit() and generation.isdigit()):
        return None  # a cookie from before session generations: log in again
    user = db.session.get(User, int(user_id))
    if user is None or user.disabled or user.session_generation != int(generation):
        return None
    login_at = session.get("login_at")
    if not isinstance(login_at, int) or time.time() - login_at > _absolute_lifetime():
        return None
    return user


def _absolute_lifetime() -> float:
    value = current_app.config["SESSION_ABSOLUTE_LIFETIME"]
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    """Log out everywhere (POST, so a link on another site cannot do it): a copy of the
    cookie, kept by anyone, stops working too."""
    end_sessions(db.engine, current_user.id)
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))
