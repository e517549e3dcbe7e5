"""Sending: one tick for cron, the dedicated scheduler, recovery and deciding `unknown` sends."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

import scheduler
from cli.terminal import echo, visible
from core import stats
from models import Trigger, db
from sender import Settings, decidable_at, recover, resolve_unknown
from storage.timeutil import utcnow

# Refusals that concern this process and database as a whole, not one campaign.
GATE = ("schema_mismatch", "maintenance")


@click.command("send-due")
@with_appcontext
@click.option("--campaign", "campaign_id", type=int, help="Only this campaign.")
def send_due(campaign_id: int | None) -> None:
    """One tick, for system cron: same lease and pacing rules as the scheduler.

    First it carries out the "send now" requests people made since the last run, so a
    deployment without a scheduler in any process still answers the button, and reads the
    mailboxes' replies and bounces, so a follow-up to a lead who answered is not claimed.
    """
    ticker: scheduler.Ticker = current_app.extensions["sendonce_ticker"]
    try:
        served = ticker.serve_requests()
        ticker.read_replies()  # before the claims: a reply read now stops its lead's follow-up
        results = ticker.tick(Trigger.CLI, campaign_id)
        ticker.watch()  # cron may be the only ticker: the alerts are checked (and mailed) here too
    finally:
        ticker.release()
    if served:
        echo(f"send-now requests carried out: {served}")
    if results is None:
        echo("another process holds the scheduler lease; nothing sent")
        return
    for cid, batch in results.items():
        echo(f"campaign {cid}: sent {batch.sent}"
             + (f" ({visible(batch.stopped_by)})" if batch.stopped_by else ""))
    refused = {b.stopped_by.detail for b in results.values() if b.stopped_by and b.stopped_by.code in GATE}
    if refused:  # the whole process must not send here: cron's mail should say why, exit 1
        raise click.ClickException("; ".join(sorted(refused)))


@click.command("scheduler")
@with_appcontext
def run_scheduler() -> None:
    """Run a dedicated foreground scheduler until SIGTERM/Ctrl-C."""
    echo(f"scheduler: ticking every {current_app.config['TICK_SECONDS']}s")
    scheduler.run_forever(current_app._get_current_object())


@click.command("recover")
@with_appcontext
def recover_command() -> None:
    """Mark `sending` rows of dead or silent workers `unknown` (never re-sent)."""
    settings = Settings.from_config(current_app.config)
    echo(f"{recover(db.engine, settings, utcnow())} marked unknown")


@click.command("resolve")
@with_appcontext
@click.argument("send_log_id", type=int, required=False)
@click.option("--mark-sent", "action", flag_value="mark-sent")
@click.option("--send-again", "action", flag_value="send-again")
@click.option("--by", "who", default="cli", show_default=True, help="Who decided.")
def resolve_command(send_log_id: int | None, action: str | None, who: str) -> None:
    """List `unknown` sends, or decide one: --mark-sent or --send-again."""
    if send_log_id is None:
        settings, now = Settings.from_config(current_app.config), utcnow()
        rows = stats.unknown_rows(db.session)
        for row in rows:
            until = decidable_at(settings, row.claimed_at, row.beat_at)
            wait = f"\tstill sending: decide after {until:%Y-%m-%d %H:%M:%S} UTC" if until > now else ""
            echo(f"{row.id}\tcampaign {row.campaign_id}\t{visible(row.email)}\t"
                 f"{visible(row.smtp_reply)}{wait}")
        echo(f"{len(rows)} unknown")
        return
    if action is None:
        raise click.UsageError("give --mark-sent or --send-again")
    refusal = resolve_unknown(db.engine, Settings.from_config(current_app.config), send_log_id, action, who)
    if refusal is not None and refusal.code == "still_sending":
        raise click.ClickException(
            f"send {send_log_id}: the sending process may still be working on it (it could still deliver "
            f"it); nothing changed. Decide after {refusal.detail} UTC.")
    if refusal is not None:
        raise click.ClickException(f"send {send_log_id} is not unknown; nothing changed")
    echo(f"send {send_log_id}: {action}")
