"""The campaign editor: settings, variants with a live preview, test sends, validate-and-start."""

from __future__ import annotations

import re
from collections import Counter
from zoneinfo import available_timezones

from email_validator import EmailNotValidError
from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import func, select, update
from wtforms import (
    EmailField,
    IntegerField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
    ValidationError,
)
from wtforms.validators import DataRequired, Email, InputRequired, Length, NumberRange, Optional, Regexp
from wtforms.widgets import CheckboxInput, ListWidget

from core import campaigns, leads, mailboxes, sequences
from core.leads import check_email, normalize_email
from delivery import messages, templating
from delivery.transport import make_transport
from models import Campaign, CampaignLead, Lead, Mailbox, Variant, db
from storage.database import write_session
from web.common import ActionForm, id_arg, reply_text, template_error

bp = Blueprint("editor", __name__)
# WTForms' own Polish says "z zakresu 0 i 604800"; ours reads "od 0 do 604800".
RANGE = _l("Enter a whole number from %(min)s to %(max)s.")
AT_LEAST = _l("Enter a whole number of at least %(min)s.")
TIMEZONES = sorted(available_timezones())
WEEKDAYS = [SelectChoice(day, label) for day, label in enumerate(
    [_l("Mon"), _l("Tue"), _l("Wed"), _l("Thu"), _l("Fri"), _l("Sat"), _l("Sun")])]


class CampaignForm(FlaskForm):
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=200)])
    # Required only without a mailbox: with mailboxes, each lead's messages come from its mailbox.
    from_address = EmailField(_l("Sender address"), validators=[Length(max=320)])
    from_name = StringField(_l("Sender name"), validators=[Optional(), Length(max=200)])
    interval_seconds = IntegerField(_l("Seconds between sends"), default=300,
                                    validators=[InputRequired(),
                                                NumberRange(min=0, max=7 * 86400, message=RANGE)])
    batch_size = IntegerField(_l("Batch size"), default=1,
                              validators=[InputRequired(), NumberRange(min=1, max=1000, message=RANGE)])
    daily_cap = IntegerField(_l("Daily cap (empty: none)"),
                             validators=[Optional(), NumberRange(min=1, message=AT_LEAST)])
    window_weekdays = SelectMultipleField(_l("Send on"), coerce=int, choices=WEEKDAYS,
                                          default=[0, 1, 2, 3, 4], option_widget=CheckboxInput(),
                                          widget=ListWidget(prefix_label=False))
    window_start_hour = IntegerField(_l("From hour"), default=9,
                                     validators=[InputRequired(), NumberRange(min=0, max=23, message=RANGE)])
    window_end_hour = IntegerField(_l("To hour (exclusive)"), default=17,
                                   validators=[InputRequired(), NumberRange(min=1, max=24, message=RANGE)])
    timezone = SelectField(_l("Time zone"), choices=[SelectChoice(tz) for tz in TIMEZONES],
                           default="Europe/Warsaw")
    mailboxes = SelectMultipleField(_l("Send through the mailboxes"), coerce=int, choices=[],
                                    option_widget=CheckboxInput(), widget=ListWidget(prefix_label=False))
    require_mailbox = False  # a new campaign, while mailboxes exist, must choose one

    def validate_from_address(self, field) -> None:
        if not (field.data or "").strip():
            if self.mailboxes.data:
                return  # filled in from the first mailbox
            raise ValidationError(field.gettext("This field is required."))
        Email()(self, field)

    def validate_mailboxes(self, field) -> None:
        if self.require_mailbox and not field.data:
            raise ValidationError(_("Choose at least one mailbox."))

    def validate_window_weekdays(self, field) -> None:
        if not field.data:
            raise ValidationError(_("Choose at least one day."))

    def validate_window_end_hour(self, field) -> None:
        start = self.window_start_hour.data
        if start is not None and field.data is not None and field.data <= start:
            raise ValidationError(_("The window must end after it starts."))


