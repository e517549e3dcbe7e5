"""Alerts on the dashboard: a person's "Dismiss" (the box itself is part of the dashboard)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from core import alerts
from models import db
from storage.timeutil import utcnow
from web.common import ActionForm

bp = Blueprint("alerts", __name__)


@bp.route("/alerts/<int:alert_id>/dismiss", methods=["POST"])
@login_required
def dismiss(alert_id: int):
    """Close an open alert; a condition that lasts stays quiet until it ends and comes back."""
    if not ActionForm().validate_on_submit():
        abort(400)
    if alerts.dismiss(db.engine, alert_id, current_user.email, utcnow()):
        flash(_("Alert dismissed."), "ok")
    else:
        flash(_("This alert was closed already."), "info")
    return redirect(url_for("views.dashboard"))
