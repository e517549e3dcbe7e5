"""A campaign's sequence (#17): its steps as a vertical list with delays, threads, variants and
per-step counts; add a step (reopening a finished campaign only when confirmed), a later
step's variants, archive or remove a step; the company-stop setting; each lead's timeline in
the campaign, with a "stop" button."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import login_required
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import BooleanField, IntegerField, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Regexp

from core import leads, replies, sequences
from core.campaigns import CampaignError
from models import Campaign, CampaignStatus, DelayUnit, Lead, db
from storage.database import immediate
from storage.timeutil import utcnow
from web.common import ActionForm

bp = Blueprint("sequences", __name__)


class StepForm(FlaskForm):
    delay_amount = IntegerField(_l("Wait"), default=3,
                                validators=[InputRequired(), NumberRange(min=0, max=8760)])
    delay_unit = SelectField(_l("Unit"), choices=[SelectChoice(DelayUnit.DAYS, _l("days")),
                                                  SelectChoice(DelayUnit.HOURS, _l("hours"))])
    business_days = BooleanField(_l("Count business days only (sending weekdays, without public holidays)"))
    new_thread = BooleanField(_l("Start a new thread (default: reply in the thread of step 1)"))
    letter = StringField(_l("Variant letter"), default="A",
                         validators=[DataRequired(), Regexp(r"^[A-Za-z]$")])
    subject = StringField(_l("Subject"), validators=[DataRequired(), Length(max=2000)])
    body = TextAreaField(_l("Text"), validators=[DataRequired()])
    reopen = BooleanField(_l("Yes, reopen the finished campaign for this step"))


class StepVariantForm(FlaskForm):
    step = IntegerField(_l("Step"), validators=[InputRequired(), NumberRange(min=2)])
    letter = StringField(_l("Variant letter"), validators=[DataRequired(), Regexp(r"^[A-Za-z]$")])
    subject = StringField(_l("Subject"), validators=[DataRequired(), Length(max=2000)])
    body = TextAreaField(_l("Text"), validators=[DataRequired()])
    weight = IntegerField(_l("Weight"), default=1, validators=[InputRequired(), NumberRange(min=0, max=1000)])


class SettingsForm(FlaskForm):
    country = StringField(_l("Holidays of country (ISO code)"),
                          validators=[DataRequired(), Regexp(r"^[A-Za-z]{2}$")])
    stop_company_on_reply = BooleanField(_l("A reply stops every lead of the same company domain "
                                            "(never for free-mail domains)"))


_STOP_REASONS = {"replied": _l("replied"), "company_replied": _l("someone of the same company replied"),
                 "person": _l("stopped by a person")}


@bp.app_template_global()
def stop_reason_text(reason: str) -> str:
    """A stored stop reason as a person reads it."""
    return str(_STOP_REASONS.get(reason, reason))


def _campaign(campaign_id: int) -> Campaign:
    return db.session.get(Campaign, campaign_id) or abort(404)


@bp.route("/campaigns/<int:campaign_id>/sequence")
@login_required
def index(campaign_id: int):
    """The steps, their variants and counts, with the forms that change them."""
    campaign = _campaign(campaign_id)
    with db.engine.connect() as conn:
        steps = sequences.steps(conn, campaign_id)
        rates = replies.rates(conn, campaign_id)
    settings = SettingsForm(country=campaign.country, stop_company_on_reply=campaign.stop_company_on_reply)
    finished = campaign.status == CampaignStatus.FINISHED
    reopen = sequences.reopen_count(db.engine, campaign_id) if finished else None
    query = (request.args.get("lead") or "").strip()
    found = _find_lead(campaign_id, query) if query else None
    if query and found is not None:
        return redirect(url_for("sequences.lead", campaign_id=campaign_id, lead_id=found))
    return render_template("sequence.html", campaign=campaign, steps=steps, step_form=StepForm(),
                           variant_form=StepVariantForm(), settings=settings, action=ActionForm(),
                           reopen=reopen, query=query, not_found=bool(query), rates=rates)


def _find_lead(campaign_id: int, email: str) -> int | None:
    return db.session.scalar(select(Lead.id).where(Lead.email == leads.normalize_email(email)))


def _back(campaign_id: int):
    return redirect(url_for("sequences.index", campaign_id=campaign_id))


def _form_errors(form: FlaskForm) -> None:
    for name, errors in form.errors.items():
        label = getattr(form, name).label.text if hasattr(form, name) else name
        flash(f"{label}: {'; '.join(map(str, errors))}", "error")


@bp.route("/campaigns/<int:campaign_id>/sequence/steps", methods=["POST"])
@login_required
def add_step(campaign_id: int):
    """Append a step; a finished campaign reopens only with the confirmation box ticked."""
    _campaign(campaign_id)
    form = StepForm()
    if not form.validate_on_submit():
        _form_errors(form)
        return _back(campaign_id)
    try:
        added = sequences.add_step(
            db.engine, campaign_id, amount=form.delay_amount.data, unit=form.delay_unit.data,
            business_days=form.business_days.data, new_thread=form.new_thread.data, subject=form.subject.data,
            body=form.body.data, letter=form.letter.data, reopen=form.reopen.data, now=utcnow())
    except CampaignError as exc:
        flash(_("The campaign is finished: tick the box to reopen it; %(n)d leads who got every step "
                "will get the new one.", n=sequences.reopen_count(db.engine, campaign_id))
              if exc.code == "needs_reopen" else str(exc), "error")
        return _back(campaign_id)
    flash(_("Step %(n)d added.", n=added.position), "ok")
    if added.reopened:
        flash(_("Campaign reopened: %(n)d leads will get the new step.", n=added.reopened), "ok")
    return _back(campaign_id)


@bp.route("/campaigns/<int:campaign_id>/sequence/variant", methods=["POST"])
@login_required
def step_variant(campaign_id: int):
    """Add or replace a later step's variant (applies to messages not claimed yet)."""
    _campaign(campaign_id)
    form = StepVariantForm()
    if not form.validate_on_submit():
        _form_errors(form)
        return _back(campaign_id)
    try:
        sequences.set_step_variant(db.engine, campaign_id, form.step.data, form.letter.data,
                                   form.subject.data, form.body.data, form.weight.data)
    except CampaignError as exc:
        flash(str(exc), "error")
        return _back(campaign_id)
    flash(_("Variant %(letter)s of step %(n)d saved.", letter=form.letter.data.upper(), n=form.step.data),
          "ok")
    return _back(campaign_id)


