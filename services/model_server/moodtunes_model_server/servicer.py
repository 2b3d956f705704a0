"""tensorflow.serving.PredictionService.Predict over the loaded model: the one call the product makes.

Checks, their order, status codes and messages follow TF Serving's predict_util.cc, so a client sees
the same answers. The other RPCs answer UNIMPLEMENTED (the generated base class does that).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
import numpy as np
import tensorflow as tf

from moodtunes_tfserving.proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from moodtunes_tfserving.tensors import DataType, dtype_name, make_ndarray, write_tensor_proto

from .batching import BatchScheduler
from .errors import ServingError
from .models import DEFAULT_SIGNATURE, ModelManager, Servable
from .monitoring import BATCH_SIZE, REQUEST_DURATION, REQUESTS

log = logging.getLogger("moodtunes_model_server.servicer")


def _abort_on_error(context: grpc.ServicerContext, fn, *args, on_status=None):
    """Runs a handler body; every failure becomes a gRPC status, never a dead server thread.
    `on_status(code)` hears how the call ends."""
    code, message = grpc.StatusCode.OK, ""
    try:
        return fn(*args)
    except ServingError as exc:
        code, message = exc.code, exc.message
    except tf.errors.OpError as exc:  # TF error codes are the canonical gRPC codes
        code, message = _status_code(exc.error_code), exc.message
    except Exception as exc:
        log.exception("internal error")
        code, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
    finally:
        if on_status is not None:
            on_status(code)
    context.abort(code, message)


def _status_code(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


def _dtype_text(enum: int) -> str:
    if enum not in DataType.values():
        return f"DataType {enum}"
    return f"{dtype_name(enum)} ({DataType.Name(enum)})"


def _shape_text(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _resolve(models: ModelManager, spec) -> Servable:
    if spec.WhichOneof("version_choice") == "version_label":
        # No labels are configured here, which TF Serving answers so too.
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {spec.version_label}"
        )
    version = spec.version.value if spec.HasField("version") else None
    return models.get_servable(spec.name, version)


def _decode_inputs(definition, request) -> dict[str, np.ndarray]:
    expected = definition.inputs
    if len(request.inputs) != len(expected):
        sent, wanted = set(request.inputs), set(expected)
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.",
        )
    order = sorted(expected)
    arrays = {}
    for alias in sorted(request.inputs):
        proto = request.inputs[alias]
        if alias not in expected:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(order)}}}.",
            )
        try:
            value = make_ndarray(proto)
        except Exception:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from None
        info = expected[alias]
        if proto.dtype != info.dtype:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{order.index(alias)}] (input '{alias}') to be {_dtype_text(info.dtype)} "
                f"but {_dtype_text(proto.dtype)} is provided",
            )
        if not info.tensor_shape.unknown_rank:
            want = [d.size for d in info.tensor_shape.dim]
            got = list(value.shape)
            if len(want) != len(got) or any(w not in (-1, g) for w, g in zip(want, got, strict=True)):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{alias}' has shape {_shape_text(got)}, which is incompatible with the "
                    f"signature's shape {_shape_text(want)} (-1: any size)",
                )
        arrays[alias] = value
    return arrays


def _output_aliases(definition, request) -> list[str]:
    outputs = definition.outputs
    if not request.output_filter:
        return sorted(outputs)
    seen: list[str] = []
    for alias in request.output_filter:
        if alias not in outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{','.join(sorted(outputs))}}}.",
            )
        if alias in seen:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models: ModelManager, scheduler: BatchScheduler | None = None):
        self.models = models
        self.scheduler = scheduler

    def Predict(self, request, context):
        # Metrics name the served model; any other name a client asks for is "unknown" (no label per typo)
        model = request.model_spec.name if request.model_spec.name == self.models.name else "unknown"
        started = time.perf_counter()

        def count(code: grpc.StatusCode) -> None:
            REQUESTS.labels(model, code.name).inc()
            REQUEST_DURATION.labels(model).observe(time.perf_counter() - started)

        return _abort_on_error(context, self._predict, request, context, on_status=count)

    def _predict(self, request, context):
        if not request.HasField("model_spec"):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        servable = _resolve(self.models, spec)
        signature_name = spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
            )
        inputs = _decode_inputs(signature.definition, request)
        aliases = _output_aliases(signature.definition, request)
        if self.scheduler is None:
            outputs = signature.run(inputs)
            rows = next((v.shape[0] for v in inputs.values() if v.ndim), 1)  # one execution, its rows
            BATCH_SIZE.labels(servable.model).observe(rows)
        else:
            key = (
                servable.model,
                servable.version,
                signature_name,
                tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(inputs.items()) if v.ndim),
            )
            label = f"{servable.model}/{servable.version}/{signature_name}"
            future = self.scheduler.submit(key, signature.run, inputs, label)
            try:
                outputs = future.result(timeout=context.time_remaining())
            except FutureTimeout:
                raise ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded while waiting for the batch"
                ) from None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for alias in aliases:  # typed value fields, as TF Serving answers (Tensor::AsProtoField)
            write_tensor_proto(outputs[alias], response.outputs[alias], typed_values=True)
        return response
