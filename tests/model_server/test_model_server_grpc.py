"""The model server as a real subprocess, driven through the FER worker's gRPC client."""

from __future__ import annotations

import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from moodtunes_model_server.testing import run_server, save_toy_model, toy_predict
from moodtunes_tfserving.client import ModelServerClient, ModelServerError
from moodtunes_tfserving.proto.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

TOY_SEED = 1  # fer_toy/1
HOT_SEEDS = {1: 10, 2: 11}  # hot/<version> -> seed
MAX_BATCH_SIZE = 8


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    """fer_toy carries the real model's extras, which the server must ignore."""
    root = tmp_path_factory.mktemp("models")
    version_dir = save_toy_model(root / "fer_toy" / "1", seed=TOY_SEED)
    (version_dir / "head").mkdir()
    (version_dir / "head" / "pca_svm.joblib").write_bytes(b"not a model")
    (version_dir / "model_card.json").write_text(json.dumps({"name": "fer_toy"}))
    (root / "fer_toy" / "notes").mkdir()  # non-numeric directory in the base path
    (root / "fer_toy" / "README.md").write_text("not a version")
    (root / "fer_toy" / "7").mkdir()  # numeric but empty: a version still being written
    return root


@pytest.fixture(scope="module")
def server(model_root, tmp_path_factory):
    """As the local stack runs it: one model from its base path, batching from a parameters file."""
    batching = tmp_path_factory.mktemp("conf") / "batching.config"
    batching.write_text(
        f"max_batch_size {{ value: {MAX_BATCH_SIZE} }}\n"
        "batch_timeout_micros { value: 100000 }\n"
        "num_batch_threads { value: 2 }\n"
        "max_enqueued_batches { value: 100 }\n"
    )
    with run_server(
        model_base_path=model_root / "fer_toy",
        model_name="fer_toy",
        enable_batching=True,
        batching_parameters_file=batching,
        file_system_poll_wait_seconds=0.3,
        log_level="DEBUG",
    ) as running:
        yield running


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 48, 48, 1)).astype(np.float32)


