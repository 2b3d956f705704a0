"""An in-process PredictionService that answers like TF Serving, for client-side tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import numpy as np

from moodtunes_tfserving.proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from moodtunes_tfserving.tensors import make_ndarray, write_tensor_proto

Answer = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def double(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": inputs["x"] * 2}


class FakePredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Outputs `answer(inputs)` in typed value fields (TF Serving's default); fails the first calls
    with the given codes; reports `versions` in turn (then the last one); records requests and rows."""

    def __init__(self, answer: Answer = double, failures=(), versions=(4,)):
        self.answer = answer
        self.failures = list(failures)
        self.versions = list(versions)
        self.calls: list[int] = []
        self.requests: list[predict_pb2.PredictRequest] = []

    def Predict(self, request, context):
        self.requests.append(request)
        inputs = {name: make_ndarray(proto) for name, proto in request.inputs.items()}
        self.calls.append(len(next(iter(inputs.values()))))
        if self.failures:
            context.abort(self.failures.pop(0), "fake failure")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = (
            self.versions.pop(0) if len(self.versions) > 1 else self.versions[0]
        )
        response.model_spec.signature_name = request.model_spec.signature_name
        for name, value in self.answer(inputs).items():
            write_tensor_proto(value, response.outputs[name], typed_values=True)
        return response


@contextlib.contextmanager
def fake_server(**kwargs) -> Iterator[tuple[FakePredictionService, str]]:
    """Serves a FakePredictionService(**kwargs) on loopback; yields it and its address."""
    service = FakePredictionService(**kwargs)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        server.stop(0)
