"""`moodtunes keys create|list|revoke` against the real database, checked through the key store
the gateway uses (moodtunes.api_keys)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from moodtunes import api_keys
from moodtunes.db import connection
from moodtunes_cli.cli import app

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(database):
    with connection() as conn:
        conn.execute("DELETE FROM api_keys")  # row rights only: no TRUNCATE
    return CliRunner()


def run(runner: CliRunner, *args: str):
    return runner.invoke(app, ["keys", *args])


def test_create_prints_the_key_once_and_stores_only_its_hash(keys):
    made = run(keys, "create", "--name", "batch job")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()  # stdout is the key alone, for KEY=$(moodtunes keys create)
    assert api_keys.TOKEN.match(token)
    key = api_keys.verify(token)
    assert key is not None and key.name == "batch job" and not key.revoked
    assert key.id in made.stderr and "not shown again" in made.stderr
    with connection() as conn:
        stored = conn.execute("SELECT * FROM api_keys").fetchone()
    assert token not in json.dumps(stored, default=str)  # neither the token
    assert token.split("_", 2)[2] not in json.dumps(stored, default=str)  # nor its secret part
    assert bytes(stored["token_sha256"]) == api_keys.digest(token)


def test_list_shows_ids_and_status_never_the_key(keys):
    first = run(keys, "create", "--name", "first").stdout.strip()
    second = run(keys, "create").stdout.strip()
    listed = run(keys, "list")
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:2] == ["ID", "CREATED"]
    ids = [api_keys.verify(t).id for t in (first, second)]
    assert [line.split()[0] for line in lines[1:]] == ids
    assert first not in listed.stdout and second not in listed.stdout
    assert "active" in lines[1] and lines[1].rstrip().endswith("first")
    as_json = json.loads(run(keys, "list", "--json").stdout)
    assert [(k["id"], k["name"], k["revoked_at"]) for k in as_json] == [
        (ids[0], "first", None),
        (ids[1], "", None),
    ]


def test_revoke_ends_a_key_for_good(keys):
    token = run(keys, "create").stdout.strip()
    key_id = api_keys.verify(token).id
    revoked = run(keys, "revoke", key_id)
    assert revoked.exit_code == 0 and f"API key {key_id} revoked" in revoked.stdout
    assert api_keys.verify(token).revoked
    assert "revoked" in run(keys, "list").stdout.splitlines()[1]
    again = run(keys, "revoke", key_id)  # idempotent: the first revocation time stays
    assert again.exit_code == 0 and api_keys.verify(token).revoked_at == api_keys.list_keys()[0].revoked_at


def test_revoking_an_unknown_key_says_so(keys):
    result = run(keys, "revoke", "0123456789ab")
    assert result.exit_code == 1
    assert result.stderr.strip() == "no API key with ID '0123456789ab' (see `moodtunes keys list`)"
