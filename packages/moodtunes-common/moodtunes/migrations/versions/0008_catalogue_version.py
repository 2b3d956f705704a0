"""`catalogue_version`: one row whose number goes up with every statement that changes `tracks`
(a statement trigger, so a COPY of a million rows bumps it once). A recommender worker keeps the
catalogue's searchable columns in memory (moodtunes_recommender.snapshot) and compares this number
before using them: a changed catalogue is reloaded, never searched stale.

Revision ID: 0008
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """CREATE TABLE catalogue_version (
               id boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
               version bigint NOT NULL)"""
    )
    op.execute("INSERT INTO catalogue_version (version) VALUES (1)")
    op.execute(
        """CREATE FUNCTION catalogue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               UPDATE catalogue_version SET version = version + 1;
               RETURN NULL;
           END $$"""
    )
    op.execute(
        """CREATE TRIGGER tracks_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tracks
           FOR EACH STATEMENT EXECUTE FUNCTION catalogue_changed()"""
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS tracks_changed ON tracks")
    op.execute("DROP FUNCTION IF EXISTS catalogue_changed()")
    op.execute("DROP TABLE IF EXISTS catalogue_version")
