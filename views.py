"""Admin pages: the dashboard, a campaign's page with its send button, and /healthz."""

from __future__ import annotations

import secrets

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, url_for
from flask_login import login_required
from flask_wtf import FlaskForm
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from wtforms import HiddenField

import campaigns
import lease as leases
from models import Campaign, CampaignLead, CampaignStatus, SendLog, Trigger, db
from sender import Settings, send_batch
from timeutil import utcnow
from transport import make_transport

bp = Blueprint("views", __name__)

REFUSALS = {
    "not_active": "kampania nie jest aktywna",
    "daily_cap": "osiągnięto dzienny limit",
    "nothing_due": "brak leadów do wysłania teraz",
    "finished": "kampania zakończona — wszyscy leadzi obsłużeni",
    "already_pressed": "to kliknięcie zostało już obsłużone",
}


class SendForm(FlaskForm):
    key = HiddenField()  # one-time key: a double click sends one batch, not two


class ActionForm(FlaskForm):
    pass


def _counts(campaign_id: int) -> dict[str, int]:
    rows = db.session.execute(select(CampaignLead.state, func.count())
                              .where(CampaignLead.campaign_id == campaign_id)
                              .group_by(CampaignLead.state)).all()
    counts = dict(rows)
    counts["total"] = sum(counts.values())
    return counts


def _lease_state() -> dict:
    row = leases.current(db.engine)
    if row is None or not row.holder:
        return {"holder": None, "epoch": row.epoch if row else 0, "fresh": False, "heartbeat_at": None}
    return {"holder": row.holder, "epoch": row.epoch, "heartbeat_at": row.heartbeat_at,
            "fresh": row.expires_at > utcnow()}


@bp.route("/")
@login_required
def dashboard():
    """Every campaign with its progress, and the scheduler's state in one line."""
    all_campaigns = db.session.scalars(select(Campaign).order_by(Campaign.id.desc())).all()
    return render_template("dashboard.html", campaigns=all_campaigns,
                           counts={c.id: _counts(c.id) for c in all_campaigns},
                           lease=_lease_state(), action=ActionForm())


@bp.route("/campaigns/<int:campaign_id>")
@login_required
def campaign(campaign_id: int):
    """One campaign: settings, progress, recent sends and the send button."""
    found = db.session.get(Campaign, campaign_id) or abort(404)
    recent = db.session.scalars(select(SendLog).where(SendLog.campaign_id == campaign_id)
                                .order_by(SendLog.id.desc()).limit(50)).all()
    return render_template("campaign.html", campaign=found, counts=_counts(campaign_id),
                           recent=recent, send_form=SendForm(key=secrets.token_hex(16)),
                           action=ActionForm(), active=found.status == CampaignStatus.ACTIVE)


@bp.route("/campaigns/<int:campaign_id>/send", methods=["POST"])
@login_required
def send_now(campaign_id: int):
    """"Wyślij kampanię": the next batch now, through the same claim path as the scheduler."""
    form = SendForm()
    if not form.validate_on_submit() or not form.key.data:
        abort(400)
    transport = make_transport(current_app.config)
    try:
        batch = send_batch(db.engine, Settings.from_config(current_app.config), transport,
                           campaign_id, Trigger.BUTTON, once_key=form.key.data)
    finally:
        transport.close()
    if batch.outcomes:
        flash(f"Wysłano {batch.sent} z {len(batch.outcomes)} wiadomości.", "ok")
    else:
        reason = batch.stopped_by
        flash("Nic do wysłania: " + REFUSALS.get(reason.code, str(reason)), "info")
    return redirect(url_for("views.campaign", campaign_id=campaign_id))


@bp.route("/campaigns/<int:campaign_id>/<any(pause, resume):action>", methods=["POST"])
@login_required
def change_status(campaign_id: int, action: str):
    """Pause or resume (resume validates the templates again)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        getattr(campaigns, action)(db.engine, campaign_id)
        flash("Kampania wstrzymana." if action == "pause" else "Kampania wznowiona.", "ok")
    except campaigns.CampaignError as exc:
        flash(str(exc), "error")
    return redirect(url_for("views.campaign", campaign_id=campaign_id))


@bp.route("/healthz")
def healthz():
    """No login: database reachable? scheduler lease state? 503 if the database is not."""
    try:
        db.session.execute(text("SELECT 1"))
        state = _lease_state()
    except SQLAlchemyError:
        return jsonify(database="error"), 503
    return jsonify(database="ok", scheduler={
        "holder": state["holder"], "epoch": state["epoch"], "fresh": state["fresh"],
        "heartbeat_at": state["heartbeat_at"].isoformat() if state["heartbeat_at"] else None})