class TestForm(FlaskForm):
    # Empty (or a form from before this field): the logged-in user, as the button always did.
    to = StringField(_l("Send the test to"), validators=[Optional(), Length(max=1000)])

    def validate_to(self, field) -> None:
        field.addresses = typed_addresses(field.data)


MAX_TEST_ADDRESSES = 10
SHOWN_ELSEWHERE = 20  # leads active in another campaign listed before enrolling


def typed_addresses(text: str) -> list[str]:
    """The addresses typed for a test send (comma, semicolon or space separated), checked."""
    addresses = list(dict.fromkeys(filter(None, re.split(r"[\s,;]+", text or ""))))
    if not addresses:
        raise ValidationError(_("Type at least one address."))
    if len(addresses) > MAX_TEST_ADDRESSES:
        raise ValidationError(_("At most %(n)d addresses for a test.", n=MAX_TEST_ADDRESSES))
    for address in addresses:
        try:
            check_email(address)
        except EmailNotValidError:
            raise ValidationError(_("%(address)s is not a valid address.", address=address)) from None
    return [normalize_email(address) for address in addresses]


class VariantForm(FlaskForm):
    letter = StringField(_l("Letter"), validators=[DataRequired(), Regexp(r"\A[A-Za-z]\Z")])
    subject = StringField(_l("Subject"), validators=[DataRequired(), Length(max=500)])
    body = TextAreaField(_l("Body"), validators=[DataRequired()])
    weight = IntegerField(_l("Weight"), default=1,
                          validators=[InputRequired(), NumberRange(min=0, max=1000, message=RANGE)])

    def validate_subject(self, field) -> None:
        _check_template(field.data)

    def validate_body(self, field) -> None:
        _check_template(field.data)


def _check_template(source: str) -> None:
    # Syntax and sandbox errors belong to the field; unknown merge fields depend on the
    # leads and are checked against every enrolled lead when the campaign starts.
    for problem in templating.check("-", "field", source, _sample_context()):
        if problem.too_costly:
            raise ValidationError(_("The template is too large or renders too slowly (%(detail)s).",
                                    detail=problem.message.removeprefix(templating.TOO_COSTLY)))
        if not problem.undefined:
            raise ValidationError(template_error(problem.message))


def _sample_context(lead: Lead | None = None) -> dict:
    lead = lead or Lead(email="anna.nowak@example.com", first_name="Anna", last_name="Nowak",
                        company="Firma", fields={}, tags="")
    return templating.lead_context(lead, templating.SAMPLE_UNSUBSCRIBE_URL)


def _campaign_values(form: CampaignForm) -> dict:
    values = {name: getattr(form, name).data for name in (
        "name", "from_address", "from_name", "interval_seconds", "batch_size", "daily_cap",
        "window_start_hour", "window_end_hour", "timezone")}
    values["from_address"] = (values["from_address"] or "").strip().lower()
    if not values["from_address"]:  # a campaign keeps a sender address: the first mailbox's
        first = db.session.get(Mailbox, form.mailboxes.data[0])
        values["from_address"], values["from_name"] = first.address, values["from_name"] or first.name
    values["window_weekdays"] = ",".join(str(d) for d in sorted(form.window_weekdays.data))
    return values


def _default_sender() -> str:
    """MAIL_FROM if the form would accept it, else nothing (never a value the form then rejects)."""
    # The default MAIL_FROM, sendonce@localhost, is no address a recipient can answer:
    # pre-filling it only to refuse it on save was the first thing a new user met.
    form = CampaignForm(formdata=None, from_address=current_app.config["MAIL_FROM"])
    valid = form.from_address.validate(form, [CampaignForm.validate_from_address])
    return form.from_address.data if valid else ""


