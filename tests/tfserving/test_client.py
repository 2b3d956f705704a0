"""ModelServerClient's requests, retries and errors, against an in-process fake server."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest

from moodtunes_tfserving.client import ModelServerClient, ModelServerError
from tests.tfserving.fake_server import fake_server


def test_predict_decodes_response_and_model_spec():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    with fake_server() as (service, address), ModelServerClient(address, "fer") as client:
        result = client.predict({"x": x})
    assert (result.model_name, result.model_version, result.signature_name) == ("fer", 4, "serving_default")
    np.testing.assert_array_equal(result.outputs["y"], x * 2)
    assert result.outputs["y"].dtype == np.float32
    assert service.calls == [3]


def test_pinned_version_and_output_filter_are_sent():
    with fake_server() as (service, address):
        with ModelServerClient(address, "fer", signature_name="sig", version=7) as client:
            client.predict({"x": np.ones((1, 2), np.float32)}, output_filter=["y"])
    (request,) = service.requests
    spec = request.model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == ("fer", "sig", 7)
    assert list(request.output_filter) == ["y"]
    assert request.inputs["x"].tensor_content  # requests go as compact tensor_content bytes


def test_unavailable_is_retried_with_backoff():
    with fake_server(failures=[grpc.StatusCode.UNAVAILABLE] * 2) as (service, address):
        with ModelServerClient(address, "fer") as client:
            result = client.predict({"x": np.ones((1, 2), np.float32)})
    assert len(service.calls) == 3
    np.testing.assert_array_equal(result.outputs["y"], [[2.0, 2.0]])


def test_retries_are_bounded():
    with fake_server(failures=[grpc.StatusCode.UNAVAILABLE] * 10) as (service, address):
        with ModelServerClient(address, "fer", max_attempts=3) as client:
            with pytest.raises(ModelServerError) as err:
                client.predict({"x": np.ones((1, 2), np.float32)})
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.message == "fake failure"
    assert len(service.calls) == 3


def test_other_errors_are_not_retried():
    with fake_server(failures=[grpc.StatusCode.INVALID_ARGUMENT]) as (service, address):
        with ModelServerClient(address, "fer") as client:
            with pytest.raises(ModelServerError) as err:
                client.predict({"x": np.ones((1, 2), np.float32)})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(service.calls) == 1


def test_no_server_is_a_model_server_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ModelServerClient(f"127.0.0.1:{port}", "fer", timeout_s=5, max_attempts=2) as client:
        with pytest.raises(ModelServerError) as err:
            client.predict({"x": np.ones((1, 2), np.float32)})
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_error_survives_pickling():
    """Celery pickles a task's exception; the code and message must come back."""
    err = pickle.loads(pickle.dumps(ModelServerError(grpc.StatusCode.NOT_FOUND, "no such model")))
    assert (err.code, err.message, str(err)) == (
        grpc.StatusCode.NOT_FOUND,
        "no such model",
        "NOT_FOUND: no such model",
    )


def test_the_worker_imports_no_tensorflow():
    """The FER worker's modules, client and generated protos included, load without TensorFlow:
    with `tensorflow` made unimportable, they import, and no TF / TF Serving module is loaded."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["tensorflow"] = sys.modules["tensorflow_serving"] = None  # any import fails
        import moodtunes_fer.worker, moodtunes_fer.inference, moodtunes_tfserving.client
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_serving")
                        and sys.modules[m] is not None)
        assert not loaded, loaded
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
