"""Sender mailboxes (#16): the list with today's sends against the cap, add and edit, a test
send, "check connection", pause and resume, and moving a campaign's leads off a paused mailbox.

Secrets (SMTP/IMAP passwords, XOAUTH2 tokens) only ever travel from the form into the
vault: the form's password fields are "change" fields, empty on every page, and no page
renders a stored secret or its ciphertext.
"""

from __future__ import annotations

from zoneinfo import available_timezones

from email_validator import EmailNotValidError
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import (
    BooleanField,
    EmailField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
    ValidationError,
)
from wtforms.validators import DataRequired, Email, InputRequired, Length, NumberRange, Optional

from core import mailboxes
from core.leads import check_email, normalize_email
from delivery import messages, probe, templating
from delivery.transport import mailbox_transport
from models import Campaign, Mailbox, db
from storage.secrets import SecretError, Vault
from web.common import ActionForm, id_arg, reply_text

bp = Blueprint("mailboxes", __name__)
RANGE = _l("Enter a whole number from %(min)s to %(max)s.")
TIMEZONES = sorted(available_timezones())
SECURITY = [SelectChoice("starttls", _l("STARTTLS")), SelectChoice("ssl", _l("SSL/TLS")),
            SelectChoice("none", _l("none (unencrypted)"))]
MOST = 10_000_000  # core.mailboxes' own bound for caps and gaps


def _number(label, default=None, top=MOST):
    return IntegerField(label, default=default,
                        validators=[InputRequired(), NumberRange(min=0, max=top, message=RANGE)])


class MailboxForm(FlaskForm):
    # Nadawca
    name = StringField(_l("Sender name"), validators=[Optional(), Length(max=200)])
    address = EmailField(_l("Address"), validators=[DataRequired(), Email(), Length(max=320)])
    backend = SelectField(_l("Delivery"), default="smtp", choices=[
        SelectChoice("smtp", _l("through the SMTP server")),
        SelectChoice("outbox", _l("to the outbox folder (nothing is sent)"))])
    alert_sender = BooleanField(_l("Send the alerts to the admins through this mailbox"))
    # SMTP
    smtp_host = StringField(_l("SMTP server"), validators=[Length(max=255)])
    smtp_port = _number(_l("Port"), 587, 65535)
    smtp_security = SelectField(_l("Security"), default="starttls", choices=SECURITY)
    smtp_username = StringField(_l("User name"), validators=[Optional(), Length(max=320)])
    auth_kind = SelectField(_l("Log in with"), default="password", choices=[
        SelectChoice("password", _l("a password")), SelectChoice("xoauth2", _l("an OAuth2 token (XOAUTH2)"))])
    smtp_password = PasswordField(_l("Change the password or token"),
                                  validators=[Optional(), Length(max=10_000)])
    # IMAP (the reply reader)
    imap_host = StringField(_l("IMAP server (empty: none)"), validators=[Optional(), Length(max=255)])
    imap_port = _number(_l("Port"), 993, 65535)
    imap_security = SelectField(_l("Security"), default="ssl", choices=SECURITY)
    imap_username = StringField(_l("User name"), validators=[Optional(), Length(max=320)])
    imap_password = PasswordField(_l("Change the password"), validators=[Optional(), Length(max=10_000)])
    # Limity
    daily_cap = _number(_l("Daily cap"), 50)
    min_gap_seconds = _number(_l("Seconds between two sends"), 120)
    ramp_start = IntegerField(_l("Ramp-up: first day (empty: none)"),
                              validators=[Optional(), NumberRange(min=0, max=MOST, message=RANGE)])
    ramp_step = _number(_l("Ramp-up: more each day"), 0)
    timezone = SelectField(_l("Time zone of the daily cap"), choices=[SelectChoice(tz) for tz in TIMEZONES],
                           default="Europe/Warsaw")
    # Podpis
    signature = TextAreaField(_l("Signature ({{ signature }} in a template)"),
                              validators=[Optional(), Length(max=10_000)])

    def validate_smtp_host(self, field) -> None:
        if self.backend.data == "smtp" and not (field.data or "").strip():
            raise ValidationError(_("Enter the SMTP server, or choose the outbox folder."))


