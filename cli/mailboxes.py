"""Sender mailboxes (#16): add, list, pause, resume, test, check, rotate the key, move leads.

A secret (password or XOAUTH2 token) is never a command-line value: it would stay in
the shell's history and show in `ps` to every user of the machine. It comes from a file
(--smtp-password-file), an environment variable (SENDONCE_SMTP_PASSWORD) or a hidden
prompt, and is stored encrypted (storage/secrets.py); no command prints it.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from cli.terminal import echo, visible
from core import mailboxes
from core.mailboxes import MailboxError
from models import Campaign, db
from storage.secrets import Vault

LOOPBACK = ("localhost", "127.0.0.1", "::1")
SMTP_ENV = "SENDONCE_SMTP_PASSWORD"
IMAP_ENV = "SENDONCE_IMAP_PASSWORD"
# The CLI spelling of core.mailboxes' field names, for error messages.
OPTIONS = {"address": "ADDRESS", "auth_kind": "--auth", "min_gap_seconds": "--min-gap",
           "smtp_password": "--smtp-password-file", "imap_password": "--imap-password-file",
           "id": "ID", "mailbox": "--mailbox"}


def vault() -> Vault:
    """The key file of this installation (made on first use, 0600)."""
    return Vault(current_app.config["MAILBOX_KEY_FILE"])


def refused(exc: MailboxError) -> click.ClickException:
    """A MailboxError as a one-line CLI error naming the option (exit 1; nothing was changed)."""
    option = OPTIONS.get(exc.field, "--" + exc.field.replace("_", "-"))
    return click.ClickException(f"{option}: {exc.message}")


def read_secret(path: Path | None, env: str, prompt: str | None) -> str:
    """A secret from a file, else the environment, else a hidden prompt (None: no prompt, "")."""
    if path is not None:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    if os.environ.get(env):
        return os.environ[env]
    if prompt is None:
        return ""
    return click.prompt(prompt, hide_input=True, default="", show_default=False)


@click.group("mailbox")
def mailbox_group() -> None:
    """Sender mailboxes: add, list, pause, resume, test, check, rotate-key, move-leads."""


def _secret_file(name: str, env: str):
    return click.option(f"--{name}-password-file",
                        type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help=f"Read the {name.upper()} password or token from this file "
                             f"(else ${env}, else a hidden prompt).")


@mailbox_group.command("add")
@with_appcontext
@click.argument("address")
@click.option("--name", help="The From display name.")
@click.option("--backend", type=click.Choice(mailboxes.BACKENDS),
              help="smtp (default) or outbox (.eml files).")
@click.option("--smtp-host")
@click.option("--smtp-port", type=int)
@click.option("--smtp-security", type=click.Choice(mailboxes.SECURITY))
@click.option("--smtp-username", help="Empty: no AUTH (a relay that trusts this host).")
@click.option("--auth", "auth_kind", type=click.Choice(mailboxes.AUTH_KINDS),
              help="password (default) or xoauth2 (the secret is an OAuth access token).")
@_secret_file("smtp", SMTP_ENV)
@click.option("--imap-host", help="For reading replies; empty: no IMAP.")
@click.option("--imap-port", type=int)
@click.option("--imap-security", type=click.Choice(mailboxes.SECURITY))
@click.option("--imap-username")
@_secret_file("imap", IMAP_ENV)
@click.option("--daily-cap", type=int, help="Messages a day at most (all campaigns together).")
@click.option("--min-gap", "min_gap_seconds", type=int, help="Seconds between two sends at least.")
@click.option("--ramp-start", type=int, help="Ramp-up: messages on the first day (default: no ramp-up).")
@click.option("--ramp-step", type=int, help="Ramp-up: more each later day, up to the cap.")
@click.option("--timezone", help="Whose midnight starts a new day (default Europe/Warsaw).")
@click.option("--signature", help="The {{ signature }} merge field.")
@click.option("--alert-sender", is_flag=True, default=None, help="Send the admins' alerts through it.")
def mailbox_add(address: str, smtp_password_file: Path | None, imap_password_file: Path | None,
                **options) -> None:
    """Add a mailbox; its password or token is read from a file, $SENDONCE_SMTP_PASSWORD or a prompt."""
    values = {k: v for k, v in options.items() if v is not None}
    smtp_login = values.get("backend", "smtp") == "smtp" and (
        values.get("smtp_username") or values.get("auth_kind") == "xoauth2")
    token = values.get("auth_kind") == "xoauth2"
    values["smtp_password"] = read_secret(
        smtp_password_file, SMTP_ENV, ("SMTP access token (XOAUTH2)" if token else "SMTP password")
        if smtp_login else None)
    if values.get("imap_host"):
        values["imap_password"] = read_secret(
            imap_password_file, IMAP_ENV, "IMAP password or token (empty: the SMTP one)")
    if smtp_login and not values["smtp_password"]:
        raise refused(MailboxError("smtp_password", "a login needs a password or token; none was given"))
    try:
        mailbox_id = mailboxes.create(db.engine, vault(), address=address, **values)
    except MailboxError as exc:
        raise refused(exc) from exc
    if smtp_login and values.get("smtp_security") == "none" and values.get("smtp_host") not in LOOPBACK:
        echo("WARNING: --smtp-security none: the password or token crosses the network in clear; "
             "use starttls or ssl unless the link is trusted", err=True)
    echo(f"mailbox {mailbox_id} added: {visible(address.strip().lower())}; "
         f"try it with `flask --app app mailbox check {mailbox_id}`")


@mailbox_group.command("set-secret")
@with_appcontext
@click.argument("mailbox_id", type=int)
@click.option("--imap", is_flag=True, help="The IMAP secret (default: the SMTP one).")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read it from this file (else $SENDONCE_SMTP_PASSWORD / $SENDONCE_IMAP_PASSWORD, "
                   "else a hidden prompt).")
def mailbox_set_secret(mailbox_id: int, imap: bool, path: Path | None) -> None:
    """Replace a mailbox's password or XOAUTH2 token (e.g. a refreshed token, from cron)."""
    field = "imap_password" if imap else "smtp_password"
    secret = read_secret(path, IMAP_ENV if imap else SMTP_ENV, "New password or token")
    if not secret:
        raise refused(MailboxError(field, "empty; nothing was changed"))
    try:
        mailboxes.update_mailbox(db.engine, vault(), mailbox_id, **{field: secret})
    except MailboxError as exc:
        raise refused(exc) from exc
    echo(f"mailbox {mailbox_id}: {'IMAP' if imap else 'SMTP'} secret replaced")