def _with_mailboxes(form: CampaignForm) -> CampaignForm:
    """The form with every mailbox as a choice (a paused one says so)."""
    choices = []
    for m in mailboxes.listing(db.session.connection()):
        text = f"{m.name} <{m.address}>" if m.name else m.address
        paused = m.status != "active"
        choices.append(SelectChoice(m.id, _("%(mailbox)s (paused)", mailbox=text) if paused else text))
    form.mailboxes.choices = choices
    return form


@bp.route("/campaigns/new", methods=["GET", "POST"])
@login_required
def create():
    """A new draft campaign; its variants and leads come next."""
    form = _with_mailboxes(CampaignForm(from_address=_default_sender()))
    form.require_mailbox = bool(form.mailboxes.choices)
    if form.validate_on_submit():
        campaign_id = campaigns.create(db.engine, **_campaign_values(form))
        mailboxes.link(db.engine, campaign_id, form.mailboxes.data or [])
        flash(_("Campaign created. Add a variant next."), "ok")
        return redirect(url_for("editor.variant", campaign_id=campaign_id, letter="new"))
    return render_template("campaign_form.html", form=form, campaign=None)


@bp.route("/campaigns/<int:campaign_id>/edit", methods=["GET", "POST"])
@login_required
def edit(campaign_id: int):
    """Change a campaign's settings (they apply from the next claim on)."""
    campaign = db.session.get(Campaign, campaign_id) or abort(404)
    form = _with_mailboxes(CampaignForm(obj=campaign))
    if request.method != "POST":
        form.window_weekdays.data = [int(d) for d in campaign.window_weekdays.split(",") if d]
        form.mailboxes.data = mailboxes.of_campaign(db.session.connection(), campaign_id)
    if form.validate_on_submit():
        with write_session(db.engine) as session:
            session.execute(update(Campaign).where(Campaign.id == campaign_id)
                            .values(**_campaign_values(form)))
        if form.mailboxes.choices:  # with no mailbox at all there is nothing to link or unlink
            mailboxes.link(db.engine, campaign_id, form.mailboxes.data or [])
        flash(_("Saved."), "ok")
        return redirect(url_for("views.campaign", campaign_id=campaign_id))
    return render_template("campaign_form.html", form=form, campaign=campaign)


@bp.route("/campaigns/<int:campaign_id>/variants/<letter>", methods=["GET", "POST"])
@login_required
def variant(campaign_id: int, letter: str):
    """Add (letter "new") or edit a variant, with a preview for a chosen lead."""
    campaign = db.session.get(Campaign, campaign_id) or abort(404)
    existing = _variant(campaign_id, letter) if letter != "new" else None
    if letter != "new" and existing is None:
        abort(404)
    form = VariantForm(obj=existing, letter=_next_letter(campaign) if existing is None else letter)
    if form.validate_on_submit():
        if _save_variant(campaign, existing, form):
            flash(_("Variant %(letter)s saved.", letter=form.letter.data.upper()), "ok")
            return redirect(url_for("views.campaign", campaign_id=campaign_id))
    lead = _preview_lead(campaign_id)
    return render_template("variant_form.html", form=form, campaign=campaign, variant=existing,
                           preview=_preview(form.subject.data or "", form.body.data or "", lead),
                           preview_lead=lead, leads=_some_leads(campaign_id), action=ActionForm(),
                           fields=leads.field_counts(db.engine, campaign_id), test_form=TestForm(),
                           enrolled=_enrolled(campaign_id))


def _enrolled(campaign_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(CampaignLead)
                             .where(CampaignLead.campaign_id == campaign_id))


def _variant(campaign_id: int, letter: str) -> Variant | None:
    return db.session.scalar(select(Variant).where(Variant.campaign_id == campaign_id, Variant.step == 1,
                                                   Variant.letter == letter.upper()))


def _next_letter(campaign: Campaign) -> str:
    used = {v.letter for v in campaign.variants}
    return next((c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in used), "")


