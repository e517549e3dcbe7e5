"""Replies and bounces (#18): read the mailboxes once (for cron), list what was read."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

import scheduler
from cli.terminal import echo, visible
from core import replies
from models import ReplyKind, db


@click.group("replies")
def replies_group() -> None:
    """Read replies and bounces over IMAP, list them."""


@replies_group.command("read")
@with_appcontext
@click.option("--mailbox", "mailbox_id", type=int, help="Only this mailbox.")
def read_command(mailbox_id: int | None) -> None:
    """One read-only pass over every mailbox with an IMAP host, under the scheduler lease."""
    ticker: scheduler.Ticker = current_app.extensions["sendonce_ticker"]
    try:
        results = ticker.read_replies(mailbox_id)
    finally:
        ticker.release()
    if results is None:
        echo("another process holds the scheduler lease; nothing read")
        return
    if not results:  # a script asking for one mailbox must learn it was not read
        if mailbox_id is not None:
            raise click.ClickException(f"no mailbox {mailbox_id} with an IMAP host; nothing read")
        echo("no mailbox has an IMAP host; nothing read")
        return
    for result in results:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(result.kinds.items())) or "nothing new"
        echo(f"mailbox {result.mailbox_id} ({visible(result.address)}): {kinds}"
             + (f"; not read: {visible(result.error)}" if result.error else "")
             + (f"; PAUSED: {result.paused}" if result.paused else ""))
    failed = [r for r in results if r.error]
    if failed:  # cron's mail should say so: exit 1
        raise click.ClickException(f"{len(failed)} mailbox(es) could not be read")


@replies_group.command("list")
@with_appcontext
@click.option("--campaign", "campaign_id", type=int, help="Only this campaign.")
@click.option("--kind", type=click.Choice([k.value for k in ReplyKind if k != ReplyKind.DUPLICATE]))
@click.option("--limit", type=int, default=50, show_default=True)
def list_command(campaign_id: int | None, kind: str | None, limit: int) -> None:
    """The latest replies and bounces, newest first (tab-separated)."""
    with db.engine.connect() as conn:
        rows = replies.rows(conn, campaign_id, kind, limit=limit)
    for row in rows:
        echo("\t".join(visible(str(value or "-")) for value in (
            row.id, f"{row.received_at:%Y-%m-%d %H:%M}", row.kind, row.mailbox_address, row.from_address,
            row.lead_email, row.campaign_name, row.label, row.snippet[:80].replace("\n", " "))))
    echo(f"{len(rows)} shown")
