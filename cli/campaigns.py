"""Leads and campaigns: import leads, create, fill, start, pause and inspect campaigns."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from cli.mailboxes import refused
from cli.terminal import echo, visible
from core import campaigns, importer, leads, mailboxes, sequences
from core.suppressions import suppress_domain
from models import Campaign, CampaignStateCount, Lead, db
from storage.database import immediate
from storage.timeutil import utcnow

SHOWN_ELSEWHERE = 20  # leads active in another campaign listed by enroll; the rest are counted


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
@click.option("--skip-active-elsewhere", is_flag=True,
              help="Leave out leads waiting for or being sent a message of another campaign.")
def campaign_enroll(campaign_id: int, all_leads: bool, tag: str | None, skip_active_elsewhere: bool) -> None:
    """Enroll leads in a campaign (each lead at most once); warns about leads active in another campaign."""
    if not all_leads and not tag:
        raise click.UsageError("give --all or --tag")
    count, elsewhere = sequences.active_elsewhere(db.engine, campaign_id, tag,
                                                  limit=None if skip_active_elsewhere else SHOWN_ELSEWHERE)
    if count:
        echo(f"warning: {count} of these leads are active in another campaign"
             + ("; skipped (--skip-active-elsewhere)" if skip_active_elsewhere else
                "; enrolled anyway (leave them out with --skip-active-elsewhere)"), err=True)
        for item in elsewhere[:SHOWN_ELSEWHERE]:
            echo(f"  {visible(item.email)} in campaign {item.campaign_id} {visible(item.campaign_name)}",
                 err=True)
    skip = {item.lead_id for item in elsewhere} if skip_active_elsewhere else set()
    try:
        added, matched = campaigns.enroll_leads(db.engine, campaign_id, tag, skip=skip)
    except campaigns.CampaignError as exc:
        raise click.ClickException(str(exc)) from exc
    if not matched and skip:
        echo(f"enrolled 0 new (all {len(skip)} matching leads are active elsewhere)")
        return
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
    """Print a campaign's settings and its enrollments by state (`waiting`: for a later step)."""
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        raise click.ClickException(f"no campaign {campaign_id}")
    echo(f"#{campaign.id} {visible(campaign.name)} [{campaign.status}]"
         + (f" — {visible(campaign.pause_reason)}" if campaign.pause_reason else ""))
    echo(f"  from {visible(campaign.from_address)}, every {campaign.interval_seconds}s, "
         f"batch {campaign.batch_size}, cap {campaign.daily_cap or '-'}")
    for v in campaign.variants:
        echo(f"  variant {v.letter} (weight {v.weight}): {visible(v.subject)}")
    with db.engine.connect() as conn:
        for step in sequences.steps(conn, campaign_id):
            echo("  " + step_line(step))
            for v in step.variants if step.position > 1 else ():
                echo(f"    variant {v.letter} (weight {v.weight}): {visible(v.subject)}")
    # By counted state: `waiting` (pending at a later step) apart from `pending` (not contacted yet).
    states = db.session.execute(
        select(CampaignStateCount.state, CampaignStateCount.n).where(
            CampaignStateCount.campaign_id == campaign_id, CampaignStateCount.n != 0)
        .order_by(CampaignStateCount.state)).all()
    echo("  " + ", ".join(f"{state}: {n}" for state, n in states) if states else "  no leads")


def step_line(step: sequences.StepView) -> str:
    """One line about a step: its delay, thread, and how many leads are where."""
    delay = "at once" if step.position == 1 else (
        f"{step.delay_amount} {step.delay_unit}" + (" (business days)" if step.business_days else "")
        + " after")
    thread = "" if step.position == 1 else (", new thread" if step.new_thread else ", same thread")
    counts = ", ".join(f"{name} {n}" for name, n in step.counts.items())
    return f"step {step.position}: {delay}{thread}{' [archived]' if step.archived else ''} — {counts}"


@campaign_group.group("step")
def step_group() -> None:
    """The campaign's sequence: follow-up steps with delays."""


def _fail(exc: campaigns.CampaignError) -> click.ClickException:
    return click.ClickException(str(exc))


@step_group.command("add")
@with_appcontext
@click.argument("campaign_id", type=int)
@click.option("--after", "after", required=True,
              help="Delay after the previous step: 3d (days) or 36h (hours).")
@click.option("--business-days", is_flag=True,
              help="Count only the campaign's sending weekdays that are not public holidays of its country.")
@click.option("--new-thread", is_flag=True, help="A new e-mail thread instead of a reply to step 1.")
@click.option("--subject", required=True,
              help="Subject template (a reply in the same thread uses Re: + step 1's instead).")