GROUPS = [  # the form's fieldsets, in order
    (_l("Sender"), ("name", "address", "backend", "alert_sender")),
    (_l("SMTP"), ("smtp_host", "smtp_port", "smtp_security", "smtp_username", "auth_kind", "smtp_password")),
    (_l("IMAP (for reading replies)"), ("imap_host", "imap_port", "imap_security", "imap_username",
                                        "imap_password")),
    (_l("Limits"), ("daily_cap", "min_gap_seconds", "ramp_start", "ramp_step", "timezone")),
    (_l("Signature"), ("signature",)),
]


class TestForm(FlaskForm):
    to = StringField(_l("Send the test to"), validators=[DataRequired(), Length(max=320)])

    def validate_to(self, field) -> None:
        try:
            check_email(field.data.strip())
        except EmailNotValidError:
            raise ValidationError(_("%(address)s is not a valid address.", address=field.data)) from None


# core.mailboxes speaks English to the CLI; the form shows its refusals in the UI language.
CORE_ERRORS = {
    "a mailbox with this address exists already": _l("A mailbox with this address exists already."),
    "must be a whole number": _l("Enter a whole number."),
    "unknown time zone": _l("Unknown time zone."),
}


def _vault() -> Vault:
    return Vault(current_app.config["MAILBOX_KEY_FILE"])


def _values(form: MailboxForm) -> dict:
    values = {name: getattr(form, name).data for name in mailboxes.FIELDS}
    values.update(smtp_password=form.smtp_password.data, imap_password=form.imap_password.data)
    return values


def _saved(form: MailboxForm, save) -> bool:
    """Run `save`; a refused value goes next to its field (or above the form) and nothing is saved."""
    try:
        save()
    except mailboxes.MailboxError as exc:
        text = str(CORE_ERRORS.get(exc.message, exc.message))
        if exc.field in form:
            form[exc.field].errors = [*form[exc.field].errors, text]
        else:
            flash(text, "error")
        return False
    return True


def _row(mailbox_id: int):
    return db.session.execute(select(Mailbox.__table__).where(Mailbox.id == mailbox_id)).first() or abort(404)


@bp.route("/mailboxes")
@login_required
def index():
    """Every mailbox: today's sends against today's cap, its gap, status, last error and campaigns."""
    conn = db.session.connection()
    rows = {row.id: row for row in mailboxes.listing(conn)}
    return render_template("mailboxes.html", usage=mailboxes.overview(conn), rows=rows,
                           using=mailboxes.campaigns_using(conn), action=ActionForm())


@bp.route("/mailboxes/new", methods=["GET", "POST"])
@login_required
def create():
    """Add a mailbox; "check connection" and "send a test" come on its page after saving."""
    form = MailboxForm()
    found = {}
    if form.validate_on_submit() and _saved(form, lambda: found.update(
            id=mailboxes.create(db.engine, _vault(), **_values(form)))):
        flash(_("Mailbox added. Check the connection and send a test below."), "ok")
        return redirect(url_for("mailboxes.edit", mailbox_id=found["id"]))
    return render_template("mailbox_form.html", form=form, groups=GROUPS, mailbox=None)


@bp.route("/mailboxes/<int:mailbox_id>/edit", methods=["GET", "POST"])
@login_required
def edit(mailbox_id: int):
    """Change a mailbox's settings; an empty password field keeps the stored secret."""
    row = _row(mailbox_id)
    form = MailboxForm(obj=row)
    if form.validate_on_submit() and _saved(
            form, lambda: mailboxes.update_mailbox(db.engine, _vault(), mailbox_id, **_values(form))):
        flash(_("Saved."), "ok")
        return redirect(url_for("mailboxes.edit", mailbox_id=mailbox_id))
    return _edit_page(row, form)


def _edit_page(row, form: MailboxForm | None = None, checks: list | None = None, test_form=None):
    return render_template("mailbox_form.html", form=form or MailboxForm(formdata=None, obj=row),
                           groups=GROUPS, mailbox=row, checks=checks, action=ActionForm(),
                           test_form=test_form or TestForm(formdata=None, to=current_user.email),
                           has_secret={"smtp_password": bool(row.smtp_secret),
                                       "imap_password": bool(row.imap_secret)})


def _open_secret(row) -> str | None:
    """The mailbox's SMTP secret, or None (with a message) when the key file cannot open it."""
    try:
        return _vault().open(row.smtp_secret)
    except SecretError:
        flash(_("The stored password cannot be decrypted with this server's key file (%(setting)s): "
                "type it again.", setting="MAILBOX_KEY_FILE"), "error")
        return None


