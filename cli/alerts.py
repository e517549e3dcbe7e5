"""Alerts from the command line: the cron watchdog (`alerts check`) and the list of open ones."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext
from flask_babel import force_locale

import scheduler
from cli.terminal import echo, visible
from core import alerts
from models import db
from storage.timeutil import utcnow


@click.group("alerts")
def alerts_group() -> None:
    """Alerts to the admins: a mailbox paused, unknown sends, the scheduler down, a failed backup."""


@alerts_group.command("check")
@with_appcontext
def check_command() -> None:
    """Check the alert conditions and mail what is due, without sending any campaign mail.

    For cron, beside the scheduler: it is what notices that no process ticks any more.
    """
    app, now = current_app._get_current_object(), utcnow()
    gate = alerts.check(db.engine, alerts.Watch.from_config(app.config), now)
    if gate is not None:  # another schema revision, or a restore running: cron's mail says why
        raise click.ClickException(f"alerts not checked: {gate[1]}")
    mailed = scheduler.mail_alerts(app, now)
    with db.engine.connect() as conn:
        opened = len(alerts.open_alerts(conn))
    echo(f"{opened} open alerts; {mailed} mailed now")


@alerts_group.command("list")
@with_appcontext
def list_command() -> None:
    """Every open alert: id, since when (UTC), kind and what happened."""
    with db.engine.connect() as conn:
        rows = alerts.open_alerts(conn)
    with force_locale("en"):
        for row in rows:
            item = alerts.describe(row)
            mailed = f"mailed {row.emailed_at:%Y-%m-%d %H:%M:%S}" if row.emailed_at else "not mailed yet"
            echo(f"{row.id}\t{row.created_at:%Y-%m-%d %H:%M:%S}\t{row.kind}\t{visible(item.text)}\t{mailed}")
    echo(f"{len(rows)} open alerts")
