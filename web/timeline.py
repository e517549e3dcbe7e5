"""Timeline pages: sends over time, duplicates and the finding, for live data and legacy logs."""

from __future__ import annotations

import csv
import io
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import get_locale, ngettext
from flask_babel import gettext as _
from flask_login import login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from markupsafe import Markup
from sqlalchemy import select
from wtforms import SelectChoice, SelectField, StringField
from wtforms.validators import Length, Optional

from core.csvfile import neutralized
from models import Campaign, db
from timeline import legacy_log, stored, words
from timeline import live as live_sql
from timeline.analysis import VIEWS, Bucket
from timeline.analysis import analyse as analyse_events
from timeline.analysis import bucket as bucket_events
from timeline.live import Scope
from timeline.words import finding
from web import timeline_chart
from web.common import (
    PAGE_SIZE,
    id_arg,
    link_args,
    page_arg,
    page_count,
    upload_path,
    write_private,
)

bp = Blueprint("timeline", __name__)
ZONES = sorted(available_timezones())
LEGACY_LOG_MAX_BYTES = 512 * 2**20  # config LEGACY_LOG_MAX_BYTES; ~1,000,000 rows are ~60-150 MB
ZONE_BY_LANGUAGE = {"pl": "Europe/Warsaw"}  # the team's zone when neither the URL nor the browser names one
MAPPING_COLUMNS = 200  # columns offered by the mapping step; the time and lead are among the first
_CACHE: dict[tuple, tuple] = {}  # stored analyses rebuilt from JSON (they never change)


class LegacyForm(FlaskForm):
    file = FileField(validators=[FileRequired()])
    tz = SelectField(choices=[SelectChoice(z) for z in ZONES], default="UTC")
    name = StringField(validators=[Optional(), Length(max=200)])
    view = SelectField(choices=[SelectChoice(v) for v in VIEWS], default="recipient")


class MappingForm(FlaskForm):
    """Only the CSRF token: the mapping's selects are read from request.form by role."""


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
        zone = ZoneInfo(tz)
        value = zone.fromutc(value.replace(tzinfo=zone)).replace(tzinfo=None)
    # isoformat: a third of strftime's cost, and the same text for a naive time from year 1000
    # on (a page shows a time per event row and per chart bar; the CSV export one per send).
    if value.year < 1000 or value.tzinfo is not None:  # isoformat would pad the year, or add an offset
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value.isoformat(" ", "seconds")


@bp.app_template_global()
def chart_bars(buckets: list[Bucket], tz: str, duplicates: str) -> Markup:
    """The chart's bars (see timeline_chart), their times in the user's zone."""
    # The word in the singular for one ("1 duplicate"): the template's plural is not enough.
    return timeline_chart.bars(buckets, lambda at: local_time(at, tz),
                               lambda n: ngettext("%(num)d duplicate", "%(num)d duplicates", n))


def _default_zone() -> str:
    """The browser's zone (app.js keeps it in a cookie), else the language's (Europe/Warsaw for pl)."""
    browser = request.cookies.get("tz", "")
    return browser if browser in ZONES else ZONE_BY_LANGUAGE.get(str(get_locale()), "UTC")


def _zone_and_note() -> tuple[str, str | None]:
    """The zone to show times in, and why it is not the one asked for (an unknown name)."""
    asked = request.args.get("tz", "")
    if not asked or asked in ZONES:
        return asked or _default_zone(), None
    zone = _default_zone()
    return zone, _("Unknown time zone %(tz)s: times are shown in %(zone)s.", tz=asked[:60], zone=zone)


def _zone() -> str:
    return _zone_and_note()[0]


def _parse_local(value: str | None, tz: str) -> datetime | None:
    """A datetime-local value in the user's zone as naive UTC; ValueError if it is not one."""
    local = datetime.fromisoformat(value) if value else None
    return local.replace(tzinfo=ZoneInfo(tz)).astimezone(UTC).replace(tzinfo=None) if local else None


def _range(tz: str) -> tuple[datetime | None, datetime | None, str | None]:
    """The Since/Until filters as naive UTC, and what is wrong with them (never ignored silently)."""
    bounds = []
    for name, label in (("from", _("Since")), ("to", _("Until"))):
        try:
            bounds.append(_parse_local(request.args.get(name), tz))
        except ValueError:
            bounds.append(None)
            return None, None, _("%(field)s: %(value)s is not a date and time; showing every send.",
                                 field=label, value=request.args.get(name, "")[:40])
    return bounds[0], bounds[1], None


def _scope(campaign_id: int | None, tz: str) -> Scope:
    since, until, _note = _range(tz)
    return Scope(campaign_id, since, until)


