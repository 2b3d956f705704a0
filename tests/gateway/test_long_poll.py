"""Long polling (`GET /v1/jobs/{id}?wait=S`): one request answers when the job finishes, woken by
PostgreSQL's NOTIFY (migration 0007's trigger), not by re-reading the job in a loop."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from moodtunes import jobs
from moodtunes_gateway import finished
from tests.gateway.test_jobs_api import assert_error, post

pytestmark = pytest.mark.integration


def finish_later(job_id: str, after_s: float, finish) -> dict:
    """Runs `finish(job_id)` in another thread after `after_s`; the dict gets when it started
    (set before: the answer may come before `finish` returns)."""
    when: dict = {}

    def run():
        time.sleep(after_s)
        when["t"] = time.monotonic()
        finish(job_id)

    threading.Thread(target=run, daemon=True).start()
    return when


def test_a_waiting_request_answers_as_soon_as_its_job_finishes(client, face_jpeg, monkeypatch):
    monkeypatch.setattr(finished, "RECHECK_S", 30.0)  # only the notification can wake it in time
    url = post(client, face_jpeg).json()["status_url"]
    client.get(url, params={"wait": 0.2})  # the listener is up (it starts with the first wait)
    when = finish_later(url.rsplit("/", 1)[1], 0.8, lambda j: jobs.fail(j, "no_face", "no face found"))
    t0 = time.monotonic()
    r = client.get(url, params={"wait": 20})
    answered = time.monotonic()
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text
    assert r.json()["error"]["code"] == "no_face"
    assert answered - t0 >= 0.7  # it waited for the job ...
    assert answered - when["t"] < 2.0  # ... and answered when it finished, not at its 20 s


def test_a_job_still_running_is_answered_after_the_wait_with_its_current_status(client, face_jpeg):
    url = post(client, face_jpeg).json()["status_url"]
    t0 = time.monotonic()
    r = client.get(url, params={"wait": 0.6})
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert 0.6 <= time.monotonic() - t0 < 5.0
    jobs.fail(url.rsplit("/", 1)[1], "no_face", "no face found")
    t0 = time.monotonic()
    assert client.get(url, params={"wait": 20}).json()["status"] == "failed"  # finished: at once
    assert time.monotonic() - t0 < 2.0


def test_a_wait_outside_its_range_is_refused_and_an_unknown_job_is_not_waited_for(client, face_jpeg):
    url = post(client, face_jpeg).json()["status_url"]
    for wait in (-1, finished.MAX_WAIT_S + 1, "soon"):
        assert_error(client.get(url, params={"wait": wait}), 422, "invalid_request")
    t0 = time.monotonic()
    assert_error(client.get(f"/v1/jobs/{uuid.uuid4()}", params={"wait": 20}), 404, "job_not_found")
    assert time.monotonic() - t0 < 2.0


def test_the_listener_comes_back_after_the_database_drops_its_connection(client, face_jpeg, monkeypatch):
    """A restarted database (here: the listener's backend terminated while a request waits) must
    not leave that request asleep until its deadline: the listener reconnects by itself and a later
    finish still wakes it."""
    from moodtunes.db import connection

    monkeypatch.setattr(finished, "RECHECK_S", 30.0)
    url = post(client, face_jpeg).json()["status_url"]
    answer: dict = {}
    waiting = threading.Thread(target=lambda: answer.update(r=client.get(url, params={"wait": 20})))
    waiting.start()
    time.sleep(1.0)  # the request waits, the listener is up
    with connection() as conn:
        gone = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
            "WHERE query = %s AND pid <> pg_backend_pid()",
            (f"LISTEN {jobs.FINISHED_CHANNEL}",),
        ).fetchone()["n"]
    assert gone == 1
    when = finish_later(url.rsplit("/", 1)[1], 2.5, lambda j: jobs.fail(j, "no_face", "no face found"))
    waiting.join(timeout=30)
    assert answer["r"].json()["status"] == "failed"
    assert time.monotonic() - when["t"] < 2.0


def test_a_finished_job_is_read_once_and_a_waited_one_twice(client, face_jpeg, monkeypatch):
    """With the listener up, a long poll reads its job once after it starts listening (a job already
    final answers from that read) and once more when woken: no read before it listens."""
    url = post(client, face_jpeg).json()["status_url"]
    job_id = url.rsplit("/", 1)[1]
    client.get(url, params={"wait": 0.2})  # the listener is up
    reads = []
    real_poll = jobs.poll
    monkeypatch.setattr(jobs, "poll", lambda j: reads.append(j) or real_poll(j))
    monkeypatch.setattr(finished, "RECHECK_S", 30.0)
    finish_later(job_id, 0.5, lambda j: jobs.fail(j, "no_face", "no face found"))
    assert client.get(url, params={"wait": 20}).json()["status"] == "failed"
    assert reads == [job_id, job_id]
    reads.clear()
    assert client.get(url, params={"wait": 20}).json()["status"] == "failed"
    assert reads == [job_id]


def test_while_the_listener_reconnects_a_finished_job_answers_at_once(client, face_jpeg, monkeypatch):
    url = post(client, face_jpeg).json()["status_url"]
    jobs.fail(url.rsplit("/", 1)[1], "no_face", "no face found")
    monkeypatch.setattr(finished, "READY_WAIT_S", 10.0)
    monkeypatch.setattr(finished.FinishedJobs, "_start", lambda self: None)  # the listener never comes
    monkeypatch.setattr(finished.finished_jobs, "_ready", asyncio.Event())
    t0 = time.monotonic()
    assert client.get(url, params={"wait": 20}).json()["status"] == "failed"
    assert time.monotonic() - t0 < 2.0


# --- POST /v1/jobs?wait=S: submit and wait in one request ------------------------------------------


@pytest.fixture
def finish_each_queued_job(monkeypatch):
    """Publishes each new job for real, then stands in for the workers: `finishing["with"](job_id)`
    runs `finishing["after_s"]` later (the default fails the job with no_face)."""
    from moodtunes_gateway.routes import jobs as routes

    finishing = {"after_s": 0.5, "with": lambda j: jobs.fail(j, "no_face", "no face found"), "ids": []}
    real_enqueue = routes.enqueue_fer

    def enqueue_then_finish(job_id, *args, **kwargs):
        real_enqueue(job_id, *args, **kwargs)
        finishing["ids"].append(job_id)
        finishing["when"] = finish_later(job_id, finishing["after_s"], finishing["with"])

    monkeypatch.setattr(routes, "enqueue_fer", enqueue_then_finish)
    return finishing


def test_a_waiting_post_answers_with_the_finished_job(client, face_jpeg, finish_each_queued_job, monkeypatch):
    """One request: the job comes back whole (200) as soon as it finishes, with its Location and the
    new session's cookie, which then owns it."""
    monkeypatch.setattr(finished, "RECHECK_S", 30.0)  # only the notification can wake it in time
    client.cookies.clear()
    t0 = time.monotonic()
    r = client.post("/v1/jobs", params={"wait": 20}, files={"image": ("a.jpg", face_jpeg)})
    answered = time.monotonic()
    assert r.status_code == 200, r.text
    job = r.json()
    [job_id] = finish_each_queued_job["ids"]
    assert (job["id"], job["status"], job["error"]["code"]) == (job_id, "failed", "no_face")
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert "moodtunes_session=" in r.headers["set-cookie"]
    assert answered - t0 >= 0.4  # it waited for the job ...
    assert answered - finish_each_queued_job["when"]["t"] < 2.0  # ... and answered when it finished
    again = client.get(f"/v1/jobs/{job_id}")  # the cookie it set owns the job
    assert again.status_code == 200 and again.json() == job


def test_a_waiting_post_whose_job_is_still_running_is_the_usual_202(
    client, face_jpeg, finish_each_queued_job
):
    finish_each_queued_job["after_s"] = 3.0
    t0 = time.monotonic()
    r = client.post("/v1/jobs", params={"wait": 0.6}, files={"image": ("a.jpg", face_jpeg)})
    assert r.status_code == 202, r.text
    assert 0.6 <= time.monotonic() - t0 < 2.5
    accepted = r.json()
    assert set(accepted) == {"id", "status", "status_url", "created_at"} and accepted["status"] == "queued"
    assert client.get(accepted["status_url"], params={"wait": 20}).json()["status"] == "failed"


def test_a_waiting_post_reads_its_job_only_once_woken(client, face_jpeg, finish_each_queued_job, monkeypatch):
    """Listening starts before the job is queued, so nothing can finish unseen: no read before the
    notification, one after it."""
    post(client, face_jpeg)
    client.get(post(client, face_jpeg).json()["status_url"], params={"wait": 0.2})  # the listener is up
    finish_each_queued_job["ids"].clear()
    reads = []
    real_poll = jobs.poll
    monkeypatch.setattr(jobs, "poll", lambda j: reads.append(j) or real_poll(j))
    monkeypatch.setattr(finished, "RECHECK_S", 30.0)
    r = client.post("/v1/jobs", params={"wait": 20}, files={"image": ("a.jpg", face_jpeg)})
    assert r.status_code == 200 and r.json()["status"] == "failed"
    assert reads == finish_each_queued_job["ids"]  # exactly one read, of that job


def test_a_waiting_post_that_cannot_read_its_job_still_answers_202(
    client, face_jpeg, finish_each_queued_job, monkeypatch
):
    """The job is queued either way: a database that fails during the wait must not turn an
    accepted job into an error the client would submit again."""
    import psycopg

    def unreachable(job_id):
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(jobs, "poll", unreachable)
    r = client.post("/v1/jobs", params={"wait": 20}, files={"image": ("a.jpg", face_jpeg)})
    assert r.status_code == 202, r.text
    assert r.json()["id"] == finish_each_queued_job["ids"][0]


def test_a_post_wait_outside_its_range_is_refused_before_any_job_is_made(
    client, face_jpeg, finish_each_queued_job
):
    for wait in (-1, finished.MAX_WAIT_S + 1, "soon"):
        r = client.post("/v1/jobs", params={"wait": wait}, files={"image": ("a.jpg", face_jpeg)})
        assert_error(r, 422, "invalid_request")
    assert finish_each_queued_job["ids"] == []
