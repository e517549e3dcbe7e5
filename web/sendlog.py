"""The send log of a campaign, filterable, and the decisions on `unknown` sends."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy import func, select

from core import stats
from models import Campaign, SendLog, SendStatus, Trigger, db
from sender import Settings, decidable_at, resolve_unknown
from storage.timeutil import utcnow
from web.common import PAGE_SIZE, ActionForm, link_args, page_arg, page_count

bp = Blueprint("sendlog", __name__)
FILTERS = ("status", "variant", "trigger", "from", "to")  # the query keys this page reads
ACTIONS = ("mark-sent", "send-again")


@bp.app_context_processor
def _decisions() -> dict:
    def decide_after(row) -> datetime | None:
        """When a person may decide this `unknown` row, if not yet (its process may still
        be sending it); None when they may decide now."""
        at = decidable_at(Settings.from_config(current_app.config), row.claimed_at, row.beat_at)
        return at if at > utcnow() else None

    return {"decide_after": decide_after}


def _parse_time(value: str | None, zone: str) -> datetime | None:
    """A filter's local time (typed in the campaign's zone) as the stored UTC."""
    try:
        local = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    if local is None:
        return None
    return local.replace(tzinfo=local.tzinfo or ZoneInfo(zone)).astimezone(UTC).replace(tzinfo=None)


def _filtered(campaign: Campaign, args) -> tuple:
    conditions = [SendLog.campaign_id == campaign.id]
    if args.get("status") in set(SendStatus):
        conditions.append(SendLog.status == args["status"])
    if args.get("trigger") in set(Trigger):
        conditions.append(SendLog.trigger == args["trigger"])
    if args.get("variant"):
        conditions.append(SendLog.variant_letter == args["variant"].upper())
    if start := _parse_time(args.get("from"), campaign.timezone):
        conditions.append(SendLog.claimed_at >= start)
    if end := _parse_time(args.get("to"), campaign.timezone):
        conditions.append(SendLog.claimed_at < end)
    return tuple(conditions)


@bp.route("/campaigns/<int:campaign_id>/log")
@login_required
def index(campaign_id: int):
    """Every delivery row of a campaign, newest first, filtered by status/variant/trigger/time."""
    campaign = db.session.get(Campaign, campaign_id) or abort(404)
    conditions = _filtered(campaign, request.args)
    page = page_arg()
    total = db.session.scalar(select(func.count()).select_from(SendLog).where(*conditions))
    rows = stats.send_rows(db.session, conditions, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    return render_template("sendlog.html", campaign=campaign, rows=rows, total=total, page=page,
                           pages=page_count(total), args=request.args,
                           filters=link_args(FILTERS),
                           statuses=list(SendStatus), triggers=list(Trigger))


@bp.route("/sends/<int:send_log_id>/resolve", methods=["GET", "POST"])
@login_required
def resolve(send_log_id: int):
    """GET asks for confirmation; POST records the decision and who made it."""
    row = db.session.get(SendLog, send_log_id) or abort(404)
    action = request.values.get("action")
    if action not in ACTIONS:
        abort(400)
    form = ActionForm()
    if request.method != "POST" or not form.validate_on_submit():
        if request.method == "POST":
            abort(400)
        return render_template("resolve.html", row=row, action=action, form=form)
    refusal = resolve_unknown(db.engine, Settings.from_config(current_app.config), send_log_id, action,
                              current_user.email)
    if refusal is None:
        flash(_("Marked as sent.") if action == "mark-sent" else
              _("Queued to be sent again with the next batch."), "ok")
    elif refusal.code == "still_sending":
        flash(_("The sending process may still be working on this message and could still deliver it: "
                "nothing changed. Decide after %(at)s UTC.", at=refusal.detail), "error")
    else:
        flash(_("This send is no longer unknown; nothing changed."), "error")
    return redirect(url_for("sendlog.index", campaign_id=row.campaign_id, status="unknown"))
