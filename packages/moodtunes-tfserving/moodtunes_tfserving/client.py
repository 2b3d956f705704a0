"""gRPC client for TensorFlow Serving's PredictionService.Predict.

Works the same against the real `tensorflow/serving` image and the local `moodtunes-model-server`,
with the generated modules of this package and numpy: no TensorFlow in the process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
import numpy as np

from moodtunes_tfserving.proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from moodtunes_tfserving.tensors import make_ndarray, write_tensor_proto

DEFAULT_SIGNATURE = "serving_default"


class ModelServerError(Exception):
    """A failed call; `code` is the grpc.StatusCode, `message` the server's (or transport's) text."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self):  # Celery pickles task exceptions; the default would lose the two arguments
        return (type(self), (self.code, self.message))


@dataclass
class PredictResult:
    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: int
    signature_name: str = DEFAULT_SIGNATURE


def _retry_service_config(max_attempts: int) -> str:
    """gRPC's own retry: UNAVAILABLE (server down, restarting, batch queue full) is retried with
    exponential backoff 0.1 s -> 1 s; gRPC caps attempts at 5. Other codes fail at once."""
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    name = [{"service": "tensorflow.serving.PredictionService"}]
    return json.dumps({"methodConfig": [{"name": name, "retryPolicy": policy}]})


class ModelServerClient:
    """One model (and signature, and optionally a pinned version) on one TF Serving-compatible server.

    Requests must stay within the server's `max_batch_size` (TF Serving rejects larger ones):
    callers split their batches (`moodtunes_fer.inference.batched`).
    """

    def __init__(
        self,
        address: str,
        model_name: str,
        signature_name: str = DEFAULT_SIGNATURE,
        version: int | None = None,
        timeout_s: float = 10.0,
        *,
        max_attempts: int = 5,
        max_message_bytes: int = 256 * 1024 * 1024,
    ):
        self.address = address
        self.model_name = model_name
        self.signature_name = signature_name
        self.version = version
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.enable_retries", 1),
                ("grpc.service_config", _retry_service_config(max_attempts)),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # reconnect within ~2 s of a restarted model server (gRPC's default backoff
                # grows to 120 s, leaving a worker waiting long after the server is back)
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, inputs: dict[str, np.ndarray], output_filter: list[str] | None = None) -> PredictResult:
        """Runs the signature on `inputs`; outputs decoded to numpy, with the version that answered."""
        request = predict_pb2.PredictRequest()
        spec = request.model_spec
        spec.name = self.model_name
        spec.signature_name = self.signature_name
        if self.version is not None:
            spec.version.value = self.version
        for name, value in inputs.items():
            write_tensor_proto(value, request.inputs[name])
        if output_filter:
            request.output_filter.extend(output_filter)
        try:
            response = self._stub.Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise ModelServerError(exc.code(), exc.details() or "") from None
        spec = response.model_spec
        return PredictResult(
            outputs={name: make_ndarray(proto) for name, proto in response.outputs.items()},
            model_name=spec.name or self.model_name,
            model_version=spec.version.value,
            signature_name=spec.signature_name or self.signature_name,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ModelServerClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
