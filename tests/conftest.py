"""Suite-wide fixtures: real PostgreSQL (pgvector) and Redis servers on loopback, started once per
run from the same code `make up` uses, and (for end-to-end tests) the whole stack as processes.

As under `make up`, PostgreSQL takes passwords only, migrations and the catalogue load run as the
owner role, and everything else (every test, every service process) connects as the application
role, which has row rights and no DDL."""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from moodtunes.config import REPO_ROOT, get_settings

CATALOGUE_SAMPLE_ROWS = 3000  # real rows of the shipped catalogue; enough for matching, loads in ~1 s


def _reset_settings(**env):
    os.environ.update(env)
    get_settings.cache_clear()
    from moodtunes import db

    db.close_pools()


@pytest.fixture(scope="session")
def servers_root() -> Path:
    """Where the suite's servers keep their data: outside pytest's temporary root, because a suite
    run as root runs PostgreSQL as another user, who must traverse every parent folder, and pytest
    takes those rights off its root (0700) whenever another pytest session starts."""
    root = Path(tempfile.mkdtemp(prefix="moodtunes-servers-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(servers_root):
    from moodtunes_cli.localstack import Postgres, free_port

    pg = Postgres(servers_root / "postgres", free_port()).start()
    yield pg
    from moodtunes import db

    db.close_pools()
    pg.stop()


@pytest.fixture(scope="session")
def redis_server(servers_root):
    from moodtunes_cli.localstack import Redis, free_port

    r = Redis(servers_root / "redis", free_port()).start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def catalogue_sample(tmp_path_factory) -> Path:
    """The first rows of the shipped catalogue, as a plain CSV."""
    src = REPO_ROOT / "data" / "catalogue" / "tracks_catalogue.csv.gz"
    out = tmp_path_factory.mktemp("catalogue") / "sample.csv"
    with gzip.open(src, "rt", newline="", encoding="utf-8") as f, open(out, "w", newline="") as g:
        reader, writer = csv.reader(f), csv.writer(g)
        for i, row in enumerate(reader):
            if i > CATALOGUE_SAMPLE_ROWS:
                break
            writer.writerow(row)
    return out


@pytest.fixture(scope="session")
def database(postgres, redis_server, catalogue_sample):
    """Migrated database with the catalogue sample loaded; env points every component at the servers,
    DATABASE_URL as the application role. Returns that URL."""
    _reset_settings(DATABASE_URL=postgres.app_url, REDIS_URL=redis_server.url)
    from moodtunes import migrations
    from moodtunes_recommender import catalogue

    migrations.upgrade(postgres.owner_url, app_url=postgres.app_url)  # as `make up` does
    catalogue.load_csv(catalogue_sample, database_url=postgres.owner_url, progress=False)
    from moodtunes import db

    db.close_pools()  # no owner connection stays open: tests act as the application role only
    return postgres.app_url


@pytest.fixture
def clean_jobs(database, postgres):
    """No jobs (nor what hangs off them); TRUNCATE is the owner's, the application role may not."""
    import psycopg

    with psycopg.connect(postgres.owner_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
    yield


@pytest.fixture(scope="session")
def face_jpeg() -> bytes:
    """A public-domain photo with one face (NASA astronaut portrait shipped with scikit-image)."""
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "JPEG", quality=92)
    return buf.getvalue()
