"""Accounts (#13): a session generation per user (logout, a password change and "log out
everywhere" end every session) and a disabled flag.

Columns added with server defaults, so existing users keep working (generation 0, enabled).
SQLite adds a column in place (no "move and copy", so the table's triggers are untouched;
env.py re-checks them anyway). Added only when missing, as 0002 and 0003 create only what
is missing: an unversioned database made by create_all of newer code has them already.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("user")}
    with op.batch_alter_table("user", schema=None) as batch_op:
        if "session_generation" not in existing:
            batch_op.add_column(sa.Column("session_generation", sa.Integer(), server_default="0",
                                          nullable=False))
        if "disabled" not in existing:
            batch_op.add_column(sa.Column("disabled", sa.Boolean(), server_default="0", nullable=False))


def downgrade():
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("disabled")
        batch_op.drop_column("session_generation")
