"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Checklist (README: Operations): add this revision id to storage/revision.py's REVISIONS
(the claim's schema check; tests/test_migrations.py fails until you do). SQLite runs
ALTERs in batch mode ("move and copy"), which drops the table's triggers: env.py
re-installs and re-checks the derived-table triggers after every run. To alter one of the
UNIQUEs 3a618c4 left unnamed, pass naming_convention=models.NAMING_CONVENTION to
batch_alter_table.
"""
from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

# revision identifiers, used by Alembic.
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
