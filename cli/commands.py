"""The `flask --app app …` commands: enough to run a whole campaign without a browser."""

from __future__ import annotations

import functools
import json
import secrets
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

import scheduler
from cli.terminal import echo, visible, visible_fields, visible_json, visible_lines
from core import accounts, campaigns, importer, leads, stats
from models import Campaign, CampaignLead, Trigger, User, db
from sender import Settings, decidable_at, recover, resolve_unknown
from storage import schema
from storage.timeutil import utcnow
from timeline import analysis as timeline
from timeline import legacy_log, words
from timeline import live as timeline_sql


def register(app: Flask) -> None:
    """Attach every command to the app's CLI."""
    for command in (init_db, create_user, set_password, import_leads, send_due, run_scheduler,
                    recover_command, resolve_command, demo, first_run, timeline_command):
        app.cli.add_command(_database_errors_in_one_line(command))
    app.cli.add_command(_database_errors_in_one_line(campaign_group))


def _database_errors_in_one_line(command: click.Command) -> click.Command:
    """A locked or read-only database ends a command with one line and exit code 1.

    Every write is its own transaction, so what failed was rolled back; a traceback
    would only hide the one sentence an operator (or cron's mail) needs.
    """
    for sub in getattr(command, "commands", {}).values():
        _database_errors_in_one_line(sub)
    callback = command.callback
    if callback is None or getattr(callback, "_one_line_errors", False):
        return command

    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except OperationalError as exc:
            raise click.ClickException(database_problem(exc)) from exc
        except click.ClickException as exc:  # messages may quote a file's or a lead's text
            exc.message = visible_lines(exc.message)
            raise

    run._one_line_errors = True  # type: ignore[attr-defined]
    command.callback = run
    return command


def database_problem(exc: OperationalError) -> str:
    """One line saying why the database refused, and what to do about it."""
    code = getattr(exc.orig, "sqlite_errorname", "")
    if code.startswith("SQLITE_BUSY"):
        return (f"the database is locked by another process ({exc.orig}); "
                "the write that failed was rolled back; try again")
    if code.startswith("SQLITE_READONLY"):
        return (f"the database cannot be written ({exc.orig}): check the permissions of the file "
                "and its folder")
    return f"the database cannot be used: {exc.orig}"


def _engine():
    return db.engine


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create the tables and triggers (safe to run again, and after an upgrade: data is kept)."""
    schema.install(db.engine, db.metadata)
    echo(f"database ready: {current_app.config['SQLALCHEMY_DATABASE_URI']}")


@click.command("create-user")
@with_appcontext
@click.argument("email")
@click.password_option()
def create_user(email: str, password: str) -> None:
    """Create an admin login (the password is prompted for unless --password is given).

    The password needs at least 12 characters and must not be a common one. An existing
    address is refused: change its password with set-password.
    """
    _account_change(accounts.create_user, _engine(), email, password)
    echo(f"user {leads.normalize_email(email)} created")


@click.command("set-password")
@with_appcontext
@click.argument("email")
@click.password_option()
def set_password(email: str, password: str) -> None:
    """Change a login's password (prompted unless --password is given); ends all its sessions."""
    user_id = _account_change(accounts.user_id_of, _engine(), email)
    _account_change(accounts.set_password, _engine(), user_id, password)
    echo(f"password of {leads.normalize_email(email)} changed; its sessions have ended")


def _account_change(action, *args):
    try:
        return action(*args)
    except accounts.AccountError as exc:  # a rule of the account policy: exit 1 with the reason
        raise click.ClickException(str(exc)) from exc


@click.command("import-leads")
@with_appcontext
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--campaign", "campaign_id", type=int, help="Also enroll the leads here.")
def import_leads(path: Path, campaign_id: int | None) -> None:
    """Import leads from a CSV file (header row with an email column)."""
    try:
        report = importer.run_import(_engine(), path.read_bytes())
    except importer.CsvImportError as exc:  # unreadable as a whole: exit 1, so scripts stop here
        raise click.ClickException(f"{path}: {exc}; nothing was imported") from exc
    for line, reason in report.rejected:
        echo(f"line {line}: {visible(reason)}", err=True)
    echo(f"imported {report.imported}, merged {report.merged}, rejected {len(report.rejected)}")
    if not report.lead_ids:  # every row rejected (or none there): a script must not go on
        raise click.ClickException(f"{path}: no lead was imported")
    if campaign_id is not None:
        added = leads.enroll(_engine(), campaign_id, report.lead_ids)
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
def campaign_create(name: str, from_address: str | None, from_name: str, interval: int,
                    batch_size: int, daily_cap: int | None, weekdays: str, hours: str,
                    timezone: str) -> None:
    """Create a draft campaign and print its id."""
    start, _, end = hours.partition("-")
    campaign_id = campaigns.create(
        _engine(), name=name, from_address=from_address or current_app.config["MAIL_FROM"],
        from_name=from_name, interval_seconds=interval, batch_size=batch_size,
        daily_cap=daily_cap, window_weekdays=weekdays, window_start_hour=int(start),
        window_end_hour=int(end or 24), timezone=timezone)
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
        campaigns.add_variant(_engine(), campaign_id, letter, subject, text, weight)
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
        added, matched = campaigns.enroll_leads(_engine(), campaign_id, tag)
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
            action(_engine(), campaign_id)
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


