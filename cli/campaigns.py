"""Leads and campaigns: import leads, create, fill, start, pause and inspect campaigns."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import func, select

from cli.mailboxes import refused
from cli.terminal import echo, visible
from core import campaigns, importer, leads, mailboxes
from models import Campaign, CampaignLead, db


@click.command("import-leads")
@with_appcontext
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--campaign", "campaign_id", type=int, help="Also enroll the leads here.")
def import_leads(path: Path, campaign_id: int | None) -> None:
    """Import leads from a CSV file (header row with an email column)."""
    try:
        report = importer.run_import(db.engine, path.read_bytes())
    except importer.CsvImportError as exc:  # unreadable as a whole: exit 1, so scripts stop here
        raise click.ClickException(f"{path}: {exc}; nothing was imported") from exc
    for line, reason in report.rejected:
        echo(f"line {line}: {visible(reason)}", err=True)
    echo(f"imported {report.imported}, merged {report.merged}, rejected {len(report.rejected)}")
    if not report.lead_ids:  # every row rejected (or none there): a script must not go on
        raise click.ClickException(f"{path}: no lead was imported")
    if campaign_id is not None:
        added = leads.enroll(db.engine, campaign_id, report.lead_ids)
        echo(f"enrolled {added} new in campaign {campaign_id}")


@click.group("campaign")
def campaign_group() -> None:
    """Create, fill, start, pause and inspect campaigns."""


@campaign_group.command("create")
@with_appcontext
@click.option("--name", required=True)
@click.option("--from", "from_address", help="Sender address (default MAIL_FROM).")
@click.option("--from-name", default="")
@click.option("--interval", type=click.IntRange(min=0), default=300, show_default=True,
              help="Seconds between two claims of this campaign by the scheduler or send-due: at most "
                   "one message per interval (also bounded by TICK_SECONDS: one batch per tick).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Messages the send button sends per click, and the most a tick may send; "
                   "with an interval above the tick time a tick still sends one, so it only "
                   "raises throughput when --interval is near 0.")
@click.option("--daily-cap", type=click.IntRange(min=1), default=None)
@click.option("--weekdays", default="0,1,2,3,4,5,6", show_default=True, help="0=Monday.")
@click.option("--hours", default="0-24", show_default=True, help="Send window, e.g. 9-17.")
@click.option("--timezone", default="Europe/Warsaw", show_default=True)
@click.option("--mailbox", "mailbox_refs", multiple=True, metavar="ADDRESS_OR_ID",
              help="Send through this mailbox (repeat for several); without any, through the "
                   "configured MAIL_BACKEND / SMTP_*. --from defaults to the first one's address.")
def campaign_create(name: str, from_address: str | None, from_name: str, interval: int,
                    batch_size: int, daily_cap: int | None, weekdays: str, hours: str,
                    timezone: str, mailbox_refs: tuple[str, ...]) -> None:
    """Create a draft campaign and print its id."""
    start, _, end = hours.partition("-")
    try:  # every mailbox named must exist before anything is created
        with db.engine.connect() as conn:
            mailbox_ids = [mailboxes.find(conn, ref) for ref in mailbox_refs]
            first = mailboxes.get(conn, mailbox_ids[0]).address if mailbox_ids else None
    except mailboxes.MailboxError as exc:
        raise refused(exc) from exc
    campaign_id = campaigns.create(
        db.engine, name=name, from_address=from_address or first or current_app.config["MAIL_FROM"],
        from_name=from_name, interval_seconds=interval, batch_size=batch_size,
        daily_cap=daily_cap, window_weekdays=weekdays, window_start_hour=int(start),
        window_end_hour=int(end or 24), timezone=timezone)
    if mailbox_ids:
        mailboxes.link(db.engine, campaign_id, mailbox_ids)
    echo(campaign_id)


@campaign_group.command("variant")
@with_appcontext
@click.argument("campaign_id", type=int)
@click.argument("letter")
@click.option("--subject", required=True)
@click.option("--body", help="Body template text.")
@click.option("--body-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--weight", type=click.IntRange(min=0), default=1, show_default=True)
def campaign_variant(campaign_id: int, letter: str, subject: str, body: str | None,
                     body_file: Path | None, weight: int) -> None:
    """Add variant LETTER (subject and body are Jinja templates)."""
    if (body is None) == (body_file is None):
        raise click.UsageError("give exactly one of --body and --body-file")
    text = body if body is not None else body_file.read_text(encoding="utf-8")
    try:
        campaigns.add_variant(db.engine, campaign_id, letter, subject, text, weight)
    except campaigns.CampaignError as exc:
        raise click.ClickException(str(exc)) from exc


@campaign_group.command("enroll")
@with_appcontext
@click.argument("campaign_id", type=int)
@click.option("--all", "all_leads", is_flag=True, help="Every lead in the database.")
@click.option("--tag", help="Leads carrying this tag.")
def campaign_enroll(campaign_id: int, all_leads: bool, tag: str | None) -> None:
    """Enroll leads in a campaign (each lead at most once)."""
    if not all_leads and not tag:
        raise click.UsageError("give --all or --tag")
    try:
        added, matched = campaigns.enroll_leads(db.engine, campaign_id, tag)
    except campaigns.CampaignError as exc:
        raise click.ClickException(str(exc)) from exc
    if not matched:
        raise click.ClickException(f"no lead carries tag {tag!r}; nothing enrolled" if tag else
                                   "there are no leads; nothing enrolled")
    echo(f"enrolled {added} new ({matched - added} were enrolled already)")


def _status_command(name: str, action, doc: str):
    @campaign_group.command(name, help=doc)
    @with_appcontext
    @click.argument("campaign_id", type=int)
    def command(campaign_id: int) -> None:
        try:
            action(db.engine, campaign_id)
        except campaigns.CampaignError as exc:
            raise click.ClickException(str(exc)) from exc
        echo(f"campaign {campaign_id}: {name} done")

    return command


_status_command("start", campaigns.start, "Validate every template, then start sending.")
_status_command("pause", campaigns.pause, "Stop claiming new messages.")
_status_command("resume", campaigns.resume, "Validate again and resume sending.")


@campaign_group.command("show")
@with_appcontext
@click.argument("campaign_id", type=int)
def campaign_show(campaign_id: int) -> None:
    """Print a campaign's settings and its enrollments by state."""
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        raise click.ClickException(f"no campaign {campaign_id}")
    echo(f"#{campaign.id} {visible(campaign.name)} [{campaign.status}]"
         + (f" — {visible(campaign.pause_reason)}" if campaign.pause_reason else ""))
    echo(f"  from {visible(campaign.from_address)}, every {campaign.interval_seconds}s, "
         f"batch {campaign.batch_size}, cap {campaign.daily_cap or '-'}")
    for v in campaign.variants:
        echo(f"  variant {v.letter} (weight {v.weight}): {visible(v.subject)}")
    states = db.session.execute(
        select(CampaignLead.state, func.count()).where(CampaignLead.campaign_id == campaign_id)
        .group_by(CampaignLead.state)).all()
    echo("  " + ", ".join(f"{state}: {n}" for state, n in states) if states else "  no leads")
