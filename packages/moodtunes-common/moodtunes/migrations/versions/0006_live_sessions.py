"""Live mood sessions: a session's frames are jobs (same queue, worker and model) that point to it;
the session row holds the smoothed mood, its trend and the current playlist (moodtunes.live).

Revision ID: 0006
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """CREATE TABLE live_sessions (
               id uuid PRIMARY KEY,
               client_key text,
               mode text NOT NULL,
               track_limit integer NOT NULL,
               filters jsonb NOT NULL DEFAULT '{}',
               diversity real,
               window_s real NOT NULL,
               frames jsonb NOT NULL DEFAULT '[]',
               trend jsonb NOT NULL DEFAULT '[]',
               smoothed jsonb,
               playlist jsonb,
               playlist_emotion text,
               playlist_changes integer NOT NULL DEFAULT 0,
               playlist_updated_at timestamptz,
               frames_received integer NOT NULL DEFAULT 0,
               frames_processed integer NOT NULL DEFAULT 0,
               frames_dropped integer NOT NULL DEFAULT 0,
               created_at timestamptz NOT NULL DEFAULT now(),
               updated_at timestamptz NOT NULL DEFAULT now(),
               closed_at timestamptz
           )"""
    )
    op.execute("CREATE INDEX live_sessions_by_update ON live_sessions (updated_at)")
    op.execute("ALTER TABLE jobs ADD COLUMN session_id uuid REFERENCES live_sessions (id) ON DELETE CASCADE")
    op.execute("CREATE INDEX jobs_by_session ON jobs (session_id, created_at) WHERE session_id IS NOT NULL")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS session_id")
    op.execute("DROP TABLE IF EXISTS live_sessions")
