"""Admin pages: the dashboard, a campaign's page with its send button, and /healthz."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import format_datetime, ngettext
from flask_babel import gettext as _
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from wtforms import HiddenField

from core import alerts, campaigns, mailboxes, replies, send_requests, stats
from models import Campaign, CampaignStatus, SendLog, db
from sender import Refusal
from storage.timeutil import utcnow
from web.common import ActionForm

bp = Blueprint("views", __name__)
STALLED_AFTER_SECONDS = 10  # a request nobody picked up this long, with no lease holder: say why


def refusal_text(refusal: Refusal) -> str:
    """Why nothing was sent, in the UI language."""
    reasons = {
        "not_active": _("the campaign is not active"),
        "daily_cap": _("the daily cap is reached (%(detail)s)", detail=refusal.detail),
        "nothing_due": _("no lead is due now (%(detail)s)", detail=refusal.detail),
        "finished": _("the campaign is finished: every lead has been handled"),
        "already_pressed": _("this click was handled already"),
        "not_due": _("next send is due at %(detail)s", detail=refusal.detail),
        "outside_window": _("outside the send window (%(detail)s)", detail=refusal.detail),
        "lease_lost": _("another process took over sending"),
        "schema_mismatch": _("this program and the database schema differ (%(detail)s)",
                             detail=refusal.detail),
        "maintenance": _("a restore is in progress (%(detail)s)", detail=refusal.detail),
        "mailbox_limit": _("every mailbox of the campaign is at its daily cap or waiting out its gap "
                           "(%(detail)s)", detail=refusal.detail),
        "mailboxes_paused": _("every mailbox of the campaign is paused"),
    }
    return reasons.get(refusal.code, str(refusal))


@bp.app_template_global()
def utc_time(value: datetime | None) -> str:
    """A stored (UTC) time as the pages show it, to the second; "—" when there is none."""
    # isoformat, not strftime: the same text, a third of the cost, 50 times a page.
    return value.isoformat(" ", "seconds") if value else "—"


@bp.app_template_global()
def zoned_time(value: datetime | None, zone: str, exact: bool = False) -> str:
    """A stored (UTC) time in a campaign's zone, labelled with it: "pon. 30.11 09:00 (Europe/Warsaw)".

    exact: to the second, with the year, for logs ("2026-11-30 09:00:07 (Europe/Warsaw)").
    """
    if value is None:
        return "—"
    local = value.replace(tzinfo=UTC).astimezone(ZoneInfo(zone))
    if exact:
        return f"{local:%Y-%m-%d %H:%M:%S} ({zone})"
    return f"{format_datetime(local, 'EEE d.MM HH:mm', rebase=False)} ({zone})"


@bp.app_template_global()
def waiting_text(progress: stats.Progress) -> str:
    """How many leads got an earlier step of the sequence and wait for the next, in words."""
    return ngettext("%(num)d waiting for the next step", "%(num)d waiting for the next step",
                    progress.waiting)


@bp.app_template_global()
def next_send_text(progress: stats.Progress, campaign: Campaign, scheduler_fresh: bool = True) -> str:
    """When the next automatic send happens, and why not sooner, in the UI language."""
    upcoming = progress.next_send
    if upcoming is None or upcoming.why == "not_active":
        return "—"
    if upcoming.why == "paused":
        return _("Paused — nothing is sent until the campaign is resumed")
    if upcoming.why == "mailboxes_paused":
        return _("Every mailbox of the campaign is paused — nothing is sent until one is resumed")
    if not scheduler_fresh:
        return _("The scheduler is not running — nothing is sent automatically")
    if upcoming.at is None:
        return _("The send window has no hours on any day — nothing is sent automatically")
    at = zoned_time(upcoming.at, campaign.timezone)
    if upcoming.why == "outside_window":
        return _("Outside the send window — next send %(at)s", at=at)
    if upcoming.why == "daily_cap":
        return _("Daily cap reached — next send %(at)s", at=at)
    if upcoming.why == "mailbox_limit":
        return _("Mailboxes at their limit — next send %(at)s", at=at)
    if upcoming.at <= utcnow():
        return _("now (at the scheduler's next tick)")
    return at


class SendForm(FlaskForm):
    # One-time key: a double click sends one batch, not two. The label is never shown, but
    # without one WTForms translates a default, and Flask-WTF re-reads WTForms' catalog
    # from disk for that on every request (~1 ms of the campaign page).
    key = HiddenField(label="key")


@bp.route("/")
@login_required
def dashboard():
    """Every campaign with its progress, the scheduler's state in one line, and the open alerts."""
    archived = request.args.get("archived") == "1"
    shown = (Campaign.status == CampaignStatus.ARCHIVED) if archived else (
        Campaign.status != CampaignStatus.ARCHIVED)
    all_campaigns = db.session.scalars(select(Campaign).where(shown).order_by(Campaign.id.desc())).all()
    opened = [alerts.describe(row) for row in alerts.open_alerts(db.session.connection())]
    return render_template("dashboard.html", campaigns=all_campaigns, archived=archived,
                           progress=stats.progress(db.session, all_campaigns),
                           mailboxes=_capacity(),
                           scheduler=stats.scheduler_state(db.session), alerts=opened, action=ActionForm())


