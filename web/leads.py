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
from flask_login import login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from sqlalchemy import func, select
from wtforms import SelectChoice, SelectField

from core import importer
from models import Campaign, CampaignLead, Lead, SendLog, db
from web.common import PAGE_SIZE, page_count, translate, upload_path

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
    page = max(request.args.get("page", 1, type=int), 1)
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
    return render_template("lead.html", lead=lead, enrollments=enrollments, sends=sends)


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
    form = UploadForm()
    if form.validate_on_submit():
        data = form.file.data.read()
        try:
            importer.sniff(data)  # unreadable files stop here, before anything is stored
        except importer.CsvImportError as exc:
            form.file.errors.append(str(exc))
            return render_template("import_upload.html", form=form), 400
        token = secrets.token_hex(12)
        upload_path(token, ".csv").write_bytes(data)
        return redirect(url_for("leads.mapping", token=token,
                                campaign=request.args.get("campaign", 0, type=int)))
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
    form = MappingForm(campaign=request.args.get("campaign", 0, type=int))
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
            upload_path(token, ".rejected.csv").write_text(
                importer.rejected_csv(report, translate=translate), encoding="utf-8-sig")
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
