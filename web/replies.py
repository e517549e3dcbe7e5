"""Odpowiedzi / Replies (#18): what the mailboxes received, matched to leads and campaigns.

Mail is hostile: only the stored plain-text snippet is shown (HTML was converted to text
when read, the quoted thread cut), escaped by Jinja like every other value; no raw HTML,
no remote content.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_required
from sqlalchemy import select

from core import replies
from models import Campaign, ReplyKind, db
from web.common import PAGE_SIZE, ActionForm, page_arg, page_count

bp = Blueprint("replies", __name__)

KINDS = {ReplyKind.REPLY: _l("reply"), ReplyKind.AUTO_REPLY: _l("auto-reply"),
         ReplyKind.BOUNCE_HARD: _l("bounce (permanent)"), ReplyKind.BOUNCE_SOFT: _l("bounce (temporary)"),
         ReplyKind.UNSUBSCRIBE: _l("unsubscribe request"), ReplyKind.UNMATCHED: _l("unmatched"),
         ReplyKind.OTHER: _l("other")}
LABELS = {"interested": _l("interested"), "not_interested": _l("not interested"),
          "not_a_reply": _l("not a reply")}


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if value.isdigit() and len(value) < 10 else None


@bp.route("/replies")
@login_required
def index():
    """Replies and bounces, newest first; ?campaign= adds that campaign's rates per variant."""
    campaign_id = _int_arg("campaign")
    kind = request.args.get("kind", "")
    kind = kind if kind in KINDS else None
    page = page_arg()
    with db.engine.connect() as conn:
        found = replies.rows(conn, campaign_id, kind, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        total = replies.count(conn, campaign_id, kind)
        rates = replies.rates(conn, campaign_id) if campaign_id is not None else []
    campaigns = db.session.execute(select(Campaign.id, Campaign.name).order_by(Campaign.id.desc())).all()
    return render_template("replies.html", rows=found, total=total, page=page, pages=page_count(total),
                           campaign_id=campaign_id, kind=kind or "", kinds=KINDS, labels=LABELS,
                           rates=rates, campaigns=campaigns, form=ActionForm())


@bp.route("/replies/<int:inbound_id>/label", methods=["POST"])
@login_required
def label(inbound_id: int):
    """A person's judgement of one message: interested, not interested, not a reply (or none)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    value = request.form.get("label", "")
    if value and value not in LABELS:
        abort(400)
    if not replies.set_label(db.engine, inbound_id, value or None, current_user.email):
        abort(404)
    flash(_("Saved."), "ok")
    return redirect(request.form.get("back", "") if request.form.get("back", "").startswith("/replies")
                    else url_for("replies.index"))
