"""What the FER worker reports while it works, on the real PostgreSQL with a fake model behind it:
its stages, outcome, duration and retries as Prometheus samples (recorded by the Celery signals
around the real task), its Predict calls' sizes and durations, and JSON log lines that carry the
job's id while, and only while, its task runs."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from prometheus_client import REGISTRY

from moodtunes import jobs, observability
from moodtunes.config import get_settings
from moodtunes.events import FerJob, to_json
from moodtunes.queue import FER_TASK
from tests.fer.test_worker import FakeBackend, FakeHead, make_job, png

pytestmark = pytest.mark.integration
STAGES = ("claim", "decode", "detect", "classify", "store", "publish")


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[tuple, float]:
    """Every moodtunes sample of this process now, to compare with later."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in REGISTRY.collect()
        if family.name.startswith("moodtunes_")
        for s in family.samples
    }


def delta(before: dict, name: str, **labels) -> float:
    return value(name, **labels) - before.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def fer(clean_jobs, monkeypatch):
    """The FER worker with a fake model (version 3) behind it; events collected, not queued."""
    from moodtunes_fer import worker
    from moodtunes_fer.inference import FerPipeline

    backend = FakeBackend()
    published = []
    monkeypatch.setattr(worker, "pipeline", lambda: FerPipeline(backend, head=FakeHead()))
    monkeypatch.setattr(worker, "enqueue_recommend", published.append)
    yield types.SimpleNamespace(worker=worker, backend=backend, published=published)
    monkeypatch.undo()
    get_settings.cache_clear()


def run(fer, job_id: str) -> None:
    fer.worker.process_job.apply(args=[to_json(FerJob(job_id=job_id))], throw=True)


def test_a_done_task_reports_each_stage_its_outcome_its_duration_and_a_retry(fer, face_jpeg):
    fer.backend.unavailable = 1  # the model server restarts: one retry, same delivery
    job_id = make_job(face_jpeg)
    before = snapshot()
    run(fer, job_id)
    assert jobs.get(job_id)["status"] == "recommending" and len(fer.published) == 1
    assert delta(before, "moodtunes_task_outcomes_total", service="fer", outcome="done", code="") == 1
    assert delta(before, "moodtunes_task_duration_seconds_count", service="fer", task=FER_TASK) == 1
    for stage in STAGES:
        assert delta(before, "moodtunes_stage_duration_seconds_count", service="fer", stage=stage) == 1, stage
    assert delta(before, "moodtunes_task_retries_total", service="fer", reason="model_unavailable") == 1
    assert value("moodtunes_tasks_in_flight", service="fer") == 0  # up during the task, down after
    stages_s = sum(value("moodtunes_stage_duration_seconds_sum", service="fer", stage=s) for s in STAGES)
    assert 0 < stages_s <= value("moodtunes_task_duration_seconds_sum", service="fer", task=FER_TASK)


def test_a_failed_and_a_deferred_task_are_counted_with_their_codes(fer, monkeypatch):
    import skimage.data

    monkeypatch.setenv("MODEL_RETRY_S", "0.3")
    get_settings.cache_clear()
    before = snapshot()
    no_face = make_job(png(np.full((64, 64), 255, np.uint8)))
    run(fer, no_face)
    assert jobs.get(no_face)["error_code"] == "no_face"
    fer.backend.unavailable = 10**6  # the model server stays away past MODEL_RETRY_S
    deferred = make_job(png(skimage.data.astronaut()))
    run(fer, deferred)
    assert jobs.get(deferred)["status"] == "classifying"  # left for the reconciler
    outcomes = {
        (outcome, code): delta(
            before, "moodtunes_task_outcomes_total", service="fer", outcome=outcome, code=code
        )
        for outcome, code in [("failed", "no_face"), ("deferred", "model_unavailable"), ("done", "")]
    }
    assert outcomes == {("failed", "no_face"): 1, ("deferred", "model_unavailable"): 1, ("done", ""): 0}
    assert delta(before, "moodtunes_task_retries_total", service="fer", reason="model_unavailable") >= 1


def test_predict_calls_are_timed_and_sized_one_sample_per_call():
    """40 faces go to the model server as two Predict calls (32 + 8 rows, GRPC_BATCH_SIZE)."""
    from moodtunes_fer.inference import GRPC_BATCH_SIZE, GrpcBackend
    from moodtunes_tfserving.client import PredictResult

    def predict(inputs):
        n = len(inputs["image"])
        outputs = {"features": np.ones((n, 8), np.float32), "probabilities": np.full((n, 5), 0.2, np.float32)}
        return PredictResult(outputs=outputs, model_name="m", model_version=3, signature_name="s")

    backend = GrpcBackend("127.0.0.1:1", "fer_test_model")  # never connects: its client is replaced
    backend.client = types.SimpleNamespace(predict=predict)
    features, _, version = backend.features_and_probabilities(np.zeros((40, 48, 48, 1), np.float32))
    assert (features.shape, version, GRPC_BATCH_SIZE) == ((40, 8), 3, 32)
    assert value("moodtunes_model_call_batch_size_count", model="fer_test_model") == 2
    assert value("moodtunes_model_call_batch_size_sum", model="fer_test_model") == 40
    assert value("moodtunes_model_call_batch_size_bucket", model="fer_test_model", le="8.0") == 1
    assert value("moodtunes_model_call_duration_seconds_count", model="fer_test_model") == 2


@pytest.fixture
def json_logs(capsys):
    """The service's JSON log handler on the root logger for this test; yields a function that
    returns the records it wrote since the last call, parsed."""
    import logging

    root = logging.getLogger()
    level = root.level
    handler = observability.setup_logging("fer", fmt="json", level="INFO")

    def records() -> list[dict]:
        lines = capsys.readouterr().err.splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    yield records
    root.removeHandler(handler)
    root.setLevel(level)


def test_log_lines_of_a_task_are_json_with_its_job_id_and_none_after(fer, json_logs):
    import logging

    job_id = make_job(png(np.full((64, 64), 255, np.uint8)))  # no face: the task logs its failure
    json_logs()
    run(fer, job_id)
    logging.getLogger("moodtunes.test").info("after the task")
    records = json_logs()  # every line parses as JSON
    during = [r for r in records if r["message"] != "after the task"]
    assert any(r["message"] == f"job {job_id} failed: no_face" for r in during)
    assert during and all(r["job_id"] == job_id and r["service"] == "fer" for r in during)
    assert {"time", "level", "logger"} <= set(during[0])
    [after] = [r for r in records if r["message"] == "after the task"]
    assert "job_id" not in after