def assert_outputs_match(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(outputs) == set(expected)
    for name, value in expected.items():
        assert outputs[name].dtype == np.float32
        np.testing.assert_allclose(outputs[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.fixture()
def client(server):
    with ModelServerClient(server.address, "fer_toy") as c:
        yield c


def test_predict_matches_in_process_computation(client, model_root):
    x = images(3)
    result = client.predict({"image": x})
    assert (result.model_name, result.model_version, result.signature_name) == (
        "fer_toy",
        1,
        "serving_default",
    )
    assert result.outputs["features"].shape == (3, 8)
    assert result.outputs["probabilities"].shape == (3, 5)
    assert_outputs_match(result.outputs, toy_predict(x, seed=TOY_SEED))

    import tensorflow as tf  # the same SavedModel run in this process

    local = tf.saved_model.load(str(model_root / "fer_toy" / "1")).signatures["serving_default"](
        image=tf.constant(x)
    )
    assert_outputs_match(result.outputs, {k: v.numpy() for k, v in local.items()})


def test_output_filter_and_explicit_version(server):
    with ModelServerClient(server.address, "fer_toy", version=1) as c:
        result = c.predict({"image": images(2)}, output_filter=["probabilities"])
    assert list(result.outputs) == ["probabilities"]
    assert result.model_version == 1


def test_only_predict_is_served(server):
    """The product calls Predict alone; TF Serving's other RPCs answer UNIMPLEMENTED here."""
    with grpc.insecure_channel(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = "fer_toy"
        classify = classification_pb2.ClassificationRequest()
        classify.model_spec.name = "fer_toy"
        for call, request in ((stub.GetModelMetadata, metadata), (stub.Classify, classify)):
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

        labelled = predict_pb2.PredictRequest()
        labelled.model_spec.name = "fer_toy"
        labelled.model_spec.version_label = "stable"
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(labelled, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Unrecognized servable version label: stable" in err.value.details()


@pytest.mark.parametrize(
    "model, kwargs, message",
    [
        ("nope", {}, "Servable not found for request: Latest(nope)"),
        ("fer_toy", {"version": 7}, "Servable not found for request: Specific(fer_toy, 7)"),
    ],
)
def test_unknown_model_or_version_is_not_found(server, model, kwargs, message):
    with ModelServerClient(server.address, model, **kwargs) as c:
        with pytest.raises(ModelServerError) as err:
            c.predict({"image": images(1)})
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert message in err.value.message


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"pixels": images(1)}, "input tensor alias not found in signature: pixels"),
        ({"image": images(1), "extra": images(1)}, "Sent extra: {extra}"),
        ({"image": np.zeros((1, 48, 48, 3), np.float32)}, "has shape [1,48,48,3], which is incompatible"),
        ({"image": np.zeros((48, 48, 1), np.float32)}, "has shape [48,48,1], which is incompatible"),
        (
            {"image": images(1).astype(np.float64)},
            "to be float32 (DT_FLOAT) but float64 (DT_DOUBLE) is provided",
        ),
        (
            {"image": images(MAX_BATCH_SIZE + 1)},
            f"Task size {MAX_BATCH_SIZE + 1} is larger than maximum input batch size",
        ),
    ],
)
def test_bad_inputs_are_invalid_argument(client, inputs, message):
    with pytest.raises(ModelServerError) as err:
        client.predict(inputs)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.message


def test_unknown_signature_and_output_filter(server, client):
    with ModelServerClient(server.address, "fer_toy", signature_name="nope") as c:
        with pytest.raises(ModelServerError) as err:
            c.predict({"image": images(1)})
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(ModelServerError) as err:
        client.predict({"image": images(1)}, output_filter=["logits"])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def _executed_batches(log: str) -> list[tuple[int, int]]:
    return [
        (int(r), int(t))
        for r, t in re.findall(r"batch executed queue=fer_toy/1/serving_default rows=(\d+) tasks=(\d+)", log)
    ]


def test_concurrent_requests_are_batched_and_split_back(server, client):
    before = len(_executed_batches(server.log_text()))
    x = images(12, seed=9)
    expected = toy_predict(x, seed=TOY_SEED)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: client.predict({"image": x[i : i + 1]}), range(12)))
    for i, result in enumerate(results):  # every caller gets its own row back
        assert_outputs_match(result.outputs, {k: v[i : i + 1] for k, v in expected.items()})
    deadline = time.monotonic() + 10  # the server logs asynchronously: wait for all 12 rows
    while True:
        batches = _executed_batches(server.log_text())[before:]
        if sum(rows for rows, _ in batches) >= 12 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sum(rows for rows, _ in batches) == 12
    assert all(rows <= MAX_BATCH_SIZE for rows, _ in batches)
    assert max(tasks for _, tasks in batches) > 1, batches


def test_new_version_is_loaded_and_old_one_unloaded(tmp_path):
    """`moodtunes fer export` writes a new version next to the served one: it takes over without a
    restart, and the old one is unloaded."""
    save_toy_model(tmp_path / "hot" / "1", seed=HOT_SEEDS[1])
    with run_server(
        model_base_path=tmp_path / "hot", model_name="hot", file_system_poll_wait_seconds=0.3
    ) as hot:
        with ModelServerClient(hot.address, "hot") as c:
            assert c.predict({"image": images(1)}).model_version == 1
            (tmp_path / "hot" / "scratch").mkdir()  # noise the poller must ignore
            save_toy_model(tmp_path / "hot" / "2", seed=HOT_SEEDS[2])
            hot.wait_for_log(r"Unloaded servable version \{name: hot version: 1\}")
            x = images(2, seed=3)
            result = c.predict({"image": x})
            assert result.model_version == 2
            assert_outputs_match(result.outputs, toy_predict(x, seed=HOT_SEEDS[2]))
        with ModelServerClient(hot.address, "hot", version=1) as old:
            with pytest.raises(ModelServerError) as err:
                old.predict({"image": x})
            assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert "Successfully loaded servable version {name: hot version: 2}" in hot.log_text()


def test_zz_sigterm_shuts_down_gracefully(server):
    """Last in the module: it stops the module's server."""
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    log = server.log_text()
    assert "Received SIGTERM, shutting down" in log and "Shutdown complete" in log
    assert "Traceback" not in log
