"""Setting up: tables and triggers, admin logins, the demo campaign, the first run."""

from __future__ import annotations

import secrets

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import func, select

from cli.mailboxes import vault
from cli.operations import upgrade_database
from cli.terminal import echo
from core import accounts, campaigns, importer, leads, mailboxes
from models import User, db


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create or upgrade the schema (migrations) and its triggers; safe to run again: data is kept."""
    echo(upgrade_database())
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
    _account_change(accounts.create_user, db.engine, email, password)
    echo(f"user {leads.normalize_email(email)} created")


@click.command("set-password")
@with_appcontext
@click.argument("email")
@click.password_option()
def set_password(email: str, password: str) -> None:
    """Change a login's password (prompted unless --password is given); ends all its sessions."""
    user_id = _account_change(accounts.user_id_of, db.engine, email)
    _account_change(accounts.set_password, db.engine, user_id, password)
    echo(f"password of {leads.normalize_email(email)} changed; its sessions have ended")


def _account_change(action, *args):
    try:
        return action(*args)
    except accounts.AccountError as exc:  # a rule of the account policy: exit 1 with the reason
        raise click.ClickException(str(exc)) from exc


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
    engine = db.engine
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
    mailbox_ids = _demo_mailboxes(engine)
    mailboxes.link(engine, campaign_id, mailbox_ids)
    campaigns.start(engine, campaign_id)
    echo(f"demo campaign {campaign_id} started with {len(report.lead_ids)} leads, "
         f"sending through mailboxes {', '.join(map(str, mailbox_ids))} (outbox)")


DEMO_MAILBOXES = (("Anna Kowalska", "anna@firma-demo.pl"), ("Piotr Nowak", "piotr@firma-demo.pl"))


def _demo_mailboxes(engine) -> list[int]:
    """The demo's two outbox mailboxes (40 a day, a minute apart, ramp-up 10 +5 a day); kept if there."""
    found = []
    for name, address in DEMO_MAILBOXES:
        try:
            with engine.connect() as conn:
                found.append(mailboxes.find(conn, address))
        except mailboxes.MailboxError:
            found.append(mailboxes.create(
                engine, vault(), name=name, address=address, backend="outbox", daily_cap=40,
                min_gap_seconds=60, ramp_start=10, ramp_step=5,
                signature=f"{name}\nFirma Demo Sp. z o.o."))
    return found


@click.command("first-run")
@with_appcontext
def first_run() -> None:
    """Create or upgrade the schema; on an empty database add the demo data and an admin login."""
    echo(upgrade_database())
    if db.session.scalar(select(func.count()).select_from(User)):
        echo("database ready (existing data kept)")
        return
    password = secrets.token_urlsafe(12)
    accounts.create_user(db.engine, "admin@example.com", password)
    click.get_current_context().invoke(demo)
    echo(f"\n  Log in at {current_app.config['BASE_URL']} as admin@example.com "
               f"with password: {password}\n  (shown once; change it with set-password)\n")
