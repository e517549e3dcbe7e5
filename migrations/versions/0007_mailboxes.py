"""Mailboxes (#16), send requests (#14) and alerts.

New tables: mailbox, campaign_mailbox, send_request, alert. New nullable columns:
campaign_lead.mailbox_id (the lead's pinned mailbox) and send_log.mailbox_id (sent
through), each with its foreign key, and an index for a mailbox's sends today.

Upgrade keeps every deployment sending as before: one mailbox per distinct sender address
of the existing campaigns, with the configuration's MAIL_BACKEND and SMTP_* settings (the
password encrypted with MAILBOX_KEY_FILE), no daily cap to speak of, no gap, no ramp-up;
each campaign linked to its sender's mailbox, and its rows and leads already sent pinned
to it. Tables and columns are created only when missing (as 0002-0005 do).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from flask import current_app

from storage.secrets import Vault
from storage.timeutil import utcnow

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UNLIMITED = 1_000_000  # an upgraded mailbox sends as before: no cap to speak of


def _mailbox_table():
    op.create_table(
        "mailbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("smtp_host", sa.String(255), nullable=False),
        sa.Column("smtp_port", sa.Integer(), nullable=False),
        sa.Column("smtp_security", sa.String(16), nullable=False),
        sa.Column("smtp_username", sa.String(320), nullable=False),
        sa.Column("auth_kind", sa.String(16), nullable=False),
        sa.Column("smtp_secret", sa.Text(), nullable=True),
        sa.Column("imap_host", sa.String(255), nullable=False),
        sa.Column("imap_port", sa.Integer(), nullable=False),
        sa.Column("imap_security", sa.String(16), nullable=False),
        sa.Column("imap_username", sa.String(320), nullable=False),
        sa.Column("imap_secret", sa.Text(), nullable=True),
        sa.Column("daily_cap", sa.Integer(), nullable=False),
        sa.Column("min_gap_seconds", sa.Integer(), nullable=False),
        sa.Column("ramp_start", sa.Integer(), nullable=True),
        sa.Column("ramp_step", sa.Integer(), nullable=False),
        sa.Column("ramp_from", sa.DateTime(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_send_at", sa.DateTime(), nullable=True),
        sa.Column("alert_sender", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox")),
        sa.UniqueConstraint("address", name=op.f("uq_mailbox_address")),
    )


def _other_tables(existing):
    if "campaign_mailbox" not in existing:
        op.create_table(
            "campaign_mailbox",
            sa.Column("campaign_id", sa.Integer(), nullable=False),
            sa.Column("mailbox_id", sa.Integer(), nullable=False),
            sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"],
                                    name=op.f("fk_campaign_mailbox_campaign_id_campaign")),
            sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"],
                                    name=op.f("fk_campaign_mailbox_mailbox_id_mailbox")),
            sa.PrimaryKeyConstraint("campaign_id", "mailbox_id", name=op.f("pk_campaign_mailbox")),
        )
    if "send_request" not in existing:
        op.create_table(
            "send_request",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("key", sa.String(64), nullable=False),
            sa.Column("campaign_id", sa.Integer(), nullable=False),
            sa.Column("requested_by", sa.String(320), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("picked_at", sa.DateTime(), nullable=True),
            sa.Column("finished_at", sa.DateTime(), nullable=True),
            sa.Column("sent", sa.Integer(), nullable=False),
            sa.Column("outcome", sa.Text(), nullable=False),
            sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"],
                                    name=op.f("fk_send_request_campaign_id_campaign")),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_send_request")),
            sa.UniqueConstraint("key", name=op.f("uq_send_request_key")),
        )
        op.create_index("ix_send_request_open", "send_request", ["finished_at", "id"])
    if "alert" not in existing:
        op.create_table(
            "alert",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("key", sa.String(100), nullable=False),
            sa.Column("message", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("emailed_at", sa.DateTime(), nullable=True),
            sa.Column("cleared_at", sa.DateTime(), nullable=True),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_alert")),
        )


def _mailbox_column(table):
    if "mailbox_id" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}:
        return False
    # A batch "move and copy" (SQLite adds a foreign key only with the table); env.py's
    # finish re-installs the table's triggers and checks them.
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.add_column(sa.Column("mailbox_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(op.f(f"fk_{table}_mailbox_id_mailbox"), "mailbox", ["mailbox_id"], ["id"])
    return True


def _one_mailbox_per_sender(conn):
    """Existing campaigns keep sending as configured: a mailbox per distinct sender address."""
    config = current_app.config
    secret = config["SMTP_PASSWORD"] and Vault(config["MAILBOX_KEY_FILE"]).seal(config["SMTP_PASSWORD"])
    senders = conn.execute(sa.text(
        "SELECT lower(trim(from_address)) AS address, min(id) AS first FROM campaign "
        "WHERE NOT EXISTS (SELECT 1 FROM campaign_mailbox m WHERE m.campaign_id = campaign.id) "
        "GROUP BY lower(trim(from_address))")).all()
    now = utcnow()
    for sender in senders:
        mailbox_id = conn.execute(sa.text("SELECT id FROM mailbox WHERE address = :a"),
                                  {"a": sender.address}).scalar()
        if mailbox_id is None:
            name = conn.execute(sa.text("SELECT from_name FROM campaign WHERE id = :id"),
                                {"id": sender.first}).scalar() or ""
            mailbox_id = conn.execute(sa.text(
                "INSERT INTO mailbox (name, address, backend, smtp_host, smtp_port, smtp_security, "
                "smtp_username, auth_kind, smtp_secret, imap_host, imap_port, imap_security, imap_username, "
                "daily_cap, min_gap_seconds, ramp_step, ramp_from, timezone, signature, status, "
                "consecutive_failures, alert_sender, created_at, updated_at) "
                "VALUES (:name, :address, :backend, :host, :port, :security, :username, 'password', "
                ":secret, '', 993, 'ssl', '', :cap, 0, 0, :now, "
                "'Europe/Warsaw', '', 'active', 0, FALSE, :now, :now) RETURNING id"),
                {"name": name, "address": sender.address, "backend": config["MAIL_BACKEND"],
                 "host": config["SMTP_HOST"], "port": int(config["SMTP_PORT"]),
                 "security": config["SMTP_SECURITY"], "username": config["SMTP_USERNAME"],
                 "secret": secret or None, "cap": UNLIMITED, "now": now}).scalar_one()
        ids = {"m": mailbox_id, "a": sender.address}
        conn.execute(sa.text("INSERT INTO campaign_mailbox (campaign_id, mailbox_id) SELECT id, :m "
                             "FROM campaign WHERE lower(trim(from_address)) = :a"), ids)
        conn.execute(sa.text("UPDATE send_log SET mailbox_id = :m WHERE mailbox_id IS NULL AND campaign_id "
                             "IN (SELECT id FROM campaign WHERE lower(trim(from_address)) = :a)"), ids)
        conn.execute(sa.text(
            "UPDATE campaign_lead SET mailbox_id = :m WHERE mailbox_id IS NULL AND EXISTS (SELECT 1 FROM "
            "send_log l WHERE l.campaign_id = campaign_lead.campaign_id "
            "AND l.lead_id = campaign_lead.lead_id) "
            "AND campaign_id IN (SELECT id FROM campaign WHERE lower(trim(from_address)) = :a)"), ids)


def upgrade():
    conn = op.get_bind()
    existing = set(sa.inspect(conn).get_table_names())
    if "mailbox" not in existing:
        _mailbox_table()
    _other_tables(existing)
    _mailbox_column("campaign_lead")
    if _mailbox_column("send_log") or "ix_send_log_mailbox_claimed" not in {
            ix["name"] for ix in sa.inspect(conn).get_indexes("send_log")}:
        op.create_index("ix_send_log_mailbox_claimed", "send_log", ["mailbox_id", "claimed_at"])
    _one_mailbox_per_sender(conn)


def downgrade():
    op.drop_index("ix_send_log_mailbox_claimed", table_name="send_log")
    for table in ("send_log", "campaign_lead"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(op.f(f"fk_{table}_mailbox_id_mailbox"), type_="foreignkey")
            batch_op.drop_column("mailbox_id")
    for table in ("alert", "send_request", "campaign_mailbox", "mailbox"):
        op.drop_table(table)
