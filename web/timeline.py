"""Timeline pages: sends over time, duplicates and the finding, for live data and legacy logs."""

from __future__ import annotations

import csv
import io
import secrets
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, available_timezones

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import get_locale
from flask_login import login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from markupsafe import Markup
from wtforms import SelectChoice, SelectField

from core.csvfile import neutralized
from models import Campaign, db
from timeline import legacy_log
from timeline import live as live_sql
from timeline.analysis import Bucket
from timeline.analysis import analyse as analyse_events
from timeline.analysis import bucket as bucket_events
from timeline.live import Scope
from timeline.words import finding
from web import timeline_chart
from web.common import MAX_TOKEN, id_arg, link_args, megabytes, page_arg, uploads_folder, write_private

bp = Blueprint("timeline", __name__)
PAGE_SIZE = 50
ZONES = sorted(available_timezones())


class LegacyForm(FlaskForm):
    file = FileField(validators=[FileRequired()])
    tz = SelectField(choices=[SelectChoice(z) for z in ZONES], default="UTC")


@bp.app_template_global()
@lru_cache(maxsize=64)
def zone_options(selected: str) -> Markup:
    """The ~600 <option>s of a time-zone select, built once per selected zone.

    Rendering them per request (a Jinja loop, or WTForms' widget for the upload form)
    cost more than all of the page's queries over the summary.
    """
    return Markup("").join(
        Markup('<option value="{0}"{1}>{0}</option>').format(z, Markup(" selected") if z == selected else "")
        for z in ZONES)


@bp.app_template_filter("local")
def local_time(value: datetime | None, tz: str = "UTC") -> str:
    """A naive-UTC time shown in the zone the user picked."""
    if value is None:
        return "—"
    if tz != "UTC":  # the default, and the common case: no conversion to make
        value = value.replace(tzinfo=UTC).astimezone(ZoneInfo(tz))
    return value.strftime("%Y-%m-%d %H:%M:%S")


@bp.app_template_global()
def chart_bars(buckets: list[Bucket], tz: str, duplicates: str) -> Markup:
    """The chart's bars (see timeline_chart), their times in the user's zone."""
    return timeline_chart.bars(buckets, lambda at: local_time(at, tz), duplicates)


def _zone() -> str:
    tz = request.args.get("tz", "UTC")
    return tz if tz in ZONES else "UTC"


def _parse_local(value: str | None, tz: str) -> datetime | None:
    try:
        local = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    return local.replace(tzinfo=ZoneInfo(tz)).astimezone(UTC).replace(tzinfo=None) if local else None


def _scope(campaign_id: int | None, tz: str) -> Scope:
    return Scope(campaign_id, _parse_local(request.args.get("from"), tz),
                 _parse_local(request.args.get("to"), tz))


@bp.route("/timeline")
@bp.route("/campaigns/<int:campaign_id>/timeline")
@login_required
def live(campaign_id: int | None = None):
    """SendOnce's own sends: chart, totals, duplicate groups, finding, paged events."""
    campaign = db.session.get(Campaign, campaign_id) or abort(404) if campaign_id else None
    tz, page = _zone(), page_arg()
    scope = _scope(campaign_id, tz)
    with db.engine.connect() as conn:
        analysis, minutes, buckets = live_sql.overview(conn, scope)
        rows = [_row(row) for row in live_sql.events_page(conn, scope, page, PAGE_SIZE)]
    template = "_timeline_body.html" if request.args.get("fragment") else "timeline.html"
    return render_template(template, analysis=analysis, buckets=buckets, minutes=minutes, rows=rows,
                           page=page, pages=max((analysis.total_sends + PAGE_SIZE - 1) // PAGE_SIZE, 1),
                           tz=tz, campaign=campaign, legacy=None,
                           finding=finding(analysis, str(get_locale()), tz), args=_args())


def _row(row) -> dict:
    return {"at": row.claimed_at, "campaign": row.campaign_id, "lead": row.email,
            "variant": row.variant_letter, "status": row.status, "trigger": row.trigger,
            "worker": row.worker}


def _args() -> dict:
    return link_args(("tz", "from", "to"))


@bp.route("/timeline/export.csv")
@login_required
def export():
    """The event table as CSV (formula-looking cells neutralized for spreadsheets)."""
    tz = _zone()
    scope = _scope(id_arg("campaign"), tz)

    def generate():
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["time", "campaign", "lead", "variant", "status", "trigger", "worker"])
        with db.engine.connect() as conn:
            for row in live_sql.all_events(conn, scope):
                writer.writerow([local_time(row.claimed_at, tz), row.campaign_id, neutralized(row.email),
                                 row.variant_letter, row.status, row.trigger, neutralized(row.worker)])
                if out.tell() > 65536:
                    yield out.getvalue()
                    out.seek(0)
                    out.truncate()
        yield out.getvalue()

    return Response(stream_with_context(generate()), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=timeline.csv"})


def _legacy_path(token: str) -> Path:
    if not token.isalnum() or len(token) > MAX_TOKEN:
        abort(404)
    return uploads_folder(current_app.instance_path) / f"{token}.log.csv"


@bp.route("/timeline/legacy", methods=["POST"])
@login_required
def upload_legacy():
    """Keep an uploaded legacy send log (never written into send_log) and show its analysis."""
    form = LegacyForm()
    if not form.validate_on_submit():
        abort(400)
    limit = current_app.config["LEGACY_LOG_MAX_BYTES"]
    data = form.file.data.read(limit + 1)  # no more than one byte past the limit is read
    if len(data) > limit:
        return render_template("too_large.html", limit=megabytes(limit), setting="LEGACY_LOG_MAX_BYTES"), 413
    token = secrets.token_hex(12)
    write_private(_legacy_path(token), data)
    return redirect(url_for("timeline.legacy", token=token, tz=form.tz.data))


@bp.route("/timeline/legacy/<token>")
@login_required
def legacy(token: str):
    """A legacy log's analysis, on the same page as live data; bad lines listed."""
    path = _legacy_path(token)
    if not path.exists():
        abort(404)
    tz, page = _zone(), page_arg()
    try:
        parsed = legacy_log.parse_log(path.read_bytes(), tz)
    except legacy_log.LegacyLogError as exc:
        return render_template("timeline.html", error=str(exc), legacy=token, tz=tz,
                               analysis=None, campaign=None, args=_args()), 400
    analysis = analyse_events(parsed.events)
    minutes = live_sql.bucket_minutes(analysis.first_send_at, analysis.last_send_at)
    newest = sorted(parsed.events, reverse=True)[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
    rows = [{"at": e.at, "campaign": e.campaign, "lead": e.lead, "variant": e.variant, "status": "",
             "trigger": e.trigger, "worker": e.worker} for e in newest]
    buckets = bucket_events(parsed.events, minutes)
    return render_template("timeline.html", analysis=analysis, buckets=buckets, minutes=minutes,
                           rows=rows, page=page, tz=tz, campaign=None,
                           pages=max((len(parsed.events) + PAGE_SIZE - 1) // PAGE_SIZE, 1),
                           legacy=token, rejected=parsed.rejected,
                           finding=finding(analysis, str(get_locale()), tz), args=_args())
