"""Promise holes (#10): claim_heartbeat (per-claim heartbeats) and app_meta (installation id).

Both tables may exist already: a database used by the code of #10 before migrations
existed got them from create_all, and is stamped at the baseline like any unversioned
database. Creating only what is missing makes both paths end in the same schema.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "claim_heartbeat" not in existing:
        op.create_table(
            "claim_heartbeat",
            sa.Column("send_log_id", sa.Integer(), autoincrement=False, nullable=False),
            sa.Column("worker", sa.String(200), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("beat_at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("send_log_id", name=op.f("pk_claim_heartbeat")),
        )
    if "app_meta" not in existing:
        op.create_table(
            "app_meta",
            sa.Column("key", sa.String(64), nullable=False),
            sa.Column("value", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("key", name=op.f("pk_app_meta")),
        )


def downgrade():
    op.drop_table("app_meta")
    op.drop_table("claim_heartbeat")
