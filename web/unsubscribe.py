"""One-click unsubscribe: signed links bound to one address and one campaign.

The token is the only authority here (mail clients POST it without a session or a CSRF
token, RFC 8058), so it is signed with SECRET_KEY (delivery/tokens.py); a tampered token changes nothing.
"""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request

from core.suppressions import suppress
from delivery.tokens import read_token
from models import db
from storage.database import immediate
from storage.timeutil import utcnow

bp = Blueprint("unsubscribe", __name__)


@bp.route("/u/<token>", methods=["GET", "POST"])
def unsubscribe(token: str):
    """GET (and HEAD) show a confirmation page; only POST (the button or a one-click client) unsubscribes."""
    found = read_token(current_app.config["SECRET_KEY"], token)
    if found is None:
        abort(404)
    email, campaign_id = found
    # Only POST changes anything: link scanners and previewers send GET, HEAD and OPTIONS
    # (Flask answers HEAD on every GET route), and none of them is the recipient's choice.
    if request.method != "POST":
        return render_template("unsubscribe.html", email=email, done=False)
    with immediate(db.engine) as conn:
        suppress(conn, email, "unsubscribed", f"campaign {campaign_id}", utcnow())
    return render_template("unsubscribe.html", email=email, done=True)
