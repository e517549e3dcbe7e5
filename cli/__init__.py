"""The `flask --app app …` commands, grouped as the README's CLI table groups them."""

from __future__ import annotations

import functools

import click
from flask import Flask
from sqlalchemy.exc import InternalError, OperationalError

from cli import alerts, campaigns, mailboxes, moving, operations, replies, sending, setup, timeline
from cli.terminal import visible_lines
from storage.database import is_busy, is_read_only


def register(app: Flask) -> None:
    """Attach every command to the app's CLI."""
    for command in (setup.init_db, setup.create_user, setup.set_password, campaigns.import_leads,
                    sending.send_due,
                    sending.run_scheduler, sending.recover_command, sending.resolve_command,
                    setup.demo, setup.first_run, timeline.timeline_command, operations.backup_command,
                    operations.restore_command, operations.reconcile_command,
                    campaigns.suppress_domain_command, moving.copy_to_command):
        app.cli.add_command(_database_errors_in_one_line(command))
    app.cli.add_command(_database_errors_in_one_line(campaigns.campaign_group))
    app.cli.add_command(_database_errors_in_one_line(alerts.alerts_group))
    app.cli.add_command(_database_errors_in_one_line(mailboxes.mailbox_group))
    app.cli.add_command(_database_errors_in_one_line(replies.replies_group))


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
        except InternalError as exc:  # PostgreSQL's "read-only transaction" is one
            if not is_read_only(exc):
                raise
            raise click.ClickException(database_problem(exc)) from exc
        except click.ClickException as exc:  # messages may quote a file's or a lead's text
            exc.message = visible_lines(exc.message)
            raise

    run._one_line_errors = True  # type: ignore[attr-defined]
    command.callback = run
    return command


def database_problem(exc: OperationalError | InternalError) -> str:
    """One line saying why the database refused, and what to do about it."""
    if is_busy(exc):
        return (f"the database is locked by another process ({_first_line(exc.orig)}); "
                "the write that failed was rolled back; try again")
    if is_read_only(exc):
        where = ("check that the PostgreSQL server accepts writes (not a standby; "
                 "default_transaction_read_only off)" if _from_server(exc)
                 else "check the permissions of the file and its folder")
        return f"the database cannot be written ({_first_line(exc.orig)}): {where}"
    return f"the database cannot be used: {_first_line(exc.orig)}"


def _from_server(exc: OperationalError | InternalError) -> bool:
    # psycopg's errors carry the server's SQLSTATE; sqlite3's do not.
    return getattr(exc.orig, "sqlstate", None) is not None


def _first_line(error: BaseException) -> str:
    # PostgreSQL's messages may add DETAIL/HINT lines; the one line is the point.
    return (str(error).strip().splitlines() or [""])[0]