@click.option("--body", help="Body template text.")
@click.option("--body-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--variant", "letter", default="A", show_default=True, help="The step's first variant letter.")
@click.option("--weight", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--reopen", is_flag=True, help="Confirm reopening a finished campaign for the new step.")
def step_add(campaign_id: int, after: str, business_days: bool, new_thread: bool, subject: str,
             body: str | None, body_file: Path | None, letter: str, weight: int, reopen: bool) -> None:
    """Append a step to CAMPAIGN_ID's sequence; prints its number."""
    text = _body(body, body_file)
    try:
        amount, unit = sequences.parse_delay(after)
        added = sequences.add_step(db.engine, campaign_id, amount=amount, unit=unit,
                                   business_days=business_days, new_thread=new_thread, subject=subject,
                                   body=text, letter=letter, weight=weight, reopen=reopen, now=utcnow())
    except campaigns.CampaignError as exc:
        raise _fail(exc) from exc
    if added.reopened:
        echo(f"campaign {campaign_id} reopened: {added.reopened} leads will get step {added.position}",
             err=True)
    echo(added.position)


def _body(body: str | None, body_file: Path | None) -> str:
    if (body is None) == (body_file is None):
        raise click.UsageError("give exactly one of --body and --body-file")
    return body if body is not None else body_file.read_text(encoding="utf-8")


@step_group.command("variant")
@with_appcontext
@click.argument("campaign_id", type=int)
@click.argument("step", type=click.IntRange(min=2))
@click.argument("letter")
@click.option("--subject", required=True)
@click.option("--body", help="Body template text.")
@click.option("--body-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--weight", type=click.IntRange(min=0), default=1, show_default=True)
def step_variant(campaign_id: int, step: int, letter: str, subject: str, body: str | None,
                 body_file: Path | None, weight: int) -> None:
    """Add or replace variant LETTER of STEP (2 or later; step 1's: `campaign variant`)."""
    try:
        sequences.set_step_variant(db.engine, campaign_id, step, letter, subject, _body(body, body_file),
                                   weight)
    except campaigns.CampaignError as exc:
        raise _fail(exc) from exc


@step_group.command("archive")
@with_appcontext
@click.argument("campaign_id", type=int)
@click.argument("step", type=int)
def step_archive(campaign_id: int, step: int) -> None:
    """Skip STEP from now on; leads waiting for it move to the next step."""
    try:
        moved = sequences.archive_step(db.engine, campaign_id, step, utcnow())
    except campaigns.CampaignError as exc:
        raise _fail(exc) from exc
    echo(f"step {step} archived; {moved} waiting leads moved on")


@step_group.command("remove")
@with_appcontext
@click.argument("campaign_id", type=int)
@click.argument("step", type=int)
def step_remove(campaign_id: int, step: int) -> None:
    """Delete STEP; refused once any lead got it (archive it instead)."""
    try:
        sequences.remove_step(db.engine, campaign_id, step)
    except campaigns.CampaignError as exc:
        raise _fail(exc) from exc
    echo(f"step {step} removed")


@campaign_group.command("stop")
@with_appcontext
@click.argument("campaign")
@click.argument("lead_email")
@click.option("--reason", default="person", show_default=True, help="Recorded as the stop reason.")
def campaign_stop(campaign: str, lead_email: str, reason: str) -> None:
    """Stop LEAD_EMAIL's sequence in CAMPAIGN (an id, or "all" for every campaign)."""
    if campaign != "all" and not campaign.isdigit():
        raise click.UsageError("CAMPAIGN is a campaign id or all")
    lead_id = db.session.scalar(select(Lead.id).where(Lead.email == leads.normalize_email(lead_email)))
    if lead_id is None:
        raise click.ClickException(f"no lead {lead_email!r}")
    stopped = sequences.stop(db.engine, None if campaign == "all" else int(campaign), lead_id,
                             reason.strip()[:50] or "person", utcnow())
    echo(f"stopped {stopped} enrollment(s) of {visible(lead_email)}")


@click.command("suppress-domain")
@with_appcontext
@click.argument("domain")
@click.option("--note", default="", help="Why (shown on the suppressions page).")
def suppress_domain_command(domain: str, note: str) -> None:
    """Never mail any address of DOMAIN (e.g. a competitor); checked by every claim."""
    try:
        with immediate(db.engine) as conn:
            added = suppress_domain(conn, domain, note, utcnow())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    echo(f"{visible(domain)}: " + ("suppressed" if added else "was suppressed already"))
