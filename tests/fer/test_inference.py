"""The worker's route to the CNN: requests split to the server's batch limit, one CNN version per
request, and the head fitted on the version that answered."""

from __future__ import annotations

import numpy as np
import pytest

from moodtunes_fer.head import build_head, save_head
from moodtunes_fer.inference import (
    DEFAULT_MODEL_NAME,
    HEAD_DIR,
    FerPipeline,
    GrpcBackend,
    HeadMismatchError,
    load_head_for_version,
)
from moodtunes_fer.signature import CLASS_NAMES, FC1_UNITS, FEATURES_KEY, INPUT_KEY, PROBABILITIES_KEY
from tests.tfserving.fake_server import fake_server


def fake_cnn(inputs):
    """Features = the mean pixel repeated; probabilities uniform: enough to follow rows."""
    x = inputs[INPUT_KEY]
    mean = x.reshape(len(x), -1).mean(axis=1, keepdims=True)
    return {
        FEATURES_KEY: np.repeat(mean, FC1_UNITS, axis=1).astype(np.float32),
        PROBABILITIES_KEY: np.full((len(x), len(CLASS_NAMES)), 0.2, np.float32),
    }


def images(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 48, 48, 1), np.float32)


def test_grpc_backend_splits_requests_and_keeps_rows_in_order():
    with fake_server(answer=fake_cnn, versions=(3,)) as (service, address):
        backend = GrpcBackend(address, batch_size=2)
        features, probabilities, version = backend.features_and_probabilities(images(5))
        backend.close()
    assert service.calls == [2, 2, 1]  # never more than the server's max_batch_size per request
    np.testing.assert_array_equal(features[:, 0], [0, 1, 2, 3, 4])
    assert features.shape == (5, FC1_UNITS) and probabilities.shape == (5, len(CLASS_NAMES))
    assert version == 3


def test_a_version_change_within_one_request_is_refused():
    """Features of two CNN versions must never reach one head."""
    with fake_server(answer=fake_cnn, versions=(1, 2)) as (_, address):
        backend = GrpcBackend(address, batch_size=2)
        with pytest.raises(HeadMismatchError, match=r"\[1, 2\]"):
            backend.features_and_probabilities(images(3))
        backend.close()


class FixedBackend:
    def __init__(self, version):
        self.version = version

    def features_and_probabilities(self, x):
        out = fake_cnn({INPUT_KEY: x})
        return out[FEATURES_KEY], out[PROBABILITIES_KEY], self.version


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """Heads for CNN versions 1 and 2 under <models>/fer_vgg16/<version>/head/."""
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, FC1_UNITS)).astype(np.float32)
    y = np.arange(50) % len(CLASS_NAMES)
    for version in (1, 2):
        pipe = build_head("logreg", pca_components=4).fit(x, y)
        save_head(
            pipe,
            root / DEFAULT_MODEL_NAME / str(version) / HEAD_DIR,
            {"model_version": version, "name": f"head-v{version}", "feature_dim": FC1_UNITS},
        )
    return root


def test_pipeline_uses_the_head_of_the_version_that_answered(models_dir):
    for version in (2, 1):
        pred = FerPipeline(FixedBackend(version), models_dir=models_dir).predict_input(images(2))
        assert pred.model_version == version and pred.head.meta["name"] == f"head-v{version}"
        assert pred.probabilities.shape == (2, len(CLASS_NAMES))


def test_a_pinned_head_refuses_features_of_another_version(models_dir):
    head = load_head_for_version(models_dir, version=1)
    assert FerPipeline(FixedBackend(1), head).predict_input(images(1)).head is head
    with pytest.raises(HeadMismatchError, match="fitted on CNN version 1, but version 2 answered"):
        FerPipeline(FixedBackend(2), head).predict_input(images(1))