def _capacity() -> list[mailboxes.Usage]:
    """Each mailbox's sends left today; no query beyond one look when there is no mailbox."""
    conn = db.session.connection()
    return mailboxes.overview(conn) if mailboxes.listing(conn) else []


@bp.route("/status.json")
@login_required
def status_json():
    """What the dashboard's live refresh polls: progress and the scheduler line."""
    all_campaigns = db.session.scalars(select(Campaign)).all()
    progress = stats.progress(db.session, all_campaigns)
    scheduler = stats.scheduler_state(db.session)
    return jsonify(scheduler=scheduler.as_json(), campaigns={
        c.id: {"status": c.status, "percent": progress[c.id].done_percent, **{
            k: getattr(progress[c.id], k) for k in ("total", "sent", "failed", "unknown", "skipped",
                                                     "stopped", "pending", "waiting", "sending")},
               # The texts as the pages show them, so the live refresh moves words, not only bars.
               "sent_text": _("%(sent)d of %(total)d sent", sent=progress[c.id].sent,
                              total=progress[c.id].total),
               "waiting_text": waiting_text(progress[c.id]),
               "last_sent": zoned_time(progress[c.id].last_sent_at, c.timezone),
               "next_send": next_send_text(progress[c.id], c, scheduler.fresh)}
        for c in all_campaigns})


@bp.route("/campaigns/<int:campaign_id>")
@login_required
def campaign(campaign_id: int):
    """One campaign: settings, progress, recent sends, the send button and its request's progress."""
    found = db.session.get(Campaign, campaign_id) or abort(404)
    recent = stats.send_rows(db.session, (SendLog.campaign_id == campaign_id,), 20)
    scheduler = stats.scheduler_state(db.session)
    counts = stats.send_counts(db.session.connection(), campaign_id)  # the A/B table's and the rates'
    return render_template("campaign.html", campaign=found, scheduler=scheduler,
                           progress=stats.progress(db.session, [found])[campaign_id],
                           recent=recent, send_form=SendForm(key=secrets.token_hex(16)),
                           results=stats.variant_results(db.session, campaign_id, counts),
                           rates=replies.rates(db.session.connection(), campaign_id, counts),
                           send_request=_shown_request(found, scheduler.fresh),
                           action=ActionForm(), active=found.status == CampaignStatus.ACTIVE,
                           **_mailboxes_of(campaign_id))


def _mailboxes_of(campaign_id: int) -> dict:
    """The campaign's mailboxes (its From), and its leads waiting for a paused one with where they may go."""
    conn = db.session.connection()
    every = mailboxes.listing(conn)
    linked = set(mailboxes.of_campaign(conn, campaign_id))
    # Counting the leads pinned to a paused mailbox reads enrollments: only when one is paused.
    paused = any(m.status == "paused" for m in every)
    return {"senders": [m for m in every if m.id in linked], "any_mailbox": bool(every),
            "targets": [m for m in every if m.status == "active"],
            "stranded": mailboxes.stranded(conn, campaign_id) if paused else []}


def _shown_request(found: Campaign, scheduler_fresh: bool) -> dict | None:
    """The request named in the URL (after a click), else the campaign's newest unfinished one."""
    conn = db.session.connection()
    request_id = request.args.get("request", type=int) or send_requests.latest_open(conn, found.id)
    shown = send_requests.progress(conn, request_id) if request_id else None
    if shown is None or shown["campaign_id"] != found.id:
        return None
    return _with_texts(shown, found, scheduler_fresh)