@bp.route("/timeline")
@bp.route("/campaigns/<int:campaign_id>/timeline")
@login_required
def live(campaign_id: int | None = None):
    """SendOnce's own sends: chart, totals, duplicate groups, finding, paged events."""
    campaign = db.session.get(Campaign, campaign_id) or abort(404) if campaign_id else None
    (tz, tz_note), page = _zone_and_note(), page_arg()
    scope = _scope(campaign_id, tz)
    fragment = bool(request.args.get("fragment"))
    # The request's own connection (the login check's): on PostgreSQL every other connection
    # would cost a BEGIN and a ROLLBACK round trip of its own.
    conn = db.session.connection()
    analysis, minutes, buckets = live_sql.overview(conn, scope)
    events = live_sql.events_page(conn, scope, page, PAGE_SIZE)
    names = {str(e.campaign_id): e.campaign_name for e in events if e.campaign_name is not None}
    names |= _campaign_names(conn, _campaigns_in(analysis) - names.keys())
    logs = [] if fragment else stored.listing(conn)
    rows = [_row(row, names) for row in events]
    analysis = named(analysis, names)
    return render_template("_timeline_body.html" if fragment else "timeline.html", analysis=analysis,
                           buckets=buckets, minutes=minutes, rows=rows,
                           page=page, pages=page_count(analysis.total_sends),
                           tz=tz, campaign=campaign, legacy=None, tz_note=tz_note, error=_range(tz)[2],
                           logs=logs, form_tz=tz, finding=finding(analysis, str(get_locale()), tz),
                           args=_args())


@dataclass(frozen=True, slots=True)
class EventRow:
    """A row of the event table. Attributes, not a dict's keys: Jinja reads `r.at` as an
    attribute first, and a dict made it raise and catch an AttributeError for every cell."""

    at: datetime
    campaign: str
    campaign_id: int | None  # None: a legacy log's campaign, with no page to link to
    lead: str
    variant: str
    status: str
    trigger: str
    worker: str


def _row(row, names: dict[str, str]) -> EventRow:
    return EventRow(row.claimed_at, names.get(str(row.campaign_id), str(row.campaign_id)), row.campaign_id,
                    row.email, row.variant_letter, row.status, row.trigger, row.worker)


def _campaigns_in(analysis) -> set[str]:
    return ({g.campaign for g in analysis.duplicate_groups} | {b.campaign for b in analysis.bursts}
            | {c.campaign for c in analysis.clusters})


def _campaign_names(conn, ids: set[str]) -> dict[str, str]:
    """Campaign names by id (as the analysis spells ids: text), one query for the ids the page's
    event rows did not name (those come with their names: no query at all when that is every id)."""
    wanted = {int(i) for i in ids if i.isdigit()}
    if not wanted:
        return {}
    return {str(cid): name for cid, name in conn.execute(
        select(Campaign.id, Campaign.name).where(Campaign.id.in_(wanted)))}


def named(analysis, names: dict[str, str]):
    """The live analysis with campaign names where it has ids: people read names (ids stay in
    URLs and the CSV export). A campaign deleted since keeps its id."""
    if not names:
        return analysis

    def name(campaign: str) -> str:
        return names.get(campaign, campaign)

    def group(g):
        return replace(g, campaign=name(g.campaign))

    return replace(
        analysis, duplicate_groups=[group(g) for g in analysis.duplicate_groups],
        clusters=[replace(c, campaign=name(c.campaign)) for c in analysis.clusters],
        bursts=[replace(b, campaign=name(b.campaign), groups=[group(g) for g in b.groups])
                for b in analysis.bursts])


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


def _max_bytes() -> int:
    return int(current_app.config.get("LEGACY_LOG_MAX_BYTES", LEGACY_LOG_MAX_BYTES))


def _upload_limit() -> None:
    if request.endpoint == "timeline.upload_legacy":
        request.max_content_length = _max_bytes()  # a 1,000,000-row log is larger than a lead import


@bp.record_once
def _limit_before_csrf(state) -> None:
    # CSRF protection reads the form in the app's first before_request, under the app-wide
    # MAX_CONTENT_LENGTH; the upload's own limit must be set before that.
    state.app.before_request_funcs.setdefault(None, []).insert(0, _upload_limit)


@bp.errorhandler(413)
def too_large(_error):
    """An upload over the limit: said in the user's language, on the page it came from."""
    limit = _max_bytes()
    size = f"{limit // 2**20} MB" if limit >= 2**20 else f"{max(limit // 1024, 1)} KB"
    message = _("The file is larger than %(size)s; export a shorter period, or ask the administrator "
                "to raise %(setting)s.", size=size, setting="LEGACY_LOG_MAX_BYTES")
    return _legacy_error(message, _default_zone()), 413


def _legacy_error(message: str, tz: str, status: int | None = None):
    return render_template("timeline.html", error=message, legacy=None, tz=tz, analysis=None, campaign=None,
                           args=_args(), logs=_logs(), form_tz=tz, tz_note=None)


