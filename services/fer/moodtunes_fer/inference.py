"""The deployed FER pipeline: crop -> to_model_input -> CNN (SavedModel) -> features -> head.

The CNN runs behind a backend: over gRPC against TF Serving or the local model server (here, in
the worker), or in process (`moodtunes_fer_training.in_process`, for training-side evaluation).
Both call the same `serving_default` signature of the same SavedModel, so their features, and
therefore the head's predictions, agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from moodtunes import observability
from moodtunes_fer.head import Head, load_head
from moodtunes_fer.signature import (
    CLASS_NAMES,
    FC1_UNITS,
    FEATURES_KEY,
    INPUT_CHANNELS,
    INPUT_KEY,
    INPUT_SIZE,
    PROBABILITIES_KEY,
    SIGNATURE,
)
from moodtunes_tfserving.client import ModelServerClient

HEAD_DIR = "head"
MODEL_CARD = "model_card.json"
BATCH_SIZE = 64
DEFAULT_MODEL_NAME = "fer_vgg16"
DEFAULT_MODELS_DIR = "models"


class HeadMismatchError(RuntimeError):
    """The CNN version that answered is not the one the head was fitted on."""


class FeatureBackend(Protocol):
    def features_and_probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]: ...


def check_input(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, INPUT_CHANNELS):
        raise ValueError(f"expected float32 (N, {INPUT_SIZE}, {INPUT_SIZE}, {INPUT_CHANNELS}), got {x.shape}")
    return x


def batched(call, x: np.ndarray, batch_size: int):
    """Runs `call(batch) -> (features, probabilities, version)` over x in slices of at most
    batch_size rows (the one place requests are split); one version for all."""
    x = check_input(x)
    if len(x) == 0:
        return (np.zeros((0, FC1_UNITS), np.float32), np.zeros((0, len(CLASS_NAMES)), np.float32), None)
    feats, probs, versions = [], [], set()
    for start in range(0, len(x), batch_size):
        f, p, v = call(x[start : start + batch_size])
        feats.append(f)
        probs.append(p)
        versions.add(v)
    if len(versions) > 1:  # the server swapped versions mid-request: features would be mixed
        raise HeadMismatchError(f"model versions changed during one request: {sorted(versions)}")
    return np.concatenate(feats), np.concatenate(probs), versions.pop()


# Requests stay within the server's max_batch_size (deploy/tfserving/batching.config): TF Serving
# rejects a larger one when batching is on. Small requests also batch best with other clients'.
GRPC_BATCH_SIZE = 32


class GrpcBackend:
    """TF Serving's PredictionService (or the local stand-in) through ModelServerClient."""

    def __init__(
        self,
        address: str,
        model_name: str = DEFAULT_MODEL_NAME,
        *,
        version: int | None = None,
        signature_name: str = SIGNATURE,
        timeout_s: float = 10.0,
        batch_size: int = GRPC_BATCH_SIZE,
    ):
        self.client = ModelServerClient(
            address, model_name, signature_name=signature_name, version=version, timeout_s=timeout_s
        )
        self.model_name = model_name
        self.batch_size = batch_size

    def _call(self, batch: np.ndarray):
        # timed and sized per Predict call (moodtunes_model_call_duration_seconds / _batch_size)
        with observability.model_call(self.model_name, len(batch)):
            result = self.client.predict({INPUT_KEY: batch})
        return (
            np.asarray(result.outputs[FEATURES_KEY], np.float32),
            np.asarray(result.outputs[PROBABILITIES_KEY], np.float32),
            int(result.model_version),
        )

    def features_and_probabilities(self, x: np.ndarray):
        return batched(self._call, x, self.batch_size)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close:
            close()


def model_dir(models_dir: str | os.PathLike, model_name: str) -> Path:
    return Path(models_dir) / model_name


def versions(models_dir: str | os.PathLike, model_name: str) -> list[int]:
    """Exported versions, ascending: the numeric subfolders TF Serving would consider."""
    base = model_dir(models_dir, model_name)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def version_dir(models_dir: str | os.PathLike, model_name: str, version: int | None = None) -> Path:
    """`<models_dir>/<model_name>/<version>`; None means the latest, as TF Serving picks."""
    if version is None:
        found = versions(models_dir, model_name)
        if not found:
            raise FileNotFoundError(
                f"no exported versions under {model_dir(models_dir, model_name)} (run `moodtunes fer export`)"
            )
        version = found[-1]
    path = model_dir(models_dir, model_name) / str(int(version))
    if not path.is_dir():
        raise FileNotFoundError(f"model version not found: {path}")
    return path


def load_head_for_version(
    models_dir: str | os.PathLike, model_name: str = DEFAULT_MODEL_NAME, version: int | None = None
) -> Head:
    """The head fitted on the features of that CNN version (`<version>/head/`)."""
    return load_head(version_dir(models_dir, model_name, version) / HEAD_DIR)


@dataclass
class FerPrediction:
    probabilities: np.ndarray  # (N, 5) head probabilities, CLASS_NAMES order
    cnn_probabilities: np.ndarray  # (N, 5) the CNN's own softmax
    model_version: int | str | None
    head: Head | None = None  # the head that answered (None when there was nothing to classify)

    @property
    def labels(self) -> list[str]:
        return [CLASS_NAMES[i] for i in self.probabilities.argmax(axis=1)]


class FerPipeline:
    """Backend + head. Pass `head` to pin one; or `models_dir` to pick the head of whichever CNN
    version answered (TF Serving may roll to a new version between calls). The one place a head
    is chosen for a CNN version: the worker, evaluation and export all go through it."""

    def __init__(
        self,
        backend: FeatureBackend,
        head: Head | None = None,
        *,
        models_dir: str | os.PathLike | None = None,
        model_name: str = DEFAULT_MODEL_NAME,
    ):
        if head is None and models_dir is None:
            raise ValueError("give a head, or models_dir to look heads up by model version")
        self.backend = backend
        self.head = head
        self.models_dir = models_dir
        self.model_name = model_name
        self._heads: dict[int | str, Head] = {}

    def _head_for(self, version) -> Head:
        if self.head is not None:
            fitted_on = self.head.meta.get("model_version")
            if fitted_on is not None and version is not None and str(fitted_on) != str(version):
                raise HeadMismatchError(
                    f"head was fitted on CNN version {fitted_on}, but version {version} answered"
                )
            return self.head
        if version is None:
            raise HeadMismatchError("backend did not report a model version to pick a head")
        if version not in self._heads:
            self._heads[version] = load_head_for_version(self.models_dir, self.model_name, int(version))
        return self._heads[version]

    def predict_input(self, x: np.ndarray) -> FerPrediction:
        """From the float32 model input (N, 48, 48, 1)."""
        features, cnn_probs, version = self.backend.features_and_probabilities(x)
        if len(features) == 0:
            return FerPrediction(np.zeros((0, len(CLASS_NAMES))), cnn_probs, version)
        head = self._head_for(version)
        return FerPrediction(head.predict_proba(features), cnn_probs, version, head)

    def predict(self, crops) -> FerPrediction:
        """From uint8 greyscale face crops of any size."""
        from moodtunes_fer.preprocessing import to_model_input

        return self.predict_input(to_model_input(crops))

    def predict_proba(self, crops) -> np.ndarray:
        return self.predict(crops).probabilities