def _save_variant(campaign: Campaign, existing: Variant | None, form: VariantForm) -> bool:
    letter = form.letter.data.upper()
    if existing is None and _variant(campaign.id, letter) is not None:
        form.letter.errors.append(_("Variant %(letter)s exists already.", letter=letter))
        return False
    if existing is not None and letter != existing.letter:
        form.letter.errors.append(_("The letter of a variant cannot change: leads are bound to it."))
        return False
    draft = Variant(campaign_id=campaign.id, letter=letter, subject=form.subject.data, body=form.body.data)
    problems = campaigns.validate(db.engine, campaign.id, draft)
    for part, text in _grouped(problems, campaign.id):  # e.g. {{ city }} some enrolled lead lacks
        getattr(form, part if part in ("subject", "body") else "body").errors.append(text)
    if problems:
        return False
    with write_session(db.engine) as session:
        target = session.get(Variant, existing.id) if existing else Variant(campaign_id=campaign.id,
                                                                            letter=letter)
        target.subject, target.body, target.weight = form.subject.data, form.body.data, form.weight.data
        session.add(target)
    return True


def _some_leads(campaign_id: int) -> list[Lead]:
    return db.session.scalars(select(Lead).join(CampaignLead, CampaignLead.lead_id == Lead.id)
                              .where(CampaignLead.campaign_id == campaign_id)
                              .order_by(CampaignLead.id).limit(50)).all()


def _preview_lead(campaign_id: int) -> Lead | None:
    lead_id = id_arg("lead", request.values)
    if lead_id:
        return db.session.get(Lead, lead_id)
    some = _some_leads(campaign_id)
    return some[0] if some else None


def _preview(subject: str, body: str, lead: Lead | None) -> dict:
    """The rendered subject and body for one lead, or the error of each part."""
    context = _sample_context(lead)
    result = {}
    for part, source in (("subject", subject), ("body", body)):
        try:
            result[part] = templating.render(source, context)
        except Exception as exc:  # noqa: BLE001 - any template error is shown, not raised
            result[part + "_error"] = template_error(str(exc))
    result["subject"] = messages.one_line(result.get("subject", ""))
    return result


@bp.route("/campaigns/<int:campaign_id>/preview", methods=["POST"])
@login_required
def preview(campaign_id: int):
    """JSON preview of unsaved subject/body text, for the editor's live preview."""
    db.session.get(Campaign, campaign_id) or abort(404)
    lead = _preview_lead(campaign_id)
    return jsonify(_preview(request.form.get("subject", ""), request.form.get("body", ""), lead))


@bp.route("/campaigns/<int:campaign_id>/variants/<letter>/delete", methods=["POST"])
@login_required
def delete_variant(campaign_id: int, letter: str):
    """Delete a variant no lead is bound to."""
    if not ActionForm().validate_on_submit():
        abort(400)
    target = _variant(campaign_id, letter) or abort(404)
    bound = db.session.scalar(select(func.count()).select_from(CampaignLead).where(
        CampaignLead.campaign_id == campaign_id, CampaignLead.variant_letter == target.letter))
    if bound:
        flash(_("Variant %(letter)s has %(n)d leads bound to it and cannot be deleted; set its weight "
                "to 0 to stop assigning it.", letter=target.letter, n=bound), "error")
    else:
        with write_session(db.engine) as session:
            session.delete(session.get(Variant, target.id))
        flash(_("Variant %(letter)s deleted.", letter=target.letter), "ok")
    return redirect(url_for("views.campaign", campaign_id=campaign_id))


