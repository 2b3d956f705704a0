"""Gateway test fixtures: the in-process app against the suite's real PostgreSQL and Redis."""

import pytest
import redis
from fastapi.testclient import TestClient

from moodtunes.config import get_settings


@pytest.fixture(autouse=True)
def patient_database_wait(monkeypatch):
    """On this shared, busy test machine a new pooled connection (SCRAM login) can take longer than
    the gateway's 0.5 s wait for one: the tests wait like a worker (10 s), and the tests of a dead
    database set the real default back (test_stalls.py)."""
    monkeypatch.setenv("GATEWAY_DB_TIMEOUT_S", "10")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def client(clean_jobs, redis_server):
    from moodtunes_gateway.main import create_app

    redis.Redis.from_url(redis_server.url).flushdb()
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def settings_env(monkeypatch):
    """settings_env(NAME=value, ...): the settings as if those environment variables were set,
    for the rest of the test (an app made afterwards also reads them at creation)."""

    def apply(**env):
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        get_settings.cache_clear()

    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def clean_keys(database):
    from moodtunes.db import connection

    with connection() as conn:
        conn.execute("DELETE FROM api_keys")  # row rights only: no TRUNCATE
    yield


@pytest.fixture
def new_key(clean_keys):
    """new_key() -> (ApiKey, token): a fresh API key in the real database."""
    from moodtunes import api_keys

    return api_keys.create
