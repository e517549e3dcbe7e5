"""Leads: the searchable list, one lead's history, and the CSV import in three steps."""

from __future__ import annotations

import secrets

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from sqlalchemy import func, select
from wtforms import SelectChoice, SelectField, StringField
from wtforms.validators import Length

from core import importer, leads
from models import Campaign, CampaignLead, Lead, SendLog, db
from storage.timeutil import utcnow
from web.common import (
    PAGE_SIZE,
    ActionForm,
    id_arg,
    page_arg,
    page_count,
    remove_stale_lead_uploads,
    translate,
    upload_path,
    write_private,
)

bp = Blueprint("leads", __name__)
LIST_COLUMNS = (Lead.id, Lead.email, Lead.first_name, Lead.last_name, Lead.company, Lead.tags)


def _search(q: str) -> tuple:
    if not q:
        return ()
    # A bound parameter, so user text never becomes SQL; autoescape makes "%" and "_"
    # in it literal characters, not LIKE wildcards that would match every lead. lead.search
    # holds the fields case-folded (models.lead_search_text): "łukasz" finds "Łukasz".
    return (Lead.search.contains(q.strip().casefold(), autoescape=True),)


@bp.route("/leads")
@login_required
def index():
    """All leads, searchable by email, name, company or tag, 50 a page."""
    q = request.args.get("q", "")
    page = page_arg()
    conditions = _search(q)
    total = db.session.scalar(select(func.count()).select_from(Lead).where(*conditions))
    # Plain rows of the shown columns: no ORM objects, no JSON `fields` decoded 50 times.
    rows = db.session.execute(select(*LIST_COLUMNS).where(*conditions).order_by(Lead.id.desc())
                              .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
    return render_template("leads.html", leads=rows, total=total, page=page, q=q,
                           pages=page_count(total))


@bp.route("/leads/<int:lead_id>")
@login_required
def detail(lead_id: int):
    """One lead: its fields, its enrollments and every delivery attempt."""
    lead = db.session.get(Lead, lead_id) or abort(404)
    enrollments = db.session.execute(
        select(CampaignLead, Campaign.name).join(Campaign, Campaign.id == CampaignLead.campaign_id)
        .where(CampaignLead.lead_id == lead_id).order_by(CampaignLead.id)).all()
    sends = db.session.scalars(select(SendLog).where(SendLog.lead_id == lead_id)
                               .order_by(SendLog.id)).all()
    return render_template("lead.html", lead=lead, enrollments=enrollments, sends=sends, action=ActionForm(),
                           **_campaign_names_and_zones({s.campaign_id for s in sends}),
                           erased=lead.email.startswith(leads.ERASED_PREFIX))


def _campaign_names_and_zones(ids: set[int]) -> dict:
    rows = db.session.execute(select(Campaign.id, Campaign.name, Campaign.timezone)
                              .where(Campaign.id.in_(ids))).all()
    return {"names": {cid: name for cid, name, _zone in rows},
            "zones": {cid: zone for cid, _name, zone in rows}}


class LeadForm(FlaskForm):
    first_name = StringField(_l("First name"), validators=[Length(max=200)])
    last_name = StringField(_l("Last name"), validators=[Length(max=200)])
    company = StringField(_l("Company"), validators=[Length(max=200)])
    tags = StringField(_l("Tags (comma-separated)"), validators=[Length(max=500)])


@bp.route("/leads/<int:lead_id>/edit", methods=["GET", "POST"])
@login_required
def edit(lead_id: int):
    """Change a lead's names, company and tags."""
    lead = db.session.get(Lead, lead_id) or abort(404)
    if lead.email.startswith(leads.ERASED_PREFIX):
        abort(404)
    form = LeadForm(obj=lead)
    if form.validate_on_submit():
        leads.update_lead(db.engine, lead_id, first_name=form.first_name.data, last_name=form.last_name.data,
                          company=form.company.data, tags=form.tags.data)
        flash(_("Lead saved."), "ok")
        return redirect(url_for("leads.detail", lead_id=lead_id))
    return render_template("lead_form.html", lead=lead, form=form)


@bp.route("/leads/<int:lead_id>/erase", methods=["POST"])
@login_required
def erase(lead_id: int):
    """GDPR/RODO erasure: the lead is anonymised and its address never mailed or imported again."""
    if not ActionForm().validate_on_submit():
        abort(400)
    if not leads.erase(db.engine, lead_id, utcnow()):
        abort(404)
    flash(_("The lead's data was erased. Its address is kept only as a fingerprint, so it is never "
            "mailed or imported again."), "ok")
    return redirect(url_for("leads.detail", lead_id=lead_id))


@bp.route("/leads/<int:lead_id>/unenroll/<int:campaign_id>", methods=["POST"])
@login_required
def unenroll(lead_id: int, campaign_id: int):
    """Take a lead out of a campaign it has not been sent yet."""
    if not ActionForm().validate_on_submit():
        abort(400)
    if leads.unenroll(db.engine, campaign_id, lead_id):
        flash(_("The lead will not be sent this campaign."), "ok")
    else:
        flash(_("Too late to take the lead out: this campaign is being sent or was sent to it."), "error")
    return redirect(url_for("leads.detail", lead_id=lead_id))


class UploadForm(FlaskForm):
    file = FileField(validators=[FileRequired()])


class MappingForm(FlaskForm):
    campaign = SelectField(coerce=int)


def _campaign_choices() -> list[SelectChoice]:
    campaigns = db.session.execute(select(Campaign.id, Campaign.name).order_by(Campaign.id.desc())).all()
    return [SelectChoice(0, _("— do not enroll —"))] + [SelectChoice(cid, name) for cid, name in campaigns]


@bp.route("/leads/import", methods=["GET", "POST"])
@login_required
def upload():
    """Step 1: upload a CSV; it is read (not imported) and its columns shown for mapping."""
    remove_stale_lead_uploads()
    form = UploadForm()
    if form.validate_on_submit():
        data = form.file.data.read()
        try:
            importer.sniff(data)  # unreadable files stop here, before anything is stored
        except importer.CsvImportError as exc:
            form.file.errors.append(str(exc))
            return render_template("import_upload.html", form=form), 400
        token = secrets.token_hex(12)
        write_private(upload_path(token, ".csv"), data)
        return redirect(url_for("leads.mapping", token=token,
                                campaign=id_arg("campaign") or 0))
    return render_template("import_upload.html", form=form)


@bp.route("/leads/import/<token>", methods=["GET", "POST"])
@login_required
def mapping(token: str):
    """Step 2: preview and column mapping; POST imports and shows the result (step 3)."""
    path = upload_path(token, ".csv")
    if not path.exists():
        abort(404)
    data = path.read_bytes()
    sniffed = importer.sniff(data)
    form = MappingForm(campaign=id_arg("campaign") or 0)
    form.campaign.choices = _campaign_choices()
    targets = sniffed.targets()  # the importer's own names, e.g. field:Telefon_4 for a repeated header
    if form.validate_on_submit():
        chosen = {i: request.form.get(f"column-{i}", "skip") for i in range(len(sniffed.header))}
        try:
            report = importer.run_import(db.engine, data, chosen, campaign_id=form.campaign.data or None)
        except importer.CsvImportError as exc:
            flash(translate(exc.args[0]), "error")
        else:
            # utf-8-sig: Excel on Windows reads Polish letters right only with the BOM.
            write_private(upload_path(token, ".rejected.csv"),
                          importer.rejected_csv(report, translate=translate).encode("utf-8-sig"))
            path.unlink()
            return render_template("import_result.html", report=report, token=token)
    return render_template("import_mapping.html", form=form, sniffed=sniffed, targets=targets,
                           mapping=sniffed.suggested_mapping)


@bp.route("/leads/import/<token>/rejected.csv")
@login_required
def rejected(token: str):
    """The rejected rows of one import, as CSV (line, reason)."""
    path = upload_path(token, ".rejected.csv")
    if not path.exists():
        abort(404)
    return Response(path.read_bytes(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=rejected.csv"})
