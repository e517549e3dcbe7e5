"""The campaign page's A/B results (#14) counted from an index: send_log (campaign_id,
status, variant_letter). An index only: no table is rebuilt, no trigger is touched.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NAME = "ix_send_log_campaign_status_variant"


def upgrade():
    if NAME not in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("send_log")}:
        op.create_index(NAME, "send_log", ["campaign_id", "status", "variant_letter"])


def downgrade():
    op.drop_index(NAME, table_name="send_log")
