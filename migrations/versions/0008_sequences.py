"""Sequences (#17): a campaign's steps, each sent at most once per lead, in order.

New table campaign_step. New columns: campaign.country and stop_company_on_reply;
variant.step (its UNIQUE becomes (campaign_id, step, letter)); campaign_lead.step, due_at,
stopped_at, stop_reason (and an index for the claim's "next due" lookup); send_log.step,
whose UNIQUEs become (campaign_id, lead_id, step) and (campaign_id, lead_id, step,
variant_letter): the database refuses a second row of a step.

Upgrade keeps every row's meaning: every existing campaign gets one step (position 1, no
delay), every variant, enrollment and send is step 1; a pending enrollment is due at once
(due_at NULL, as for any new step-1 enrollment). Tables, columns and indexes are created
only when missing (as 0002-0007 do). send_log and variant are rebuilt (batch "move and
copy": SQLite cannot change a UNIQUE in place); env.py's finish re-installs send_log's
triggers and checks them.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from models import NAMING_CONVENTION

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _columns(table):
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def _indexes(table):
    return {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table)}


def _uniques(table):
    """The table's UNIQUE constraints as {columns: name} (None for an unnamed one)."""
    return {tuple(uq["column_names"]): uq["name"]
            for uq in sa.inspect(op.get_bind()).get_unique_constraints(table)}


def _step_table():
    op.create_table(
        "campaign_step",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("delay_amount", sa.Integer(), nullable=False),
        sa.Column("delay_unit", sa.String(16), nullable=False),
        sa.Column("business_days", sa.Boolean(), nullable=False),
        sa.Column("new_thread", sa.Boolean(), nullable=False),
        sa.Column("archived_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"],
                                name=op.f("fk_campaign_step_campaign_id_campaign")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_step")),
        sa.UniqueConstraint("campaign_id", "position", name="uq_campaign_step_position"),
    )


def _campaign_columns():
    have = _columns("campaign")
    with op.batch_alter_table("campaign", schema=None, recreate="never") as batch_op:
        if "country" not in have:
            batch_op.add_column(sa.Column("country", sa.String(2), nullable=False, server_default="PL"))
        if "stop_company_on_reply" not in have:
            batch_op.add_column(sa.Column("stop_company_on_reply", sa.Boolean(), nullable=False,
                                          server_default="0"))


def _enrollment_columns():
    have = _columns("campaign_lead")
    with op.batch_alter_table("campaign_lead", schema=None, recreate="never") as batch_op:
        if "step" not in have:
            batch_op.add_column(sa.Column("step", sa.Integer(), nullable=False, server_default="1"))
        for name, kind in (("due_at", sa.DateTime()), ("stopped_at", sa.DateTime()),
                           ("stop_reason", sa.String(50))):
            if name not in have:
                batch_op.add_column(sa.Column(name, kind, nullable=True))
    if "ix_campaign_lead_due" not in _indexes("campaign_lead"):
        op.create_index("ix_campaign_lead_due", "campaign_lead", ["campaign_id", "state", "due_at"])


def _variant_step():
    if "step" in _columns("variant"):
        return
    # 3a618c4 left variant's UNIQUE unnamed: reflected under the models' convention name.
    with op.batch_alter_table("variant", schema=None, naming_convention=NAMING_CONVENTION) as batch_op:
        batch_op.add_column(sa.Column("step", sa.Integer(), nullable=False, server_default="1"))
        batch_op.drop_constraint("uq_variant_campaign_id_letter", type_="unique")
        batch_op.create_unique_constraint("uq_variant_campaign_step_letter",
                                          ["campaign_id", "step", "letter"])


def _send_log_step():
    if "step" in _columns("send_log"):
        return
    old = _uniques("send_log")
    with op.batch_alter_table("send_log", schema=None, naming_convention=NAMING_CONVENTION) as batch_op:
        batch_op.add_column(sa.Column("step", sa.Integer(), nullable=False, server_default="1"))
        for columns in (("campaign_id", "lead_id", "variant_letter"), ("campaign_id", "lead_id")):
            name = old.get(columns) or "uq_send_log_" + "_".join(columns)
            batch_op.drop_constraint(name, type_="unique")
        batch_op.create_unique_constraint("uq_send_log_campaign_lead_step_variant",
                                          ["campaign_id", "lead_id", "step", "variant_letter"])
        batch_op.create_unique_constraint("uq_send_log_campaign_lead_step",
                                          ["campaign_id", "lead_id", "step"])


def upgrade():
    conn = op.get_bind()
    if "campaign_step" not in set(sa.inspect(conn).get_table_names()):
        _step_table()
    _campaign_columns()
    _enrollment_columns()
    _variant_step()
    _send_log_step()
    # Every campaign is a one-step sequence: step 1, no delay, in the same thread.
    conn.execute(sa.text(
        "INSERT INTO campaign_step (campaign_id, position, delay_amount, delay_unit, business_days, "
        "new_thread) "
        "SELECT id, 1, 0, 'days', FALSE, FALSE FROM campaign WHERE NOT EXISTS "
        "(SELECT 1 FROM campaign_step s WHERE s.campaign_id = campaign.id)"))


def downgrade():
    with op.batch_alter_table("send_log", schema=None) as batch_op:
        batch_op.drop_constraint("uq_send_log_campaign_lead_step", type_="unique")
        batch_op.drop_constraint("uq_send_log_campaign_lead_step_variant", type_="unique")
        batch_op.create_unique_constraint("uq_send_log_campaign_lead_variant",
                                          ["campaign_id", "lead_id", "variant_letter"])
        batch_op.create_unique_constraint("uq_send_log_campaign_lead", ["campaign_id", "lead_id"])
        batch_op.drop_column("step")
    with op.batch_alter_table("variant", schema=None) as batch_op:
        batch_op.drop_constraint("uq_variant_campaign_step_letter", type_="unique")
        batch_op.create_unique_constraint("uq_variant_campaign_id_letter", ["campaign_id", "letter"])
        batch_op.drop_column("step")
    op.drop_index("ix_campaign_lead_due", table_name="campaign_lead")
    with op.batch_alter_table("campaign_lead", schema=None) as batch_op:
        for name in ("stop_reason", "stopped_at", "due_at", "step"):
            batch_op.drop_column(name)
    with op.batch_alter_table("campaign", schema=None) as batch_op:
        batch_op.drop_column("stop_company_on_reply")
        batch_op.drop_column("country")
    op.drop_table("campaign_step")