@bp.route("/mailboxes/<int:mailbox_id>/check", methods=["POST"])
@login_required
def check(mailbox_id: int):
    """Log in to the mailbox's SMTP (and IMAP) server and show each server's answer."""
    if not ActionForm().validate_on_submit():
        abort(400)
    row = _row(mailbox_id)
    secret = _open_secret(row)
    checks = None if secret is None else probe.check(row, secret, float(current_app.config["SMTP_TIMEOUT"]))
    return _edit_page(row, checks=checks)


@bp.route("/mailboxes/<int:mailbox_id>/test", methods=["POST"])
@login_required
def send_test(mailbox_id: int):
    """Send one test message through the mailbox to the typed address (not campaign mail: no log row)."""
    form = TestForm()
    if not form.validate_on_submit():
        if not form.csrf_token.data or form.csrf_token.errors:
            abort(400)
        for error in form.to.errors:
            flash(error, "error")
        return redirect(url_for("mailboxes.edit", mailbox_id=mailbox_id))
    row = _row(mailbox_id)
    secret = _open_secret(row)
    if secret is not None:
        _send_test(row, secret, normalize_email(form.to.data))
    return redirect(url_for("mailboxes.edit", mailbox_id=mailbox_id))


def _send_test(row, secret: str, to: str) -> None:
    body = _("This is a test message from SendOnce, sent through the mailbox %(address)s.",
             address=row.address)
    msg = messages.build_message(
        from_address=row.address, from_name=row.name, to_address=to, to_name="",
        subject=_("[TEST] SendOnce: test of the mailbox %(address)s", address=row.address),
        body=body + (f"\n\n{row.signature}" if row.signature else "") + "\n",
        msg_id=messages.test_message_id(row.address), unsubscribe_url=templating.SAMPLE_UNSUBSCRIBE_URL)
    transport = mailbox_transport(row, secret, timeout=float(current_app.config["SMTP_TIMEOUT"]),
                                  outbox_dir=current_app.config["OUTBOX_DIR"])
    try:
        result = transport.send(msg, row.address, to)
    finally:
        transport.close()
    if result.status == "sent":
        flash(_("Test sent to %(email)s: %(reply)s", email=to, reply=reply_text(result.reply)), "ok")
    else:
        flash(_("The test to %(email)s was not sent: %(reply)s", email=to, reply=reply_text(result.reply)),
              "error")


@bp.route("/mailboxes/<int:mailbox_id>/<any(pause, resume):action>", methods=["POST"])
@login_required
def change_status(mailbox_id: int, action: str):
    """Pause a mailbox (its leads wait) or resume it."""
    if not ActionForm().validate_on_submit():
        abort(400)
    _row(mailbox_id)
    if action == "pause":
        mailboxes.pause(db.engine, mailbox_id, "paused by hand")
        flash(_("Mailbox paused: its leads wait until it is resumed or they are moved."), "ok")
    else:
        mailboxes.resume(db.engine, mailbox_id)
        flash(_("Mailbox resumed."), "ok")
    return redirect(url_for("mailboxes.index"))


@bp.route("/campaigns/<int:campaign_id>/move-leads", methods=["POST"])
@login_required
def move_leads(campaign_id: int):
    """Move the campaign's leads waiting for a paused mailbox to another, after a confirmation."""
    if not ActionForm().validate_on_submit():
        abort(400)
    campaign = db.session.get(Campaign, campaign_id) or abort(404)
    from_id, to_id = id_arg("from_id", request.form), id_arg("to_id", request.form)
    source, target = (db.session.get(Mailbox, i) if i else None for i in (from_id, to_id))
    if source is None or target is None or from_id == to_id:
        flash(_("Choose the mailbox to move the leads to."), "error")
        return redirect(url_for("views.campaign", campaign_id=campaign_id))
    if request.form.get("confirm") != "1":
        waiting = {s.mailbox_id: s.waiting for s in mailboxes.stranded(db.session.connection(), campaign_id)}
        return render_template("move_leads_confirm.html", campaign=campaign, source=source, target=target,
                               waiting=waiting.get(from_id, 0), action=ActionForm())
    moved = mailboxes.move_leads(db.engine, campaign_id, from_id, to_id)
    flash(ngettext("%(num)d lead moved to %(address)s; it continues from that mailbox.",
                   "%(num)d leads moved to %(address)s; they continue from that mailbox.", moved,
                   address=target.address), "ok")
    return redirect(url_for("views.campaign", campaign_id=campaign_id))
