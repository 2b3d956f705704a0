"""Shared FER fixtures: a tiny generated dataset, an untrained checkpoint and its export.

Images are synthetic (a class-coded bright patch on noise), never FER2013 pixels; the export is
done once per session because writing a SavedModel costs seconds.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TRAIN_PER_CLASS = 16
VAL_PER_CLASS = 8
PCA_COMPONENTS = 10  # the tiny train set has 80 images: PCA 50 would be most of the variance


def make_images(n_per_class: int, seed: int, size: int = 48, classes: int = 5):
    """Noise plus a bright patch whose position codes the class, so even random CNN features
    separate the classes and a scrambled class order shows up as lost accuracy."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 90, size=(n_per_class * classes, size, size), dtype=np.uint8)
    y = np.repeat(np.arange(classes), n_per_class)
    for i, label in enumerate(y):
        row = 4 + 8 * int(label)
        col = int(rng.integers(4, 30))
        x[i, row : row + 8, col : col + 14] = rng.integers(200, 256)
    order = rng.permutation(len(y))
    return x[order], y[order].astype(np.int64)


def write_npz(path, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, seed=0):
    """Like the shared dataset: x_train/y_train, x_val/y_val, class_names."""
    x_train, y_train = make_images(train_per_class, seed)
    x_val, y_val = make_images(val_per_class, seed + 1)
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        class_names=np.array(["neutral", "happy", "sad", "fear", "angry"]),
    )
    return path


@pytest.fixture(scope="session")
def make_fer_images():
    """make_images(n_per_class, seed) -> (x uint8 (5n, 48, 48), y)."""
    return make_images


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("fer_data") / "tiny.npz")


@pytest.fixture(scope="session")
def keras_checkpoint(tmp_path_factory):
    """An untrained, seeded VGG16-layout model saved as .keras, with a fake train_state.json."""
    import keras

    from moodtunes_fer_training.model import build_vgg16

    run = tmp_path_factory.mktemp("fer_run")
    keras.utils.set_random_seed(7)
    build_vgg16().save(run / "best.keras")
    (run / "train_state.json").write_text(
        json.dumps(
            {
                "epochs_done": 3,
                "train_seconds": 12.5,
                "best_val_accuracy": 0.4,
                "best_epoch": 2,
                "segments": [{"hardware": {"machine": "test-cpu", "cpu_count": 2}}],
                "epochs_planned": 3,
                "batch_size": 16,
                "peak_lr": 0.01,
                "seed": 7,
                "hyperparameters": {"momentum": 0.9},
                "data_report": {"images_in": 80},
            }
        )
    )
    return run / "best.keras"


@pytest.fixture(scope="session")
def exported(tmp_path_factory, keras_checkpoint, tiny_npz):
    """(models_dir, model card) of a TTA export of the untrained checkpoint."""
    from moodtunes_fer_training.export import export

    models = tmp_path_factory.mktemp("fer_models")
    card = export(
        keras_checkpoint,
        tiny_npz,
        models,
        "fer_vgg16",
        tta=True,
        pca_components=PCA_COMPONENTS,
        batch_size=32,
        log=lambda *_: None,
    )
    return models, card
