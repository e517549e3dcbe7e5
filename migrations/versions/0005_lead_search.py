"""Lead search that folds Polish letters (#14): lead.search holds the searchable fields
case-folded in Python (SQLite's LIKE folds ASCII only), filled in for every existing lead.

SQLite adds the column in place (no "move and copy"), so lead's triggers-free table and the
derived tables' triggers are untouched (env.py re-checks them anyway). Added only when
missing, as in 0002-0004.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from models import SEARCH_FIELDS, lead_search_text

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    if "search" not in {c["name"] for c in sa.inspect(bind).get_columns("lead")}:
        with op.batch_alter_table("lead", schema=None) as batch_op:
            batch_op.add_column(sa.Column("search", sa.Text(), nullable=True))
    columns = (sa.column(name) for name in ("id", "search", *SEARCH_FIELDS))
    lead = sa.table("lead", *columns)
    rows = bind.execute(sa.select(lead).where(lead.c.search.is_(None))).mappings().all()
    if rows:
        bind.execute(lead.update().where(lead.c.id == sa.bindparam("b_id"))
                     .values(search=sa.bindparam("b_search")),
                     [{"b_id": row["id"], "b_search": lead_search_text(row)} for row in rows])


def downgrade():
    with op.batch_alter_table("lead", schema=None) as batch_op:
        batch_op.drop_column("search")
