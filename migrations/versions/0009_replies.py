"""Replies and bounces read over IMAP (#18): the reader's cursor per mailbox folder
(mailbox_folder_state) and every message it read (inbound_message, UNIQUE(mailbox_id,
folder, uidvalidity, uid): a message is processed once). New tables only, created when
missing (as 0002-0007 do); no existing table is rebuilt, no trigger is touched.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _folder_state():
    op.create_table(
        "mailbox_folder_state",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("folder", sa.String(255), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("read_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"],
                                name=op.f("fk_mailbox_folder_state_mailbox_id_mailbox")),
        sa.PrimaryKeyConstraint("mailbox_id", "folder", name=op.f("pk_mailbox_folder_state")),
    )


def _inbound_message():
    op.create_table(
        "inbound_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("folder", sa.String(255), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("in_reply_to", sa.Text(), nullable=False),
        sa.Column("references", sa.Text(), nullable=False),
        sa.Column("from_address", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("send_log_id", sa.Integer(), nullable=True),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("lead_id", sa.Integer(), nullable=True),
        sa.Column("snippet", sa.Text(), nullable=False),
        sa.Column("return_date", sa.DateTime(), nullable=True),
        sa.Column("label", sa.String(16), nullable=True),
        sa.Column("labelled_by", sa.String(320), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"],
                                name=op.f("fk_inbound_message_mailbox_id_mailbox")),
        sa.ForeignKeyConstraint(["send_log_id"], ["send_log.id"],
                                name=op.f("fk_inbound_message_send_log_id_send_log")),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"],
                                name=op.f("fk_inbound_message_campaign_id_campaign")),
        sa.ForeignKeyConstraint(["lead_id"], ["lead.id"], name=op.f("fk_inbound_message_lead_id_lead")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_message")),
        sa.UniqueConstraint("mailbox_id", "folder", "uidvalidity", "uid",
                            name=op.f("uq_inbound_message_mailbox_id_folder_uidvalidity_uid")),
    )
    op.create_index("ix_inbound_message_created", "inbound_message", ["created_at"])
    op.create_index("ix_inbound_message_campaign", "inbound_message", ["campaign_id", "kind"])
    op.create_index("ix_inbound_message_send_log", "inbound_message", ["send_log_id"])
    op.create_index("ix_inbound_message_header", "inbound_message", ["mailbox_id", "message_id"])


def upgrade():
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "mailbox_folder_state" not in existing:
        _folder_state()
    if "inbound_message" not in existing:
        _inbound_message()


def downgrade():
    op.drop_table("inbound_message")
    op.drop_table("mailbox_folder_state")
