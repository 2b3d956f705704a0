"""The recommender as the local stack runs it (a Celery worker, prefork pool), with METRICS_PORT set:
a task that ran in a forked child shows on the /metrics of the worker's main process, and the
worker's log lines are JSON, once each, those of the task with its job id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from moodtunes import jobs, queue
from moodtunes_cli.localstack import free_port
from tests.recommender.test_worker import ONE_HOT, event, recommending_job

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: dict, name: str, **labels) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def recommender(clean_jobs, database, redis_server, tmp_path, monkeypatch):
    """`celery -A moodtunes_recommender.worker worker` (prefork, one child) with metrics on a free
    port and a multiprocess folder holding a stale file from an earlier run; yields (port, pid,
    log path, folder) once it consumes."""
    monkeypatch.setattr(queue, "_producer", None)  # publish to this suite's Redis
    port, folder, log_path = free_port(), tmp_path / "prometheus", tmp_path / "recommender.log"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"stale")
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "REDIS_URL": redis_server.url,
        "METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "celery", "-A", "moodtunes_recommender.worker", "worker"]
    command += ["-Q", "recommend", "-c", "1", "-n", f"obs-{time.monotonic_ns()}@%h", "--loglevel", "INFO"]
    with open(log_path, "ab") as log_file:
        worker = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while b"ready." not in log_path.read_bytes():
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        yield port, worker.pid, log_path, folder
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)


def scrape(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return samples(answer.read().decode())


def test_a_task_run_in_a_prefork_child_shows_on_the_main_process_metrics(recommender):
    port, main_pid, log_path, folder = recommender
    assert not (folder / "counter_999999.db").exists()  # an earlier run's samples are not counted
    job_id = recommending_job(mode="match", limit=5)
    queue.enqueue_recommend(event(job_id, ONE_HOT["happy"], mode="match", limit=5))
    deadline = time.monotonic() + 60
    while jobs.get(job_id)["status"] != "done":
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.2)
    done = {"service": "recommender", "outcome": "done", "code": ""}
    while (found := scrape(port)) and sample(found, "moodtunes_task_outcomes_total", **done) is None:
        assert time.monotonic() < deadline, "the outcome never showed on /metrics"  # postrun follows
        time.sleep(0.2)
    assert sample(found, "moodtunes_task_outcomes_total", **done) == 1.0
    task = queue.RECOMMEND_TASK
    assert sample(found, "moodtunes_task_duration_seconds_count", service="recommender", task=task) == 1.0
    for stage in ("lock", "match", "store"):
        count = sample(found, "moodtunes_stage_duration_seconds_count", service="recommender", stage=stage)
        assert count == 1.0, stage
    assert sample(found, "moodtunes_tasks_in_flight", service="recommender") == 0.0
    child_files = [p for p in folder.glob("*.db") if not p.name.endswith(f"_{main_pid}.db")]
    assert child_files, "the samples were not written by a child process"

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    about_job = [r for r in records if r.get("job_id") == job_id]
    assert [r["message"] for r in about_job].count(f"job {job_id} done: 5 tracks") == 1  # logged once
    assert all(r["service"] == "recommender" for r in about_job)
    received = [r for r in about_job if r["message"].endswith("] received")]
    assert len(received) == 1 and received[0]["pid"] == main_pid  # Celery's main process takes it
    assert all(r["pid"] != main_pid for r in about_job if r not in received)  # the child runs it
    assert not [r for r in records if r.get("job_id") not in (None, job_id)]
    ready = [r for r in records if r["message"].endswith(" ready.")]
    assert len(ready) == 1 and ready[0]["pid"] == main_pid and "job_id" not in ready[0]
