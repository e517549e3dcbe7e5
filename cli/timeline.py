"""The timeline report: duplicates and timing of sends, SendOnce's own or a legacy log."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from flask.cli import with_appcontext

from cli.terminal import echo, visible, visible_fields, visible_json
from models import db
from timeline import analysis as timeline
from timeline import legacy_log, words
from timeline import live as timeline_sql
from timeline import reconcile as reconciling


def _csv_line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(row)
    return out.getvalue()


def _chosen_columns(value: str | None) -> dict[str, str] | None:
    """--columns time=Data,lead=Odbiorca as {role: header name or column number}."""
    if not value:
        return None
    pairs = [part.partition("=") for part in value.split(",") if part.strip()]
    if any(not sep or not name.strip() for _, sep, name in pairs):
        raise click.BadParameter("use role=column pairs, e.g. time=Data,lead=Odbiorca",
                                 param_hint="--columns")
    return {role.strip(): name.strip() for role, _, name in pairs}


def _check_zone(tz: str) -> None:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise click.BadParameter(f"unknown time zone {tz[:60]!r}", param_hint="--tz") from exc


def _read_log(log_file: Path, tz: str, columns: str | None) -> legacy_log.ParseResult:
    """The parsed log; a file that cannot be read at all is a one-line error (exit 1)."""
    try:
        return legacy_log.parse_log(log_file.read_bytes(), tz, _chosen_columns(columns))
    except legacy_log.LegacyLogError as exc:
        raise click.ClickException(str(exc)) from exc


def _echo_rejected(parsed: legacy_log.ParseResult, lang: str, shown: int = 20) -> None:
    """The first rejected rows, a count per kind of reason and the rows left out, on stderr."""
    for item in parsed.rejections[:shown]:
        echo(f"line {item.line}: {visible(words.rejection(item, lang))}", err=True)
    if len(parsed.rejections) > shown:
        echo(f"… {len(parsed.rejections) - shown} more rejected rows: " + ", ".join(
            f"{kind} ×{n}" for kind, n in parsed.rejected_by_kind().items()), err=True)
    for line in words.left_out_lines(parsed.left_out, lang):
        echo(line, err=True)


def _log_json(parsed: legacy_log.ParseResult) -> dict:
    """What the CLI's --json adds for a legacy log: how it was read, what was rejected or left out."""
    return {"rows_read": len(parsed.events) + parsed.left_out_rows() + len(parsed.rejections),
            "rejected_rows": len(parsed.rejections), "rejected_by_reason": parsed.rejected_by_kind(),
            "left_out_rows": parsed.left_out_rows(), "left_out": parsed.left_out,
            "source": {"format": parsed.format, "encoding": parsed.encoding, "delimiter": parsed.delimiter,
                       "columns": parsed.columns}}


@click.command("timeline")
@click.option("--campaign", "campaign_id", type=int, help="Only this campaign's sends.")
@click.option("--log", "log_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Analyse a send log exported from another sender instead (CSV, JSON or NDJSON).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the report.")
@click.option("--csv", "as_csv", is_flag=True,
              help="The sends as CSV (the timeline page's export columns), e.g. for reconcile.")
@click.option("--tz", default="UTC", show_default=True, help="Zone for times shown (and naive log times).")
@click.option("--lang", type=click.Choice(["pl", "en"]), default="pl", show_default=True)
@click.option("--view", type=click.Choice(timeline.VIEWS), default="recipient", show_default=True,
              help="What counts as the same mail for --log: exact = campaign, lead, step and variant; "
                   "recipient = campaign, lead and step (another variant is still a second mail).")
@click.option("--columns", help="Pick the log's columns by hand: role=header name or column number, "
                                "e.g. time=Data,lead=Odbiorca,status=Stan (roles: "
                                + ", ".join(legacy_log.ROLES) + ").")
@with_appcontext
def timeline_command(campaign_id: int | None, log_file: Path | None, as_json: bool, as_csv: bool, tz: str,
                     lang: str, view: str, columns: str | None) -> None:
    """Duplicates and timing of sends: SendOnce's own, or a legacy log (--log); or the sends as CSV.

    Exits 1 when a log has rows but none of them is a delivered send that could be read.
    """
    if campaign_id is not None and log_file is not None:
        raise click.UsageError("give --campaign or --log, not both")
    if as_csv:
        _export_csv(campaign_id, log_file, as_json, tz)
        return
    parsed = None
    if log_file is not None:
        parsed = _read_log(log_file, tz, columns)
        _echo_rejected(parsed, lang)
        # The report quotes the log's own values: a line break or an escape sequence in one
        # must show as text, not end the line or rewrite the screen.
        analysis = timeline.analyse([visible_fields(event) for event in parsed.events], view=view)
    else:
        _check_zone(tz)
        with db.engine.connect() as conn:
            analysis = timeline_sql.analyse(conn, timeline_sql.Scope(campaign_id))
    if as_json:
        extra = _log_json(parsed) if parsed is not None else {}
        echo(visible_json(json.dumps(timeline.to_json(analysis) | extra, ensure_ascii=False, indent=2)))
    else:
        echo(words.text_report(analysis, lang, tz))
    if parsed is not None and not parsed.events and (parsed.rejections or parsed.left_out):
        echo("Error: no row of the log is a delivered send that could be read", err=True)
        raise click.exceptions.Exit(1)


def _export_csv(campaign_id: int | None, log_file: Path | None, as_json: bool, tz: str) -> None:
    if log_file is not None or as_json:
        raise click.UsageError("--csv exports this database's sends: not with --log or --json")
    _check_zone(tz)
    with db.engine.connect() as conn:
        for row in reconciling.export_rows(conn, campaign_id, tz):
            click.echo(_csv_line(row), nl=False)