def _with_texts(shown: dict, found: Campaign, scheduler_fresh: bool) -> dict:
    """A request's progress with what the page says about it, in the UI language."""
    state, sent = shown["state"], shown["sent"]
    if state == "waiting":
        text = _("Waiting for the sending process…")
    elif state == "sending":
        text = _("Sending: %(sent)d of %(total)d", sent=sent, total=shown["batch_size"])
    else:
        text = _("Done: %(sent)d sent", sent=sent)
    waited = (utcnow() - shown["created_at"]).total_seconds()
    # No holder and nobody picked it up for a while: nothing will, until a process starts.
    stalled = state == "waiting" and waited >= STALLED_AFTER_SECONDS and not scheduler_fresh
    return {**shown, "text": text, "detail": _outcome_text(shown), "stalled": stalled}


def _outcome_text(shown: dict) -> str:
    outcome = shown["outcome"]
    if shown["state"] != "done" or not outcome:
        return ""
    if outcome == send_requests.INTERRUPTED:
        return _("The sending process stopped in the middle of this batch. Nothing is sent twice: "
                 "a message it may have been sending is listed as unknown for you to decide.")
    code, _sep, detail = outcome.partition(": ")
    reason = refusal_text(Refusal(code, detail))
    if shown["sent"]:
        return _("The batch ended early: %(reason)s", reason=reason)
    return _("Nothing to send: %(reason)s", reason=reason)


@bp.route("/campaigns/<int:campaign_id>/send", methods=["POST"])
@login_required
def send_now(campaign_id: int):
    """"Wyślij kampanię": record a request for the next batch; the sending process carries it out.

    Nothing is sent in the web worker (gunicorn may kill it mid-send). The form's one-time
    key is the request's key: a double click, a replayed POST or two tabs record one request.
    """
    form = SendForm()
    if not form.validate_on_submit() or not form.key.data or len(form.key.data) > 64:
        abort(400)
    db.session.get(Campaign, campaign_id) or abort(404)
    request_id = send_requests.record(db.engine, campaign_id, form.key.data, current_user.email, utcnow())
    wake = current_app.extensions.get("sendonce_wake")
    if wake is not None:  # this process runs a scheduler: serve now rather than at the next poll
        wake()
    return redirect(url_for("views.campaign", campaign_id=campaign_id, request=request_id))


@bp.route("/campaigns/<int:campaign_id>/requests/<int:request_id>.json")
@login_required
def request_json(campaign_id: int, request_id: int):
    """What the campaign page polls while a "send now" request is carried out."""
    found = db.session.get(Campaign, campaign_id) or abort(404)
    shown = send_requests.progress(db.session.connection(), request_id)
    if shown is None or shown["campaign_id"] != campaign_id:
        abort(404)
    shown = _with_texts(shown, found, stats.scheduler_state(db.session).fresh)
    return jsonify(
        state=shown["state"], sent=shown["sent"], batch_size=shown["batch_size"], text=shown["text"],
        detail=shown["detail"], stalled=shown["stalled"],
        rows=[{"email": r["email"], "status": r["status"], "at": zoned_time(r["at"], found.timezone, True)}
              for r in shown["rows"]],
        html=render_template("_send_request.html", send_request=shown, campaign=found))


@bp.route("/campaigns/<int:campaign_id>/<any(pause, resume):action>", methods=["POST"])
@login_required
def change_status(campaign_id: int, action: str):
    """Pause or resume (resume validates the templates again)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        getattr(campaigns, action)(db.engine, campaign_id)
        flash(_("Campaign paused.") if action == "pause" else _("Campaign resumed."), "ok")
    except campaigns.CampaignError as exc:
        flash(str(exc), "error")
    return redirect(url_for("views.campaign", campaign_id=campaign_id))


@bp.route("/healthz")
def healthz():
    """No login: database reachable? scheduler lease state? schema revision and last backup's
    age (README: Operations)? 503 if the database is not reachable."""
    try:
        db.session.execute(text("SELECT 1"))
        state = stats.scheduler_state(db.session)
        upkeep = stats.operations_state(db.session, utcnow())
    except SQLAlchemyError:
        return jsonify(database="error"), 503
    scheduler = state.as_json()
    if not current_user.is_authenticated:
        scheduler.pop("holder")  # host name and pid: for the team, not for anyone on the network
    return jsonify(database="ok", scheduler=scheduler, **upkeep)
