"""moodtunes.observability: log records in JSON (or text) with the job being handled, the
reconciler's actions and the broker retries counted, metrics served over HTTP, and tracing off
unless TRACING names an exporter."""

from __future__ import annotations

import io
import json
import logging
import urllib.request

import pytest
import redis
from prometheus_client import REGISTRY

from moodtunes import jobs, observability, queue, reconciler
from moodtunes.config import get_settings
from tests.common.test_reconciler import make_job


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def logs(monkeypatch):
    """log(fmt) installs the service's handler writing to a buffer; returns the buffer."""
    root = logging.getLogger()
    level, installed = root.level, []

    def install(fmt: str, service: str = "reconciler") -> io.StringIO:
        buffer = io.StringIO()
        monkeypatch.setattr("sys.stderr", buffer)  # the handler writes to sys.stderr as it is at the time
        installed.append(observability.setup_logging(service, fmt=fmt, level="INFO"))
        return buffer

    yield install
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)


def test_json_records_carry_the_bound_job_and_nothing_once_unbound(logs):
    out = logs("json")
    log = logging.getLogger("moodtunes.test")
    with observability.job_context("job-1"):
        log.info("inside %s", "it")
        try:
            raise ValueError("broken\nacross lines")
        except ValueError:
            log.exception("failed")
    log.warning("outside")
    inside, failed, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["message"] == "inside it" and inside["job_id"] == "job-1"
    assert (inside["service"], inside["level"], inside["logger"]) == ("reconciler", "INFO", "moodtunes.test")
    assert failed["job_id"] == "job-1" and "ValueError: broken" in failed["exc_info"]  # one line
    assert "job_id" not in outside and outside["level"] == "WARNING"


def test_celerys_own_lines_about_a_jobs_task_carry_its_job(logs, monkeypatch):
    """'Task ...[id] received' comes before the task binds its job, 'succeeded' after it unbinds:
    the job comes from the task id Celery logs (job id, or job id:stage), for job tasks only."""
    monkeypatch.setitem(observability._task_services, "moodtunes.recommend", "recommender")
    out = logs("json", "recommender")
    received = logging.getLogger("celery.worker.strategy")
    received.info("Task %(name)s[%(id)s] received", {"name": "moodtunes.recommend", "id": "job-9:recommend"})
    traced = logging.getLogger("celery.app.trace")
    traced.info(
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        {"name": "moodtunes.recommend", "id": "job-9:recommend", "runtime": 0.1, "return_value": None},
    )
    received.info("Task %(name)s[%(id)s] received", {"name": "celery.backend_cleanup", "id": "3f2a-uuid"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("job_id") for line in lines] == ["job-9", "job-9", None]
    assert lines[0]["message"] == "Task moodtunes.recommend[job-9:recommend] received"


def test_text_format_is_for_people_and_setting_up_again_replaces_only_its_own_handler(logs):
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    try:
        logs("json")
        out = logs("text")
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_moodtunes", False)]
        assert len(ours) == 1 and other in logging.getLogger().handlers
        with observability.job_context("job-2"):
            logging.getLogger("moodtunes.test").info("hello\nworld")
        assert out.getvalue().endswith(" INFO moodtunes.test [job job-2] hello | world\n")
    finally:
        logging.getLogger().removeHandler(other)


def test_log_format_must_be_json_or_text(logs):
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs("xml")


@pytest.fixture
def broker(clean_jobs, redis_server, monkeypatch):
    redis.Redis.from_url(redis_server.url).flushdb()
    monkeypatch.setattr(queue, "_producer", None)
    yield
    queue._producer = None


def test_the_reconcilers_actions_are_counted_and_logged_with_their_job(broker, logs):
    out = logs("json")
    before = {a: value("moodtunes_reconciler_actions_total", action=a) for a in ("resent", "timeout")}
    stuck = make_job(jobs.DETECTING, idle_s=60)
    overdue = make_job(jobs.QUEUED, idle_s=60, created_at="now() - interval '1 hour'")
    done = reconciler.reconcile_once()
    assert done.requeued == [stuck] and done.failed == {overdue: "timeout"}
    assert value("moodtunes_reconciler_actions_total", action="resent") == before["resent"] + 1
    assert value("moodtunes_reconciler_actions_total", action="timeout") == before["timeout"] + 1
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {r["job_id"] for r in records if "re-sent" in r["message"]} == {stuck}
    assert {r["job_id"] for r in records if "failed while" in r["message"]} == {overdue}


def test_publish_retries_while_redis_is_away_are_counted_as_broker_retries(monkeypatch):
    from moodtunes.events import EmotionDetected
    from moodtunes_cli.localstack import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    get_settings.cache_clear()
    monkeypatch.setattr(queue, "_producer", None)
    monkeypatch.setattr(observability, "_process_service", "fer")
    before = value("moodtunes_task_retries_total", service="fer", reason="broker")
    try:
        with pytest.raises(queue.BROKER_ERRORS):
            queue.enqueue_recommend(EmotionDetected(job_id="j"), retry_policy=queue.outage_retry_policy(1))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        queue._producer = None
    assert value("moodtunes_task_retries_total", service="fer", reason="broker") >= before + 1


def test_metrics_are_served_over_http():
    observability.RECONCILER_ACTIONS.labels("resent").inc(0)  # present, whatever ran before
    port = observability.serve_metrics(0, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    assert 'moodtunes_reconciler_actions_total{action="resent"}' in text


def test_tracing_is_off_unless_a_known_exporter_is_named(monkeypatch):
    assert get_settings().tracing == "" and observability.span_exporter("") is None
    assert observability.span_exporter("off") is None
    assert type(observability.span_exporter("console")).__name__ == "ConsoleSpanExporter"
    assert type(observability.span_exporter("otlp")).__name__ == "OTLPSpanExporter"
    with pytest.raises(ValueError, match="TRACING"):
        observability.span_exporter("zipkin")
    if not observability.tracing_enabled():
        assert observability.setup_tracing("test") is False  # TRACING unset: nothing set up
        assert not observability.tracing_enabled()