def _step_arg() -> int | None:
    value = request.form.get("step", "")
    return int(value) if value.isdigit() and len(value) < 6 else None


@bp.route("/campaigns/<int:campaign_id>/sequence/archive", methods=["POST"])
@login_required
def archive_step(campaign_id: int):
    """Archive a step: skipped from now on, leads waiting for it move on."""
    return _change_step(campaign_id, "archive")


@bp.route("/campaigns/<int:campaign_id>/sequence/remove", methods=["POST"])
@login_required
def remove_step(campaign_id: int):
    """Remove a step that nobody got yet."""
    return _change_step(campaign_id, "remove")


def _change_step(campaign_id: int, action: str):
    _campaign(campaign_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    step = _step_arg()
    if step is None:
        flash(_("Which step? None was given."), "error")
        return _back(campaign_id)
    try:
        if action == "archive":
            moved = sequences.archive_step(db.engine, campaign_id, step, utcnow())
            flash(_("Step %(n)d archived; %(moved)d waiting leads moved on.", n=step, moved=moved), "ok")
        else:
            sequences.remove_step(db.engine, campaign_id, step)
            flash(_("Step %(n)d removed.", n=step), "ok")
    except CampaignError as exc:
        flash(_("Step %(n)d was already sent to some leads: archive it instead (archived steps are skipped).",
                n=step) if exc.code == "step_sent" else str(exc), "error")
    return _back(campaign_id)


@bp.route("/campaigns/<int:campaign_id>/sequence/settings", methods=["POST"])
@login_required
def settings(campaign_id: int):
    """The holidays' country and whether a reply stops the replier's company."""
    _campaign(campaign_id)
    form = SettingsForm()
    if not form.validate_on_submit():
        _form_errors(form)
        return _back(campaign_id)
    country = form.country.data.upper()
    try:
        sequences.due_after(datetime(2026, 1, 1), 1, DelayUnit.DAYS, True, "0,1,2,3,4", "UTC", country)
    except NotImplementedError:
        flash(_("No public holidays are known for country %(code)s.", code=country), "error")
        return _back(campaign_id)
    with immediate(db.engine) as conn:
        conn.execute(Campaign.__table__.update().where(Campaign.id == campaign_id).values(
            country=country, stop_company_on_reply=form.stop_company_on_reply.data))
    flash(_("Sequence settings saved."), "ok")
    return _back(campaign_id)


@bp.route("/campaigns/<int:campaign_id>/leads/<int:lead_id>/timeline")
@login_required
def lead(campaign_id: int, lead_id: int):
    """One lead's timeline in the campaign: each step sent, the next one due, or why it stopped."""
    campaign = _campaign(campaign_id)
    person = db.session.get(Lead, lead_id) or abort(404)
    with db.engine.connect() as conn:
        events = sequences.lead_timeline(conn, campaign_id, lead_id)
    return render_template("sequence_lead.html", campaign=campaign, lead=person, events=events,
                           action=ActionForm())


@bp.route("/campaigns/<int:campaign_id>/leads/<int:lead_id>/stop", methods=["POST"])
@login_required
def stop(campaign_id: int, lead_id: int):
    """A person's stop: the lead gets no further step of this campaign."""
    _campaign(campaign_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    stopped = sequences.stop(db.engine, campaign_id, lead_id, "person", utcnow())
    flash(_("Sequence stopped for this lead.") if stopped else _("This lead's sequence was stopped already."),
          "ok")
    return redirect(url_for("sequences.lead", campaign_id=campaign_id, lead_id=lead_id))