@bp.route("/campaigns/<int:campaign_id>/variants/<letter>/test", methods=["POST"])
@login_required
def send_test(campaign_id: int, letter: str):
    """Send this variant, rendered for the preview lead, to the addresses typed (by default: me)."""
    form = TestForm()
    campaign = db.session.get(Campaign, campaign_id) or abort(404)
    target = _variant(campaign_id, letter) or abort(404)
    if not form.validate_on_submit():
        if not form.csrf_token.data or form.csrf_token.errors:
            abort(400)
        for error in form.to.errors:
            flash(error, "error")
        return redirect(url_for("editor.variant", campaign_id=campaign_id, letter=letter))
    rendered = _preview(target.subject, target.body, _preview_lead(campaign_id))
    if "subject_error" in rendered or "body_error" in rendered:
        flash(_("The template has an error: %(error)s",
                error=rendered.get("subject_error") or rendered.get("body_error")), "error")
        return redirect(url_for("editor.variant", campaign_id=campaign_id, letter=letter))
    transport = make_transport(current_app.config)
    try:
        for address in getattr(form.to, "addresses", None) or [current_user.email]:
            msg = messages.build_message(
                from_address=campaign.from_address, from_name=campaign.from_name,
                to_address=address, to_name="", subject="[TEST] " + rendered["subject"],
                body=rendered["body"], msg_id=messages.test_message_id(campaign.from_address),
                unsubscribe_url=templating.SAMPLE_UNSUBSCRIBE_URL)
            result = transport.send(msg, campaign.from_address, address)
            if result.status == "sent":  # a failed one must not read "sent" (#13)
                flash(_("Test sent to %(email)s: %(reply)s", email=address,
                        reply=reply_text(result.reply)), "ok")
            else:
                flash(_("The test to %(email)s was not sent: %(reply)s", email=address,
                        reply=reply_text(result.reply)), "error")
    finally:
        transport.close()
    return redirect(url_for("editor.variant", campaign_id=campaign_id, letter=letter))


@bp.route("/campaigns/<int:campaign_id>/enroll", methods=["POST"])
@login_required
def enroll(campaign_id: int):
    """Enroll existing leads (all, or those with a tag), after a confirmation with the count."""
    if not ActionForm().validate_on_submit():
        abort(400)
    campaign = db.session.get(Campaign, campaign_id) or abort(404)
    tag = (request.form.get("tag") or "").strip()
    skip_elsewhere = request.form.get("skip_elsewhere") == "1"
    elsewhere, listed = sequences.active_elsewhere(db.engine, campaign_id, tag or None,
                                                   limit=None if skip_elsewhere else SHOWN_ELSEWHERE)
    if request.form.get("confirm") != "1":
        # 23,054 leads enrolled by a click on an empty tag field: say how many first.
        matched, new = campaigns.count_enrollable(db.engine, campaign_id, tag or None)
        return render_template("enroll_confirm.html", campaign=campaign, tag=tag, matched=matched,
                               new=new, action=ActionForm(), elsewhere=elsewhere, listed=listed)
    try:
        skip = {e.lead_id for e in listed} if skip_elsewhere else set()
        added, _matched = campaigns.enroll_leads(db.engine, campaign_id, tag or None, skip=skip)
        flash(_("%(n)d leads enrolled.", n=added), "ok")
    except campaigns.CampaignError as exc:
        flash(str(exc), "error")
    return redirect(url_for("views.campaign", campaign_id=campaign_id))


@bp.route("/campaigns/<int:campaign_id>/duplicate", methods=["POST"])
@login_required
def duplicate(campaign_id: int):
    """A new draft with this campaign's settings and variants, without its leads."""
    if not ActionForm().validate_on_submit():
        abort(400)
    source = db.session.get(Campaign, campaign_id) or abort(404)
    copy_id = campaigns.duplicate(db.engine, campaign_id, _("%(name)s (copy)", name=source.name)[:200])
    # The copy sends through the same mailboxes (without them it would fall back to the
    # configuration's SMTP, a different sender).
    mailboxes.link(db.engine, copy_id, mailboxes.of_campaign(db.session.connection(), campaign_id))
    flash(_("Copy created as a draft: add leads to it."), "ok")
    return redirect(url_for("views.campaign", campaign_id=copy_id))


