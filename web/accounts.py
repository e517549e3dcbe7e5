"""Accounts: my password and e-mail, "log out everywhere", and the users page.

Every admin is fully trusted (no roles), so any admin may add, disable or remove another;
the last active one can be neither disabled nor removed, or nobody could log in.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, EqualTo, ValidationError

from core import accounts
from models import User, db
from web.common import ActionForm, start_session

bp = Blueprint("accounts", __name__)


def refusal(exc: accounts.AccountError) -> str:
    """An account rule's refusal in the UI language."""
    texts = {
        "too_short": _("The password must have at least %(n)d characters.", n=accounts.MIN_LENGTH),
        "too_long": _("The password may have at most %(n)d characters.", n=accounts.MAX_LENGTH),
        "common": _("This password is too easy to guess (a common password, a repeated character or "
                    "the address itself)."),
        "bad_email": _("This is not an e-mail address."),
        "exists": _("A user with this address exists already."),
        "last_admin": _("The last active user cannot be disabled or removed: nobody could log in."),
        "unknown": _("No such user."),
    }
    return texts.get(exc.code, str(exc))


def _current_password_matches(form, field) -> None:
    if not current_user.check_password(field.data or ""):
        raise ValidationError(_("The current password is not right."))


class PasswordForm(FlaskForm):
    current = PasswordField(_l("Current password"), validators=[DataRequired(), _current_password_matches])
    new = PasswordField(_l("New password"), validators=[DataRequired()])
    repeat = PasswordField(_l("New password again"),
                           validators=[DataRequired(), EqualTo("new", message=_l("The passwords differ."))])


class EmailForm(FlaskForm):
    current = PasswordField(_l("Current password"), validators=[DataRequired(), _current_password_matches])
    email = EmailField(_l("New e-mail address"), validators=[DataRequired()])


class UserForm(FlaskForm):
    email = EmailField(_l("E-mail address"), validators=[DataRequired()])
    password = PasswordField(_l("Password"), validators=[DataRequired()])


def _account_page(password: PasswordForm | None = None, email: EmailForm | None = None):
    return render_template("account.html", password_form=password or PasswordForm(prefix="pw"),
                           email_form=email or EmailForm(prefix="em"), action=ActionForm())


@bp.route("/account")
@login_required
def account():
    """My account: change my password or e-mail address; log out everywhere."""
    return _account_page()


@bp.route("/account/password", methods=["POST"])
@login_required
def change_password():
    """A new password for me: every other session of mine ends, this one goes on."""
    form = PasswordForm(prefix="pw")
    if form.validate_on_submit():
        try:
            accounts.set_password(db.engine, current_user.id, form.new.data)
        except accounts.AccountError as exc:
            form.new.errors.append(refusal(exc))
        else:
            start_session(_reread(current_user.id))
            flash(_("Password changed. Every other session of yours has ended."), "ok")
            return redirect(url_for("accounts.account"))
    return _account_page(password=form), 400


@bp.route("/account/email", methods=["POST"])
@login_required
def change_email():
    """A new login address for me."""
    form = EmailForm(prefix="em")
    if form.validate_on_submit():
        try:
            email = accounts.change_email(db.engine, current_user.id, form.email.data)
        except accounts.AccountError as exc:
            form.email.errors.append(refusal(exc))
        else:
            flash(_("You now log in as %(email)s.", email=email), "ok")
            return redirect(url_for("accounts.account"))
    return _account_page(email=form), 400


def _reread(user_id: int) -> User:
    # The request's read transaction still sees the snapshot from before our write (the
    # old session generation): end it, so the new session is made with the new one.
    db.session.rollback()
    return db.session.get(User, user_id, populate_existing=True)


@bp.route("/account/logout-everywhere", methods=["POST"])
@login_required
def logout_everywhere():
    """End every session of mine, on every device; this one is logged in again."""
    if not ActionForm().validate_on_submit():
        abort(400)
    accounts.end_sessions(db.engine, current_user.id)
    start_session(_reread(current_user.id))
    flash(_("Every other session of yours has ended."), "ok")
    return redirect(url_for("accounts.account"))


@bp.route("/users", methods=["GET", "POST"])
@login_required
def users():
    """Every login, with a form to add one."""
    form = UserForm()
    if form.validate_on_submit():
        try:
            accounts.create_user(db.engine, form.email.data, form.password.data)
        except accounts.AccountError as exc:
            (form.password if exc.code in ("too_short", "too_long", "common") else form.email).errors.append(
                refusal(exc))
        else:
            flash(_("User %(email)s added.", email=form.email.data.strip().lower()), "ok")
            return redirect(url_for("accounts.users"))
    rows = db.session.scalars(select(User).order_by(User.email)).all()
    return render_template("users.html", rows=rows, form=form, action=ActionForm()), (
        400 if form.errors else 200)


@bp.route("/users/<int:user_id>/disable", methods=["POST"])
@login_required
def disable_user(user_id: int):
    """Disable a user: no login, and their sessions end (never the last active user)."""
    return _change_user(user_id, "disable")


@bp.route("/users/<int:user_id>/enable", methods=["POST"])
@login_required
def enable_user(user_id: int):
    """Let a disabled user log in again."""
    return _change_user(user_id, "enable")


@bp.route("/users/<int:user_id>/remove", methods=["POST"])
@login_required
def remove_user(user_id: int):
    """Remove a user (never the last active one)."""
    return _change_user(user_id, "remove")


def _change_user(user_id: int, action: str):
    if not ActionForm().validate_on_submit():
        abort(400)
    user = db.session.get(User, user_id) or abort(404)
    try:
        if action == "remove":
            accounts.remove_user(db.engine, user_id)
        else:
            accounts.set_disabled(db.engine, user_id, action == "disable")
    except accounts.AccountError as exc:
        flash(refusal(exc), "error")
    else:
        done = {"disable": _("%(email)s is disabled; their sessions have ended.", email=user.email),
                "enable": _("%(email)s may log in again.", email=user.email),
                "remove": _("%(email)s is removed.", email=user.email)}
        flash(done[action], "ok")
    return redirect(url_for("accounts.users"))
