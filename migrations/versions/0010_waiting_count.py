"""Waiting for the next step (#17): campaign_state_count is keyed by the counted state
(storage.schema.counted_state): a pending enrollment at a step after the first counts as
`waiting`, apart from the leads not contacted yet. No table changes: the trigger set is
re-created (its UPDATE trigger now also fires on `step`) and the counts recomputed, in
this migration's transaction; env.py's finish then re-installs and checks both sets as
after every run. Downgrade changes nothing: env.py's finish installs the running code's
triggers whatever the target, and 0009's code, once started, finds them differing from its
own when its create_all runs (init-db) and re-installs its set with a recount.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

from storage import schema

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    conn = op.get_bind()
    schema.sync_triggers(conn, schema.COUNTS, force=True)
    schema.recount(conn)


def downgrade():
    pass
