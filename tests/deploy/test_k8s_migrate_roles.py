"""The Kubernetes migrate Job as the manifests wire it, run for real: its command, with its
environment resolved the way the kubelet would (ConfigMap, plain values, and each secretKeyRef
replaced by a URL of the same role on the test server), against a fresh database.

What it proves: the Job migrates as the owner (DATABASE_OWNER_URL, Secret moodtunes-postgres),
leaves the services' role (DATABASE_URL, Secret moodtunes-app) with row rights and no DDL, and
loads the catalogue, so the services can start with the application role's URL only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
DB_NAME = "k8s_migrate_roles"
APP_ROLE = f"mt_k8s_app_{os.getpid()}"
ROW_RIGHTS = ("SELECT", "INSERT", "UPDATE", "DELETE")


def manifests() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def with_database(url: str, dbname: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{dbname}"


def app_url(owner_url: str) -> str:
    """The owner's URL (postgresql://USER[:PASSWORD]@HOST:PORT/DB) for the services' role."""
    hostpart = owner_url.split("://", 1)[1].split("@", 1)[1]
    return f"postgresql://{APP_ROLE}:k8s-app-{os.getpid()}@{hostpart}"


@pytest.fixture
def fresh_database(postgres):
    def drop():
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {APP_ROLE}")

    drop()
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    owner = with_database(postgres.url, DB_NAME)
    yield {
        ("moodtunes-postgres", "DATABASE_OWNER_URL"): owner,
        ("moodtunes-app", "DATABASE_URL"): app_url(owner),
    }
    drop()


def job_environment(resources: dict, secrets: dict, catalogue: Path) -> dict[str, str]:
    c = resources[("Job", "migrate")]["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for source in c.get("envFrom") or []:
        env.update(resources[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for item in c.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) in secrets, f"migrate reads an unexpected secret {ref}"
            env[item["name"]] = secrets[(ref["name"], ref["key"])]
    env["CATALOGUE_PATH"] = str(catalogue)  # the image's catalogue is the repository's; a sample here
    return env


def test_k8s_migrate_job_migrates_as_owner_and_grants_the_app_role_row_rights(
    fresh_database, catalogue_sample, tmp_path
):
    resources = manifests()
    job = resources[("Job", "migrate")]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL")
    }
    env.update(job_environment(resources, fresh_database, catalogue_sample))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, f"the migrate Job's command failed:\n{run.stdout}\n{run.stderr}"

    owner_url = fresh_database[("moodtunes-postgres", "DATABASE_OWNER_URL")]
    with psycopg.connect(owner_url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert "jobs" in tables and "tracks" in tables
        assert conn.execute("SELECT count(*) FROM tracks").fetchone()[0] > 0, "catalogue not loaded"
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone()
        assert superuser == (False,), "the services' role must exist and not be a superuser"
        for table in tables:
            if table == "alembic_version":
                continue
            for right in ROW_RIGHTS:
                assert conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)", (APP_ROLE, f"public.{table}", right)
                ).fetchone()[0], f"{APP_ROLE} lacks {right} on {table}"
        assert not conn.execute(
            "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (APP_ROLE,)
        ).fetchone()[0], "the services' role can create objects in the schema"

    with psycopg.connect(fresh_database[("moodtunes-app", "DATABASE_URL")]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == APP_ROLE
        conn.execute("SELECT count(*) FROM jobs").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE k8s_should_not_exist (id int)")
