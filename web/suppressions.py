"""The suppression list: view, search, add by hand, remove (confirmed), import a CSV."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from sqlalchemy import func, select
from wtforms import StringField, ValidationError
from wtforms.validators import DataRequired, Email, Length

from core import importer
from core.suppressions import domain_entry, import_csv, suppress
from models import Suppression, db
from storage.database import immediate, write_session
from storage.timeutil import utcnow
from web.common import PAGE_SIZE, ActionForm, page_arg, page_count

bp = Blueprint("suppression", __name__)
SHOWN_REJECTED = 10  # rejected lines listed one by one after an import; the rest are counted


def _is_domain(text: str) -> bool:
    return "@" not in text.strip().lstrip("@")


class AddForm(FlaskForm):
    # An address, or a whole domain ("@firma.pl" or "firma.pl": a company, a competitor; #17).
    email = StringField(_l("Address or @domain"), validators=[DataRequired(), Length(max=320)])
    detail = StringField(_l("Note"), validators=[Length(max=500)])

    def validate_email(self, field) -> None:
        if _is_domain(field.data):
            try:
                domain_entry(field.data)
            except ValueError as exc:
                raise ValidationError(_("Not a domain: %(text)s", text=field.data.strip())) from exc
        else:
            Email()(self, field)


class ImportForm(FlaskForm):
    file = FileField(_l("CSV file"), validators=[FileRequired()])


@bp.route("/suppressions", methods=["GET", "POST"])
@login_required
def index():
    """The list (searchable, 50 a page) with the add and import forms."""
    form, upload = AddForm(), ImportForm()
    if form.validate_on_submit():
        entry = domain_entry(form.email.data) if _is_domain(form.email.data) else form.email.data
        with immediate(db.engine) as conn:
            added = suppress(conn, entry, "domain" if entry.startswith("@") else "manual",
                             form.detail.data or "", utcnow())
        flash(_("%(email)s will not be mailed again.", email=entry.strip().lower())
              if added else _("%(email)s was suppressed already.", email=entry.strip().lower()), "ok")
        return redirect(url_for("suppression.index"))
    q = request.args.get("q", "").strip()
    page = page_arg()
    where = (Suppression.email.contains(q.lower(), autoescape=True),) if q else ()  # "%", "_" literal
    total = db.session.scalar(select(func.count()).select_from(Suppression).where(*where))
    rows = db.session.scalars(select(Suppression).where(*where).order_by(Suppression.id.desc())
                              .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
    return render_template("suppressions.html", rows=rows, total=total, page=page, q=q, form=form,
                           upload=upload, pages=page_count(total))


@bp.route("/suppressions/import", methods=["POST"])
@login_required
def import_file():
    """Suppress every address of an uploaded CSV; bad lines are listed, good ones go in."""
    upload = ImportForm()
    if not upload.validate_on_submit():
        flash(_("Choose a CSV file."), "error")
        return redirect(url_for("suppression.index"))
    try:
        added, rejected = import_csv(db.engine, upload.file.data.read(), utcnow())
    except importer.CsvImportError as exc:
        flash(str(exc), "error")
        return redirect(url_for("suppression.index"))
    flash(_("%(n)d addresses added to the suppression list.", n=added), "ok")
    # Flashes live in the session cookie: thousands of them would pass the browsers' 4 KB
    # limit, and the browser would drop the cookie (and every message with it).
    for line, reason in rejected[:SHOWN_REJECTED]:
        flash(_("Line %(line)d: %(reason)s", line=line, reason=reason), "error")
    if len(rejected) > SHOWN_REJECTED:
        flash(_("… and %(n)d more lines that are not addresses.", n=len(rejected) - SHOWN_REJECTED), "error")
    return redirect(url_for("suppression.index"))


@bp.route("/suppressions/<int:suppression_id>/remove", methods=["GET", "POST"])
@login_required
def remove(suppression_id: int):
    """GET asks for confirmation; POST removes the address from the list."""
    row = db.session.get(Suppression, suppression_id) or abort(404)
    form = ActionForm()
    if request.method != "POST":  # GET and HEAD: the confirmation page
        return render_template("suppression_remove.html", row=row, form=form)
    if not form.validate_on_submit():
        abort(400)
    with write_session(db.engine) as session:
        session.delete(session.get(Suppression, suppression_id))
    flash(_("%(email)s may be mailed again.", email=row.email), "ok")
    return redirect(url_for("suppression.index"))
