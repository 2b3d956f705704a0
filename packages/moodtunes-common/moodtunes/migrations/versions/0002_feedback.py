"""Listener feedback on recommended tracks, and indexes for the playlist filters.

Revision ID: 0002
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE feedback (
        client_key text NOT NULL,
        mode       text NOT NULL,
        track_id   text NOT NULL,
        liked      boolean NOT NULL,
        job_id     uuid REFERENCES jobs (id) ON DELETE SET NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (client_key, mode, track_id)
    )""")
    op.execute("ALTER TABLE jobs ADD COLUMN diversity real")
    op.execute("CREATE INDEX tracks_year ON tracks (year)")
    op.execute("CREATE INDEX tracks_popularity ON tracks (popularity)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS tracks_popularity")
    op.execute("DROP INDEX IF EXISTS tracks_year")
    op.execute("DROP TABLE IF EXISTS feedback")
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS diversity")
