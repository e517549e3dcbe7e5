"""Baseline: the schema of commit 3a618c4, which every installation before migrations has.

Written to match what 3a618c4's create_all made, constraint for constraint: the UNIQUEs it
left unnamed (lead.email, suppression.email, user.email, variant(campaign_id, letter))
stay unnamed here, so a database created by these migrations and an old one stamped at
this revision are the same schema. So the tables are built on a MetaData of their own,
without the naming convention Alembic would otherwise apply from models.py, and created
with create_all (portable Core DDL). The derived-table triggers are installed by env.py's
finish step (storage.migrate.finish_migration), as after every migration.

On PostgreSQL (#19) there is no database of 3a618c4's to match: every one is made by
these migrations from empty (or copied from SQLite into such a one). There the tables get
the models' naming convention, so a PostgreSQL database made by the migrations and one
made by create_all name every constraint alike (PostgreSQL would otherwise name the
unnamed ones itself: lead_email_key, campaign_pkey...).

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

from models import NAMING_CONVENTION
from storage.database import is_postgres

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    # SQLite: no naming convention, 3a618c4 named only what it named explicitly.
    meta = sa.MetaData(naming_convention=NAMING_CONVENTION if is_postgres(bind) else None)
    _tables(meta)
    meta.create_all(bind)


def _tables(meta: sa.MetaData) -> None:
    sa.Table(
        "campaign", meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("from_address", sa.String(320), nullable=False),
        sa.Column("from_name", sa.String(200), nullable=False),
        sa.Column("interval_seconds", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("daily_cap", sa.Integer(), nullable=True),
        sa.Column("window_weekdays", sa.String(20), nullable=False),
        sa.Column("window_start_hour", sa.Integer(), nullable=False),
        sa.Column("window_end_hour", sa.Integer(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("last_claim_at", sa.DateTime(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    sa.Table(
        "lead", meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("first_name", sa.String(200), nullable=False),
        sa.Column("last_name", sa.String(200), nullable=False),
        sa.Column("company", sa.String(200), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("tags", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    sa.Table(
        "scheduler_lease", meta,
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    sa.Table(
        "suppression", meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(50), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    sa.Table(
        "user", meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("language", sa.String(5), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    sa.Table(
        "campaign_state_count", meta,
        sa.Column("campaign_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "state"),
        sqlite_with_rowid=False,
    )
    sa.Table(
        "timeline_hour", meta,
        sa.Column("campaign_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hour", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "hour", "trigger"),
        sqlite_with_rowid=False,
    )
    sa.Table(
        "button_press", meta,
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("pressed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"]),
        sa.PrimaryKeyConstraint("key"),
    )
    sa.Table(
        "campaign_lead", meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("variant_letter", sa.String(2), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "lead_id", name="uq_campaign_lead"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"]),
        sa.ForeignKeyConstraint(["lead_id"], ["lead.id"]),
    )
    sa.Index("ix_campaign_lead_next", meta.tables["campaign_lead"].c.campaign_id,
             meta.tables["campaign_lead"].c.state, meta.tables["campaign_lead"].c.id)
    sa.Table(
        "send_log", meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("variant_letter", sa.String(2), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("lease_epoch", sa.Integer(), nullable=True),
        sa.Column("message_id", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("smtp_reply", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(320), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "lead_id", "variant_letter",
                            name="uq_send_log_campaign_lead_variant"),
        sa.UniqueConstraint("campaign_id", "lead_id", name="uq_send_log_campaign_lead"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"]),
        sa.ForeignKeyConstraint(["lead_id"], ["lead.id"]),
    )
    for name, columns in (("ix_send_log_campaign_status", ["campaign_id", "status"]),
                          ("ix_send_log_status", ["status", "next_attempt_at"]),
                          ("ix_send_log_campaign_created", ["campaign_id", "created_at"]),
                          ("ix_send_log_campaign_claimed", ["campaign_id", "claimed_at"]),
                          ("ix_send_log_claimed", ["claimed_at"]),
                          ("ix_send_log_last_sent", ["campaign_id", "status", "sent_at"]),
                          ("ix_send_log_campaign", ["campaign_id"])):
        sa.Index(name, *(meta.tables["send_log"].c[c] for c in columns))
    sa.Table(
        "variant", meta,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("letter", sa.String(2), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "letter"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"]),
    )


def downgrade():
    for table in ("variant", "send_log", "campaign_lead", "button_press", "timeline_hour",
                  "campaign_state_count", "user", "suppression", "scheduler_lease", "lead", "campaign"):
        op.drop_table(table)
