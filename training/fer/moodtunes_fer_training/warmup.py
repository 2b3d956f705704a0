"""TF Serving warm-up records exported with each model version.

TF Serving replays `<version>/assets.extra/tf_serving_warmup_requests` (a TFRecord file of
PredictionLog protos) when it loads a version, before it reports the version AVAILABLE, so the
first real request does not pay for graph tracing and memory allocation. The local model server
replays the same file. One request per batch size the workers send (one face, a group photo, the
batcher's largest batch), built to the served contract in moodtunes_fer.signature.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from moodtunes_fer.signature import INPUT_CHANNELS, INPUT_KEY, INPUT_SIZE, SIGNATURE
from moodtunes_tfserving.proto.tensorflow_serving.apis import predict_pb2, prediction_log_pb2
from moodtunes_tfserving.tensors import write_tensor_proto

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
WARMUP_BATCH_SIZES = (1, 4, 32)  # one face, a small group, deploy/tfserving/batching.config's max
SEED = 0


def warmup_requests(
    model_name: str, batch_sizes=WARMUP_BATCH_SIZES
) -> list[prediction_log_pb2.PredictionLog]:
    """One PredictionLog per batch size: mid-grey noise faces in the served input layout."""
    rng = np.random.default_rng(SEED)
    logs = []
    for n in batch_sizes:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = SIGNATURE
        faces = rng.normal(128, 40, (n, INPUT_SIZE, INPUT_SIZE, INPUT_CHANNELS)).clip(0, 255)
        write_tensor_proto(faces.astype(np.float32), request.inputs[INPUT_KEY])
        logs.append(
            prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        )
    return logs


def write_warmup_requests(
    version_dir: str | os.PathLike, model_name: str, batch_sizes=WARMUP_BATCH_SIZES
) -> Path:
    """Writes the warm-up file into an exported version folder; returns its path."""
    import tensorflow as tf

    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in warmup_requests(model_name, batch_sizes):
            writer.write(log.SerializeToString())
    return path
