"""API keys of API clients (stored as hashes only), and the index the gateway's per-client cap on
unfinished jobs counts with.

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The token itself (mt_<id>_<secret>) is shown once at creation and never stored: a leaked
    # table lets nobody in. `id` is public (listed, revoked by, recorded as the owner "key:<id>").
    op.execute("""
    CREATE TABLE api_keys (
        id           text PRIMARY KEY,
        name         text NOT NULL DEFAULT '',
        token_sha256 bytea NOT NULL UNIQUE,
        created_at   timestamptz NOT NULL DEFAULT now(),
        last_used_at timestamptz,
        revoked_at   timestamptz
    )""")
    # Same predicate as jobs_unfinished, so "count this client's unfinished jobs" is an index scan.
    op.execute(
        "CREATE INDEX jobs_unfinished_by_client ON jobs (client_key) WHERE status NOT IN ('done', 'failed')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS jobs_unfinished_by_client")
    op.execute("DROP TABLE IF EXISTS api_keys")
