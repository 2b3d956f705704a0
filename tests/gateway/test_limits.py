"""Per-client rate limits (Redis), the cap on a client's unfinished jobs (PostgreSQL) and
backpressure from the FER queue's depth, each configured tiny here (real PostgreSQL/Redis)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from moodtunes import jobs
from moodtunes.config import Settings
from moodtunes.db import connection
from tests.gateway.test_jobs_api import assert_error, bearer, post
from tests.gateway.test_options_and_feedback import finish

pytestmark = pytest.mark.integration


def job_count() -> int:
    with connection() as conn:
        return conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"]


def assert_retry_after(r, at_most: int) -> int:
    seconds = int(r.headers["Retry-After"])
    assert 1 <= seconds <= at_most
    return seconds


def test_defaults_are_generous():
    default = {name: field.default for name, field in Settings.model_fields.items()}
    assert default["rate_limit_jobs"] == "120/minute" and default["rate_limit_feedback"] == "300/minute"
    assert default["max_unfinished_jobs_per_client"] == 20 and default["fer_queue_max_depth"] >= 100


def test_job_creation_is_rate_limited_per_key(client, face_jpeg, new_key, settings_env):
    settings_env(RATE_LIMIT_JOBS="2/hour", MAX_UNFINISHED_JOBS_PER_CLIENT=0)
    _, a = new_key()
    _, b = new_key()
    assert [post(client, face_jpeg, headers=bearer(a)).status_code for _ in range(2)] == [202, 202]
    r = post(client, face_jpeg, headers=bearer(a))
    assert_error(r, 429, "rate_limited")
    assert_retry_after(r, 3600)
    assert job_count() == 2  # the refused request made nothing
    assert post(client, face_jpeg, headers=bearer(b)).status_code == 202  # another client is unaffected


def test_clients_without_a_session_are_counted_by_ip(client, face_jpeg, settings_env):
    """Dropping the cookie does not dodge the limit: a request without a session counts for its IP."""
    settings_env(RATE_LIMIT_JOBS="2/hour", MAX_UNFINISHED_JOBS_PER_CLIENT=0)
    for _ in range(2):
        assert post(TestClient(client.app), face_jpeg).status_code == 202  # a fresh cookie jar each time
    assert_error(post(TestClient(client.app), face_jpeg), 429, "rate_limited")


def test_feedback_is_rate_limited(client, face_jpeg, settings_env):
    settings_env(RATE_LIMIT_FEEDBACK="1/hour")
    job_id = post(client, face_jpeg).json()["id"]
    finish(job_id, ["t1", "t2"])
    rate = {"track_id": "t1", "liked": True}
    assert client.post(f"/v1/jobs/{job_id}/feedback", json=rate).status_code == 201
    r = client.post(f"/v1/jobs/{job_id}/feedback", json=rate)
    assert_error(r, 429, "rate_limited")
    assert_retry_after(r, 3600)


def test_an_empty_limit_turns_it_off(client, face_jpeg, settings_env):
    settings_env(RATE_LIMIT_JOBS="", MAX_UNFINISHED_JOBS_PER_CLIENT=0)
    assert {post(client, face_jpeg).status_code for _ in range(4)} == {202}


def test_a_client_may_have_only_so_many_unfinished_jobs(client, face_jpeg, new_key, settings_env):
    settings_env(MAX_UNFINISHED_JOBS_PER_CLIENT=2)
    _, token = new_key()
    first, _second = (post(client, face_jpeg, headers=bearer(token)).json()["id"] for _ in range(2))
    r = post(client, face_jpeg, headers=bearer(token))
    assert_error(r, 429, "too_many_jobs")
    assert_retry_after(r, 60)
    assert job_count() == 2
    assert post(client, face_jpeg).status_code == 202  # another client (a session) is unaffected
    finish(first, ["t1"])  # one finishes: room for one more
    assert post(client, face_jpeg, headers=bearer(token)).status_code == 202
    assert_error(post(client, face_jpeg, headers=bearer(token)), 429, "too_many_jobs")


def test_a_deep_fer_queue_answers_queue_full(client, face_jpeg, settings_env):
    settings_env(FER_QUEUE_MAX_DEPTH=1, QUEUE_DEPTH_CACHE_S=0)
    first = post(client, face_jpeg)  # the queue was empty
    assert first.status_code == 202
    r = post(client, face_jpeg)  # one task waits now: at the bound
    assert_error(r, 503, "queue_full")
    assert_retry_after(r, 60)
    assert job_count() == 1 and jobs.get(first.json()["id"])["status"] == "queued"


def test_the_queue_depth_is_read_at_most_once_a_cache_period(client, face_jpeg, settings_env):
    """A cheap check: within queue_depth_cache_s the gateway reuses what it read (here: empty)."""
    settings_env(FER_QUEUE_MAX_DEPTH=1, QUEUE_DEPTH_CACHE_S=3600)
    assert [post(client, face_jpeg).status_code for _ in range(2)] == [202, 202]
