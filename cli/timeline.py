"""The timeline report: duplicates and timing of sends, SendOnce's own or a legacy log."""

from __future__ import annotations

import json
from pathlib import Path

import click
from flask.cli import with_appcontext

from models import db
from timeline import analysis as timeline
from timeline import legacy_log, words
from timeline import live as timeline_sql


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
            click.echo(f"line {line}: {reason}", err=True)
        analysis = timeline.analyse(parsed.events)
    else:
        with db.engine.connect() as conn:
            analysis = timeline_sql.analyse(conn, timeline_sql.Scope(campaign_id))
    if as_json:
        click.echo(json.dumps(timeline.to_json(analysis), ensure_ascii=False, indent=2))
    else:
        click.echo(words.text_report(analysis, lang, tz))