@bp.route("/campaigns/<int:campaign_id>/delete", methods=["POST"])
@login_required
def delete(campaign_id: int):
    """Delete a draft that never sent anything; any other campaign can be archived instead."""
    if not ActionForm().validate_on_submit():
        abort(400)
    db.session.get(Campaign, campaign_id) or abort(404)
    try:
        campaigns.delete_draft(db.engine, campaign_id)
    except campaigns.CampaignError:
        flash(_("Only a draft that has sent nothing can be deleted; archive this campaign instead."), "error")
        return redirect(url_for("views.campaign", campaign_id=campaign_id))
    flash(_("Draft deleted."), "ok")
    return redirect(url_for("views.dashboard"))


@bp.route("/campaigns/<int:campaign_id>/archive", methods=["POST"])
@login_required
def archive(campaign_id: int):
    """Archive a campaign that is not sending: it leaves the dashboard, its history stays."""
    return _archiving(campaign_id, campaigns.archive, _("Campaign archived."))


@bp.route("/campaigns/<int:campaign_id>/unarchive", methods=["POST"])
@login_required
def unarchive(campaign_id: int):
    """Bring an archived campaign back, paused."""
    return _archiving(campaign_id, campaigns.unarchive, _("Campaign restored (paused)."))


def _archiving(campaign_id: int, change, done: str):
    if not ActionForm().validate_on_submit():
        abort(400)
    db.session.get(Campaign, campaign_id) or abort(404)
    try:
        change(db.engine, campaign_id)
        flash(done, "ok")
    except campaigns.CampaignError:
        flash(_("Pause the campaign before archiving it."), "error")
    return redirect(url_for("views.campaign", campaign_id=campaign_id))


def _grouped(problems: list[templating.TemplateProblem], campaign_id: int) -> list[tuple[str, str]]:
    """(part, text): one line per distinct problem with how many leads have it, not one per lead."""
    if problems and problems[0].part == "variants":  # validate's "the campaign has no variant"
        return [("variants", _("The campaign has no variant yet: add one."))]
    counts = Counter((p.variant, p.part, p.message) for p in problems)
    parts = {"subject": _("subject"), "body": _("body")}
    lines = [(part, _("Variant %(letter)s, %(part)s: %(problem)s — %(leads)s", letter=letter,
                      part=parts.get(part, part), problem=template_error(message),
                      leads=ngettext("%(num)d lead", "%(num)d leads", n)))
             for (letter, part, message), n in counts.items()]
    if any(p.undefined for p in problems):
        fields = leads.field_counts(db.engine, campaign_id)
        lines.append(("body", _("Fields the enrolled leads have: %(fields)s",
                                fields=", ".join(f"{{{{ {name} }}}} ({n})" for name, n in fields.items()))))
    if len(problems) >= campaigns.MAX_PROBLEMS:
        lines.append(("body", _("Checking stopped after %(n)d problems; more leads may have them.",
                                n=len(problems))))
    return lines


def _start_refusal(exc: campaigns.CampaignError) -> str:
    """Why a start was refused, in the user's language where the reason is known."""
    if exc.code == "no_leads":
        return _("Not started: no leads are enrolled in this campaign. Enroll leads first.")
    if exc.code == "nothing_to_send":
        return _("Not started: every enrolled lead is already handled (sent, failed, skipped or unknown); "
                 "there is nothing to send.")
    return str(exc)


@bp.route("/campaigns/<int:campaign_id>/start", methods=["POST"])
@login_required
def start(campaign_id: int):
    """Validate every variant against every enrolled lead, then start."""
    if not ActionForm().validate_on_submit():
        abort(400)
    problems = campaigns.validate(db.engine, campaign_id)
    if problems:
        flash(_("Not started: fix these first."), "error")
        for _part, text in _grouped(problems, campaign_id):
            flash(text, "error")
    else:
        try:
            campaigns.start(db.engine, campaign_id)
            flash(_("Campaign started."), "ok")
        except campaigns.CampaignError as exc:
            flash(_start_refusal(exc), "error")
    return redirect(url_for("views.campaign", campaign_id=campaign_id))