@mailbox_group.command("list")
@with_appcontext
def mailbox_list() -> None:
    """Every mailbox: status, sent today / today's cap, ramp-up day, last error (never a secret)."""
    with db.engine.connect() as conn:
        found = mailboxes.overview(conn)
    if not found:
        echo("no mailboxes (campaigns send through the configured MAIL_BACKEND / SMTP_*)")
        return
    rows = [("ID", "ADDRESS", "NAME", "BACKEND", "STATUS", "TODAY", "RAMP DAY", "LAST ERROR")]
    for m in found:
        status = m.status + (f" ({m.pause_reason})" if m.pause_reason else "")
        rows.append((str(m.id), m.address, m.name, m.backend, status, f"{m.sent_today}/{m.cap_today}",
                     "-" if m.ramp_day is None else str(m.ramp_day), m.last_error or "-"))
    rows = [tuple(visible(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


@mailbox_group.command("pause")
@with_appcontext
@click.argument("mailbox_id", type=int)
@click.option("--reason", default="paused from the command line", show_default=True)
def mailbox_pause(mailbox_id: int, reason: str) -> None:
    """Stop sending through a mailbox; its leads wait (they are never moved on their own)."""
    _existing(mailbox_id)
    mailboxes.pause(db.engine, mailbox_id, reason)
    echo(f"mailbox {mailbox_id}: paused")


@mailbox_group.command("resume")
@with_appcontext
@click.argument("mailbox_id", type=int)
def mailbox_resume(mailbox_id: int) -> None:
    """Send through a paused mailbox again."""
    _existing(mailbox_id)
    mailboxes.resume(db.engine, mailbox_id)
    echo(f"mailbox {mailbox_id}: active")


def _existing(mailbox_id: int) -> None:
    try:
        with db.engine.connect() as conn:
            mailboxes.get(conn, mailbox_id)
    except MailboxError as exc:
        raise refused(exc) from exc


@mailbox_group.command("test")
@with_appcontext
@click.argument("mailbox_id", type=int)
@click.option("--to", "to_address", required=True, help="Who gets the test message.")
def mailbox_test(mailbox_id: int, to_address: str) -> None:
    """Send one test message through the mailbox (not campaign mail: not logged, not counted)."""
    config = current_app.config
    try:
        result = mailboxes.send_test(db.engine, vault(), mailbox_id, to_address,
                                     timeout=float(config["SMTP_TIMEOUT"]), outbox_dir=config["OUTBOX_DIR"])
    except MailboxError as exc:
        raise refused(exc) from exc
    if result.status != "sent":
        raise click.ClickException(f"the test to {visible(to_address)} was not sent: {visible(result.reply)}")
    echo(f"test sent to {visible(to_address)}: {visible(result.reply)}")


@mailbox_group.command("check")
@with_appcontext
@click.argument("mailbox_id", type=int)
def mailbox_check(mailbox_id: int) -> None:
    """Log in to the mailbox's SMTP (and IMAP) server and print each answer; exit 1 on a failure."""
    try:
        checks = mailboxes.check_connection(db.engine, vault(), mailbox_id,
                                            timeout=float(current_app.config["SMTP_TIMEOUT"]))
    except MailboxError as exc:
        raise refused(exc) from exc
    for found in checks:
        echo(f"{found.service} {'ok' if found.ok else 'FAILED'}: {visible(found.answer)}")
    if not all(found.ok for found in checks):
        raise click.ClickException(f"mailbox {mailbox_id}: the connection check failed")


@mailbox_group.command("rotate-key")
@with_appcontext
def mailbox_rotate_key() -> None:
    """Add a new encryption key and re-encrypt every mailbox secret with it."""
    count = mailboxes.rotate_key(db.engine, vault())
    path = current_app.config["MAILBOX_KEY_FILE"]
    echo(f"re-sealed the secrets of {count} mailboxes with a new key (first line of {path}).\n"
         f"Back up {path} now (`flask --app app backup` copies it): without it the stored mailbox "
         "passwords cannot be read. Older keys stay in the file until you remove them.")


@mailbox_group.command("move-leads")
@with_appcontext
@click.argument("campaign_id", type=int)
@click.argument("from_mailbox")
@click.argument("to_mailbox")
def mailbox_move_leads(campaign_id: int, from_mailbox: str, to_mailbox: str) -> None:
    """Move a campaign's waiting leads pinned to one mailbox (id or address) to another."""
    try:
        with db.engine.connect() as conn:
            from_id, to_id = mailboxes.find(conn, from_mailbox), mailboxes.find(conn, to_mailbox)
    except MailboxError as exc:
        raise refused(exc) from exc
    if from_id == to_id:
        raise click.UsageError("FROM and TO are the same mailbox")
    if db.session.get(Campaign, campaign_id) is None:
        raise click.ClickException(f"no campaign {campaign_id}")
    moved = mailboxes.move_leads(db.engine, campaign_id, from_id, to_id)
    echo(f"campaign {campaign_id}: moved {moved} leads from mailbox {from_id} to mailbox {to_id}")
