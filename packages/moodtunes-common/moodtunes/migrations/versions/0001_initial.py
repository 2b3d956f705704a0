"""Jobs (system of record), their uploaded images, and the track catalogue with a pgvector index.

Revision ID: 0001
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("""
    CREATE TABLE jobs (
        id            uuid PRIMARY KEY,
        status        text NOT NULL CHECK (status IN
                      ('queued', 'detecting', 'classifying', 'recommending', 'done', 'failed')),
        mode          text NOT NULL,
        track_limit   integer NOT NULL CHECK (track_limit BETWEEN 1 AND 50),
        filters       jsonb NOT NULL DEFAULT '{}'::jsonb,
        client_key    text,
        image_type    text,
        image_bytes   integer,
        image_width   integer,
        image_height  integer,
        faces         jsonb,
        chosen_face   integer,
        model         jsonb,
        recommendation jsonb,
        error_code    text,
        error_message text,
        attempts      integer NOT NULL DEFAULT 0,
        created_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz NOT NULL DEFAULT now(),
        started_at    timestamptz,
        finished_at   timestamptz
    )""")
    op.execute("CREATE INDEX jobs_unfinished ON jobs (updated_at) WHERE status NOT IN ('done', 'failed')")
    # Kept apart so job reads never drag image bytes; deleted once the FER stage is over.
    op.execute("""
    CREATE TABLE job_images (
        job_id  uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
        content bytea NOT NULL
    )""")
    op.execute("""
    CREATE TABLE tracks (
        track_id         text PRIMARY KEY,
        name             text NOT NULL,
        artists          text NOT NULL,
        year             integer,
        popularity       integer,
        genre            text,
        danceability     real NOT NULL,
        energy           real NOT NULL,
        valence          real NOT NULL,
        tempo            real NOT NULL,
        mode             smallint NOT NULL,
        acousticness     real,
        instrumentalness real,
        speechiness      real,
        liveness         real,
        loudness         real,
        key              smallint,
        duration_ms      integer,
        decade           integer,
        explicit         boolean,
        primary_source   text,
        sources          text,
        song_key         text NOT NULL,
        -- (danceability, energy, valence, tempo / 244, mode): the published matching space
        features         vector(5) NOT NULL,
        loaded_at        timestamptz NOT NULL DEFAULT now()
    )""")
    # One HNSW graph per musical mode: mode is 0/1, so the catalogue is two clusters a distance of
    # 1 apart, and a single graph has too few edges between them for greedy search to cross.
    # Queries search both partitions and merge (see moodtunes_recommender.matching).
    for name, mode in (("minor", 0), ("major", 1)):
        op.execute(
            f"CREATE INDEX tracks_features_hnsw_{name} ON tracks "
            f"USING hnsw (features vector_l2_ops) WHERE mode = {mode}"
        )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS tracks")
    op.execute("DROP TABLE IF EXISTS job_images")
    op.execute("DROP TABLE IF EXISTS jobs")