@click.command("send-due")
@with_appcontext
@click.option("--campaign", "campaign_id", type=int, help="Only this campaign.")
def send_due(campaign_id: int | None) -> None:
    """One tick, for system cron: same lease and pacing rules as the scheduler."""
    ticker: scheduler.Ticker = current_app.extensions["sendonce_ticker"]
    try:
        results = ticker.tick(Trigger.CLI, campaign_id)
    finally:
        ticker.release()
    if results is None:
        echo("another process holds the scheduler lease; nothing sent")
        return
    for cid, batch in results.items():
        echo(f"campaign {cid}: sent {batch.sent}"
             + (f" ({visible(batch.stopped_by)})" if batch.stopped_by else ""))


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
    echo(f"{recover(_engine(), settings, utcnow())} marked unknown")


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
    refusal = resolve_unknown(_engine(), Settings.from_config(current_app.config), send_log_id, action, who)
    if refusal is not None and refusal.code == "still_sending":
        raise click.ClickException(
            f"send {send_log_id}: the sending process may still be working on it (it could still deliver "
            f"it); nothing changed. Decide after {refusal.detail} UTC.")
    if refusal is not None:
        raise click.ClickException(f"send {send_log_id} is not unknown; nothing changed")
    echo(f"send {send_log_id}: {action}")


DEMO_LEADS = b"""email,first_name,last_name,company,city
anna.nowak@example.com,Anna,Nowak,Kowalski i Syn,Krak\xc3\xb3w
jan.kowalski@example.com,Jan,Kowalski,Budimex Demo,Warszawa
zofia.wisniewska@example.com,Zofia,Wi\xc5\x9bniewska,Demo Sp. z o.o.,Gda\xc5\x84sk
piotr.zielinski@example.com,Piotr,Zieli\xc5\x84ski,Przyk\xc5\x82ad SA,Pozna\xc5\x84
"""


@click.command("demo")
@with_appcontext
def demo() -> None:
    """Create a demo campaign (two variants, a few leads), started, one send a minute."""
    engine = _engine()
    report = importer.import_leads(engine, DEMO_LEADS)
    campaign_id = campaigns.create(
        engine, name="Demo: SendOnce", from_address=current_app.config["MAIL_FROM"],
        from_name="SendOnce Demo", interval_seconds=60, batch_size=1)
    campaigns.add_variant(engine, campaign_id, "A", "Dzień dobry, {{ first_name }}!",
                          "Cześć {{ first_name }},\n\npiszę do {{ company }} z {{ city }}.\n\n"
                          "Wypisz się: {{ unsubscribe_url }}\n")
    campaigns.add_variant(engine, campaign_id, "B", "{{ company }}: krótkie pytanie",
                          "Dzień dobry {{ first_name }} {{ last_name }},\n\nczy {{ company }} "
                          "szuka nowych klientów?\n\nWypisz się: {{ unsubscribe_url }}\n")
    leads.enroll(engine, campaign_id, report.lead_ids)
    campaigns.start(engine, campaign_id)
    echo(f"demo campaign {campaign_id} started with {len(report.lead_ids)} leads")


@click.command("first-run")
@with_appcontext
def first_run() -> None:
    """Create tables; on an empty database add the demo data and an admin login."""
    schema.install(db.engine, db.metadata)
    if db.session.scalar(select(func.count()).select_from(User)):
        echo("database ready (existing data kept)")
        return
    password = secrets.token_urlsafe(12)
    accounts.create_user(_engine(), "admin@example.com", password)
    click.get_current_context().invoke(demo)
    echo(f"\n  Log in at {current_app.config['BASE_URL']} as admin@example.com "
               f"with password: {password}\n  (shown once; change it with set-password)\n")


@click.command("timeline")
@click.option("--campaign", "campaign_id", type=int, help="Only this campaign's sends.")
@click.option("--log", "log_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Analyse a send log exported from another sender instead.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the report.")
@click.option("--tz", default="UTC", show_default=True, help="Zone for times shown (and naive log times).")
@click.option("--lang", type=click.Choice(["pl", "en"]), default="pl", show_default=True)
@with_appcontext
def timeline_command(campaign_id: int | None, log_file: Path | None, as_json: bool, tz: str,
                     lang: str) -> None:
    """Duplicates and timing of sends: SendOnce's own, or a legacy log (--log)."""
    if campaign_id is not None and log_file is not None:
        raise click.UsageError("give --campaign or --log, not both")
    if log_file is not None:
        try:
            parsed = legacy_log.parse_log(log_file.read_bytes(), tz)
        except legacy_log.LegacyLogError as exc:
            raise click.ClickException(str(exc)) from exc
        for line, reason in parsed.rejected:
            echo(f"line {line}: {visible(reason)}", err=True)
        # The report quotes the log's own values: a line break or an escape sequence in one
        # must show as text, not end the line or rewrite the screen.
        analysis = timeline.analyse([visible_fields(event) for event in parsed.events])
    else:
        with _engine().connect() as conn:
            analysis = timeline_sql.analyse(conn, timeline_sql.Scope(campaign_id))
    if as_json:
        echo(visible_json(json.dumps(timeline.to_json(analysis), ensure_ascii=False, indent=2)))
    else:
        echo(words.text_report(analysis, lang, tz))
