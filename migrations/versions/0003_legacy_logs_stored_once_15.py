"""Legacy-log forensics (#15): uploaded logs parsed once and stored (legacy_log, legacy_event).

New tables only; no existing table changes, so no trigger is touched (env.py re-checks
them after every run anyway). Created only when missing, as in 0002: an unversioned
database made by create_all of newer code is stamped at the baseline and has them already.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    if "legacy_log" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table('legacy_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('ready', sa.Boolean(), nullable=False),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.Column('duplicate_sends', sa.Integer(), nullable=False),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_legacy_log'))
    )
    op.create_table('legacy_event',
    sa.Column('log_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('campaign', sa.String(length=200), nullable=False),
    sa.Column('lead', sa.String(length=320), nullable=False),
    sa.Column('variant', sa.String(length=50), nullable=False),
    sa.Column('step', sa.String(length=50), nullable=False),
    sa.Column('trigger', sa.String(length=100), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=False),
    sa.Column('duplicate', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['log_id'], ['legacy_log.id'], name='fk_legacy_event_log', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('log_id', 'seq', name=op.f('pk_legacy_event')),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('legacy_event', schema=None) as batch_op:
        batch_op.create_index('ix_legacy_event_at', ['log_id', 'at'], unique=False)


def downgrade():
    with op.batch_alter_table('legacy_event', schema=None) as batch_op:
        batch_op.drop_index('ix_legacy_event_at')

    op.drop_table('legacy_event')
    op.drop_table('legacy_log')
