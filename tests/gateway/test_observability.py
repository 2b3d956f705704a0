"""The gateway's side of observability, on the real PostgreSQL and Redis: every error answer is
counted by its code on the app's /metrics, and the log lines of a request about a job are JSON
with the job's id."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from moodtunes import jobs
from tests.gateway.test_jobs_api import assert_error, post

pytestmark = pytest.mark.integration


def rejections(client: TestClient) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    return {
        s.labels["code"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "moodtunes_gateway_rejections_total"
    }


def test_each_error_answer_is_counted_by_its_code(client, face_jpeg, settings_env):
    assert rejections(client) == {}
    assert_error(client.get("/v1/jobs/not-a-job"), 404, "job_not_found")  # a route's own error
    assert_error(client.get("/v1/jobs/not-a-job"), 404, "job_not_found")
    assert_error(client.get("/no/such/page"), 404, "not_found")  # Starlette's
    assert_error(client.post("/v1/jobs", data={"mode": "match"}), 422, "missing_image")  # validation
    settings_env(MAX_UPLOAD_BYTES=1000)
    big = client.post(
        "/v1/jobs", content=b"x" * 100_000, headers={"Content-Type": "application/octet-stream"}
    )
    assert_error(big, 413, "file_too_large")  # answered by the body-limit middleware itself
    settings_env(MAX_UPLOAD_BYTES=10_000_000, FER_QUEUE_MAX_DEPTH=1, QUEUE_DEPTH_CACHE_S=0)
    assert post(client, face_jpeg).status_code == 202
    assert_error(post(client, face_jpeg), 503, "queue_full")
    settings_env(FER_QUEUE_MAX_DEPTH=0, RATE_LIMIT_JOBS="1/hour")
    assert post(client, face_jpeg).status_code == 202
    assert_error(post(client, face_jpeg), 429, "rate_limited")
    assert rejections(client) == {
        "job_not_found": 2,
        "not_found": 1,
        "missing_image": 1,
        "file_too_large": 1,
        "queue_full": 1,
        "rate_limited": 1,
    }


def test_an_unexpected_error_is_counted_as_internal_error(client, face_jpeg, monkeypatch):
    job_id = post(client, face_jpeg).json()["id"]  # the session cookie makes this client its owner

    def broken(_job_id):
        raise RuntimeError("boom")

    monkeypatch.setattr(jobs, "poll", broken)
    unsafe = TestClient(client.app, raise_server_exceptions=False, cookies=dict(client.cookies))
    assert_error(unsafe.get(f"/v1/jobs/{job_id}"), 500, "internal_error")
    assert rejections(client) == {"internal_error": 1}


@pytest.fixture
def json_lines(capsys):
    """The JSON records the service's log handler (installed by create_app) wrote since the last call."""

    def read() -> list[dict]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]

    return read


def test_a_jobs_log_lines_are_json_and_carry_its_id(client, face_jpeg, json_lines, monkeypatch):
    json_lines()
    job_id = post(client, face_jpeg).json()["id"]
    [queued] = [r for r in json_lines() if r["message"].startswith(f"job {job_id} queued")]
    assert (queued["job_id"], queued["service"], queued["logger"]) == (job_id, "gateway", "moodtunes.gateway")

    poll = jobs.poll  # a poll of the job logs through the job store: the route named the job first

    def logged_poll(asked: str):
        logging.getLogger("moodtunes.jobs").warning("polling")
        return poll(asked)

    monkeypatch.setattr(jobs, "poll", logged_poll)
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    logging.getLogger("moodtunes.test").warning("outside any request")
    records = json_lines()
    [polling] = [r for r in records if r["message"] == "polling"]
    assert polling["job_id"] == job_id and polling["level"] == "WARNING"
    [outside] = [r for r in records if r["message"] == "outside any request"]
    assert "job_id" not in outside  # the request's job does not leak out of it


def test_a_waiting_posts_lines_after_the_job_is_queued_carry_its_id(
    client, face_jpeg, json_lines, monkeypatch
):
    """The job is named on the request's own context once queued, so what the waiting POST logs
    next (its read of the job; the access log line) names it, as a GET's lines do."""
    from moodtunes_gateway.routes import jobs as routes

    real_enqueue, queued = routes.enqueue_fer, []

    def enqueue_then_fail(job_id, *args, **kwargs):
        real_enqueue(job_id, *args, **kwargs)
        queued.append(job_id)
        jobs.fail(job_id, "no_face", "no face found")

    poll = jobs.poll

    def logged_poll(asked: str):
        logging.getLogger("moodtunes.jobs").warning("reading after the wait")
        return poll(asked)

    monkeypatch.setattr(routes, "enqueue_fer", enqueue_then_fail)
    monkeypatch.setattr(jobs, "poll", logged_poll)
    json_lines()
    r = client.post("/v1/jobs", params={"wait": 5}, files={"image": ("a.jpg", face_jpeg)})
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text
    [read] = [rec for rec in json_lines() if rec["message"] == "reading after the wait"]
    assert read["job_id"] == queued[0]
