"""Which faces drive a job's music: the largest face (`face`, every job so far) or all of them
(`group`). Stored with the job's other options so a re-sent job keeps it.

Revision ID: 0005
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE jobs ADD COLUMN drive text NOT NULL DEFAULT 'face' CHECK (drive IN ('face', 'group'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS drive")