@bp.route("/timeline/legacy", methods=["POST"])
@login_required
def upload_legacy():
    """Parse and analyse an uploaded legacy send log once, keep it (never in send_log), show it."""
    form = LegacyForm()
    if not form.validate_on_submit():
        abort(400)
    data, tz, view = form.file.data.read(), form.tz.data, form.view.data
    form.file.data.close()  # a large upload is spooled to a temporary file: free it now
    name = (form.name.data or form.file.data.filename or _("imported log")).strip()
    try:
        parsed = legacy_log.parse_log(data, tz)
    except legacy_log.MissingColumns as exc:
        token = secrets.token_hex(12)
        write_private(upload_path(token, ".log"), data)  # kept until the columns are picked
        return _mapping_page(token, exc.header, exc.preview, name, tz, view, "")
    except legacy_log.LegacyLogError as exc:
        return _legacy_error(str(exc), tz), 400
    log_id = stored.save(db.engine, name, parsed, view)
    return redirect(url_for("timeline.legacy", token=log_id, tz=tz))


def _mapping_page(token: str, header: list[str], preview: list[list[str]], name: str, tz: str, view: str,
                  error: str, status: int = 200):
    # A runaway header (a 4 MB first line) must not become a page of millions of <option>s.
    shown = header[:MAPPING_COLUMNS]
    return render_template("legacy_mapping.html", upload_token=token, header=shown,
                           preview=[row[:MAPPING_COLUMNS] for row in preview],
                           hidden=len(header) - len(shown), name=name, tz=tz, view=view, error=error,
                           roles=legacy_log.ROLES), status


@bp.route("/timeline/legacy/map/<token>", methods=["POST"])
@login_required
def map_legacy(token: str):
    """The mapping step: the columns picked by hand for a log whose header names were not known."""
    path = upload_path(token, ".log")
    if not path.exists() or not MappingForm().validate_on_submit():
        abort(404 if not path.exists() else 400)
    chosen = {role: request.form.get(f"role-{role}", "") for role in legacy_log.ROLES}
    columns = {role: value for role, value in chosen.items() if value.isdigit()}
    data, tz, view = path.read_bytes(), request.form.get("tz", "UTC"), request.form.get("view", "recipient")
    tz, view = (tz if tz in ZONES else "UTC"), (view if view in VIEWS else "recipient")
    name = request.form.get("name", "").strip() or _("imported log")
    try:
        parsed = legacy_log.parse_log(data, tz, columns)
    except legacy_log.LegacyLogError as exc:
        try:
            header, preview = legacy_log.header_and_preview(data)
        except legacy_log.LegacyLogError:
            return _legacy_error(str(exc), tz), 400
        return _mapping_page(token, header, preview, name, tz, view, str(exc), 400)
    log_id = stored.save(db.engine, name, parsed, view)
    path.unlink(missing_ok=True)
    return redirect(url_for("timeline.legacy", token=log_id, tz=tz))


@bp.route("/timeline/legacy/<token>/delete", methods=["POST"])
@login_required
def delete_legacy(token: str):
    """Delete a stored legacy log and its events."""
    if not MappingForm().validate_on_submit():
        abort(400)
    if not token.isdigit() or not stored.remove(db.engine, int(token)):
        abort(404)
    flash(_("The imported log was deleted."), "ok")
    return redirect(url_for("timeline.live"))


def _stored_analysis(log) -> tuple:
    """The stored analysis of a log, rebuilt once per process (it never changes)."""
    key = (str(db.engine.url), log.id, log.created_at)  # ids are reused by another database
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = stored.analysis_of(log)
    return _CACHE[key]


@bp.route("/timeline/legacy/<token>")
@login_required
def legacy(token: str):
    """A stored legacy log's analysis, on the same page as live data; bad lines listed."""
    if not token.isdigit():
        abort(404)
    tz, tz_note = _zone_and_note()
    page = page_arg()
    since, until, range_note = _range(tz)
    with db.engine.connect() as conn:
        log = stored.find(conn, int(token))
        if log is None or not log.ready:
            abort(404)
        first, last = 0, log.events
        if since or until:
            # A period: analysed from the stored events of that period only.
            first, last = stored.seq_range(conn, log.id, since, until)
            view = log.summary["analysis"]["view"]
            events = stored.events_between(conn, log.id, first, last)
            analysis = analyse_events(events, view=view)
            minutes = live_sql.bucket_minutes(analysis.first_send_at, analysis.last_send_at)
            buckets = bucket_events(events, minutes, view)
        else:
            analysis, minutes, buckets = _stored_analysis(log)
        rows = [_legacy_row(e) for e in stored.events_page(conn, log.id, first, last, page, PAGE_SIZE)]
    lang = str(get_locale())
    return render_template("timeline.html", analysis=analysis, buckets=buckets, minutes=minutes,
                           rows=rows, page=page, tz=tz, campaign=None, log=log, form_tz=tz,
                           pages=page_count(last - first), legacy=token,
                           rejected=[(r.line, words.rejection(r, lang)) for r in stored.rejections_of(log)],
                           rejected_total=log.summary["rejected"],
                           left_out=words.left_out_lines(log.summary["left_out"], lang),
                           tz_note=tz_note, error=range_note, logs=_logs(),
                           finding=finding(analysis, lang, tz), args=_args())


def _legacy_row(e) -> EventRow:
    return EventRow(e.at, e.campaign, None, e.lead, e.variant, "", e.trigger, e.worker)


def _logs() -> list:
    with db.engine.connect() as conn:
        return stored.listing(conn)
