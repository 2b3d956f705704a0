"""The model server's Prometheus metrics, served as TF Serving serves its own (--rest_api_port and a
MonitoringConfig file): rows per executed batch, Predict calls by model and status code, their
latency; nothing served without the flags."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from moodtunes_model_server.batching import BatchScheduler
from moodtunes_model_server.config import BatchingOptions, ConfigError
from moodtunes_model_server.monitoring import DEFAULT_PATH, metrics_app, parse_monitoring_config
from moodtunes_model_server.testing import run_server, save_toy_model
from moodtunes_tfserving.client import ModelServerClient, ModelServerError


def test_monitoring_config_is_tf_servings_text_proto():
    on = parse_monitoring_config('prometheus_config { enable: true, path: "/metrics" }')
    assert (on.enable, on.path) == (True, "/metrics")
    default = parse_monitoring_config("prometheus_config { enable: true }")
    assert (default.enable, default.path) == (True, DEFAULT_PATH) == (True, "/monitoring/prometheus/metrics")
    assert not parse_monitoring_config("").enable
    with pytest.raises(ConfigError, match="unknown_field"):
        parse_monitoring_config("prometheus_config { unknown_field: 1 }")
    with pytest.raises(ConfigError, match="must start with '/'"):
        parse_monitoring_config('prometheus_config { enable: true path: "metrics" }')


def test_the_metrics_app_answers_its_path_only():
    app = metrics_app("/monitoring/prometheus/metrics")
    answers = []

    def get(path: str) -> bytes:
        body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, h: answers.append(s)))
        return body

    assert b"moodtunes_model_server_requests" in get("/monitoring/prometheus/metrics")
    get("/monitoring/prometheus/metrics/")
    get("/metrics")
    assert [a.split()[0] for a in answers] == ["200", "200", "404"]


def test_every_executed_batch_is_observed_with_its_rows():
    def count(le: str) -> float:
        labels = {"model": "unit_batches", "le": le}
        return REGISTRY.get_sample_value("moodtunes_model_server_batch_size_bucket", labels) or 0.0

    scheduler = BatchScheduler(
        BatchingOptions(max_batch_size=4, batch_timeout_micros=10_000_000, num_batch_threads=1),
        model="unit_batches",
    )
    try:
        double = lambda inputs: {"y": inputs["x"] * 2}  # noqa: E731
        futures = [scheduler.submit("k", double, {"x": np.ones((1, 1), np.float32)}) for _ in range(4)]
        [f.result(timeout=5) for f in futures]
    finally:
        scheduler.shutdown()
    assert (count("2.0"), count("4.0")) == (0, 1)  # one batch of 4 rows, not 4 of 1
    assert REGISTRY.get_sample_value("moodtunes_model_server_batch_size_sum", {"model": "unit_batches"}) == 4


def samples(text: str) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_server_serves_its_metrics_on_the_rest_api_port_and_traces_with_tracing_set(tmp_path: Path):
    from moodtunes_cli.localstack import free_port

    save_toy_model(tmp_path / "fer_toy" / "1", seed=3)
    (tmp_path / "batching.config").write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 200000 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    (tmp_path / "monitoring.config").write_text('prometheus_config { enable: true, path: "/prom" }\n')
    port = free_port()
    with run_server(
        model_base_path=tmp_path / "fer_toy",
        model_name="fer_toy",
        enable_batching=True,
        batching_parameters_file=tmp_path / "batching.config",
        extra_args=[f"--rest_api_port={port}", f"--monitoring_config_file={tmp_path / 'monitoring.config'}"],
        env={"TRACING": "console"},
    ) as server:
        assert f"Exporting HTTP/REST API at:127.0.0.1:{port}" in server.log_text()
        images = np.zeros((1, 48, 48, 1), np.float32)
        with ModelServerClient(server.address, "fer_toy") as client, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: client.predict({"image": images}), range(4)))  # one batch of 4
        with ModelServerClient(server.address, "no_such_model") as other, pytest.raises(ModelServerError):
            other.predict({"image": images})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/prom", timeout=10) as answer:
            found = samples(answer.read().decode())
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)

    spans = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    predicts = [s for s in spans if s["name"] == "/tensorflow.serving.PredictionService/Predict"]
    assert len(predicts) == 5 and {s["kind"] for s in predicts} == {"SpanKind.SERVER"}  # flushed at exit
    assert {s["resource"]["attributes"]["service.name"] for s in predicts} == {"moodtunes-model-server"}

    def value(name: str, **labels) -> float | None:
        return found.get((name, tuple(sorted(labels.items()))))

    assert value("moodtunes_model_server_requests_total", model="fer_toy", code="OK") == 4
    assert value("moodtunes_model_server_requests_total", model="unknown", code="NOT_FOUND") == 1
    assert value("moodtunes_model_server_request_duration_seconds_count", model="fer_toy") == 4
    assert value("moodtunes_model_server_batch_size_sum", model="fer_toy") == 4  # rows run
    assert 1 <= value("moodtunes_model_server_batch_size_count", model="fer_toy") <= 4  # batches (load)


def test_without_the_flags_nothing_is_served():
    from moodtunes_model_server.server import build_parser, resolve_monitoring

    args = build_parser().parse_args(["--model_base_path=/m"])
    assert args.rest_api_port == 0 and not resolve_monitoring(args).enable
