"""The SavedModel loaded into this process (TensorFlow): the training side's route to the served
CNN, for evaluation and head fitting without a model server."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from moodtunes_fer.inference import BATCH_SIZE, batched
from moodtunes_fer.signature import FEATURES_KEY, INPUT_KEY, PROBABILITIES_KEY, SIGNATURE


def version_of(path: str | os.PathLike) -> int | str:
    name = Path(path).resolve().name
    return int(name) if name.isdigit() else name


class InProcessBackend:
    """The SavedModel loaded into this process."""

    def __init__(self, saved_model_version_dir: str | os.PathLike, batch_size: int = BATCH_SIZE):
        import tensorflow as tf

        self.path = Path(saved_model_version_dir)
        self.version = version_of(self.path)
        self.batch_size = batch_size
        self._loaded = tf.saved_model.load(str(self.path))  # keep a reference: owns the variables
        self._signature = self._loaded.signatures[SIGNATURE]
        self._tf = tf

    def _call(self, batch: np.ndarray):
        out = self._signature(**{INPUT_KEY: self._tf.constant(batch)})
        return out[FEATURES_KEY].numpy(), out[PROBABILITIES_KEY].numpy(), self.version

    def features_and_probabilities(self, x: np.ndarray):
        return batched(self._call, x, self.batch_size)
