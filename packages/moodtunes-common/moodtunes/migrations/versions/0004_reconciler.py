"""What the reconciler needs: when and how often a stuck job was re-sent, the error a worker was
waiting on, and an index to find finished jobs past their retention.

Revision ID: 0004
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN requeues integer NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE jobs ADD COLUMN requeued_at timestamptz")
    op.execute("ALTER TABLE jobs ADD COLUMN last_error text")
    op.execute("CREATE INDEX jobs_finished ON jobs (finished_at) WHERE status IN ('done', 'failed')")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS jobs_finished")
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS last_error")
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS requeued_at")
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS requeues")
