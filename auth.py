"""Login and logout (Flask-Login); every other admin page requires a login."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import login_required, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired

from leads import normalize_email
from models import User, db

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired()])
    password = PasswordField("Hasło", validators=[DataRequired()])


def _safe_next(target: str | None) -> str:
    # Only local paths: `next=https://evil.example` must not turn login into a redirector.
    if not target or urlsplit(target).netloc or urlsplit(target).scheme or target.startswith("//"):
        return url_for("views.dashboard")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form; on POST, log in or say that the pair did not match."""
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.scalar(select(User).where(User.email == normalize_email(form.email.data)))
        if user is not None and user.check_password(form.password.data):
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        flash("Nieprawidłowy e-mail lub hasło.", "error")
    return render_template("login.html", form=form)


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    """Log out (POST, so a link on another site cannot do it)."""
    logout_user()
    return redirect(url_for("auth.login"))
