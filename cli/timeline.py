"""The timeline report: duplicates and timing of sends, SendOnce's own or a legacy log."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from zoneinfo import ZoneInfoNotFoundError

import click
from flask.cli import with_appcontext

from models import db
from timeline import analysis as timeline
from timeline import legacy_log, words
from timeline import live as timeline_sql
from timeline import reconcile as reconciling


def _csv_line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(row)
    return out.getvalue()


@click.command("timeline")
@click.option("--campaign", "campaign_id", type=int, help="Only this campaign's sends.")
@click.option("--log", "log_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Analyse a send log exported from another sender instead.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the report.")
@click.option("--csv", "as_csv", is_flag=True,
              help="The sends as CSV (the timeline page's export columns), e.g. for reconcile.")
@click.option("--tz", default="UTC", show_default=True, help="Zone for times shown (and naive log times).")
@click.option("--lang", type=click.Choice(["pl", "en"]), default="pl", show_default=True)
@with_appcontext
def timeline_command(campaign_id: int | None, log_file: Path | None, as_json: bool, as_csv: bool, tz: str,
                     lang: str) -> None:
    """Duplicates and timing of sends: SendOnce's own, or a legacy log (--log); or the sends as CSV."""
    if campaign_id is not None and log_file is not None:
        raise click.UsageError("give --campaign or --log, not both")
    if as_csv:
        if log_file is not None or as_json:
            raise click.UsageError("--csv exports this database's sends: not with --log or --json")
        with db.engine.connect() as conn:
            try:
                for row in reconciling.export_rows(conn, campaign_id, tz):
                    click.echo(_csv_line(row), nl=False)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise click.UsageError(f"unknown time zone {tz!r}") from exc
        return
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
