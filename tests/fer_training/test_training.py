import csv
import json

import numpy as np

from moodtunes_fer_training import augment
from moodtunes_fer_training import train as fer_train


def tiny_run(tiny_npz, out, **options) -> dict:
    """A seconds-long training run: 32 images per split, batches of 16, one epoch unless told."""
    return fer_train.train(
        tiny_npz,
        out,
        **{"epochs": 1, "batch_size": 16, "limit": 32, "verbose": 0, "jit_compile": False, **options},
    )


def test_training_smoke_run_writes_checkpoints_and_state(tmp_path, tiny_npz):
    out = tmp_path / "run"
    state = tiny_run(tiny_npz, out)
    assert state["epochs_done"] == 1 and state["finished"] is True
    assert state["train_images"] == 32 and state["val_images"] == 32
    assert state["data_report"]["images_out"] == 80
    for name in ("best.keras", "last.keras", "history.csv", "history.png", "train_state.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "train_state.json").read_text())["epochs_done"] == 1
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_accuracy"]) <= 1.0

    import keras

    model = keras.models.load_model(out / "best.keras", compile=False)
    assert model.output_shape == (None, 5)


def test_initial_weights_from_an_export_match_the_served_model(exported):
    """A continued run starts from the served weights exactly, and records what they cost."""
    import numpy as np
    import tensorflow as tf

    from moodtunes_fer_training.model import build_vgg16

    models_dir, card = exported
    version = models_dir / "fer_vgg16" / str(card["model_version"])
    model = build_vgg16()
    fer_train.load_initial_weights(model, version)

    x = np.random.default_rng(3).uniform(0, 255, (3, 48, 48, 1)).astype(np.float32)
    served = tf.saved_model.load(str(version)).signatures["serving_default"](image=tf.constant(x))
    mirrored = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(mirrored, served["probabilities"].numpy(), atol=1e-5)

    summary = fer_train.init_from_summary(version)
    assert summary["epochs_done"] == 3 and summary["train_seconds"] == 12.5


def test_initial_weights_from_a_keras_checkpoint(keras_checkpoint):
    import keras
    import numpy as np

    from moodtunes_fer_training.model import build_vgg16

    model = build_vgg16()
    fer_train.load_initial_weights(model, keras_checkpoint)
    saved = keras.models.load_model(keras_checkpoint, compile=False)
    for mine, theirs in zip(model.get_weights(), saved.get_weights(), strict=False):
        np.testing.assert_array_equal(mine, theirs)
    assert fer_train.init_from_summary(keras_checkpoint)["best_val_accuracy"] == 0.4


def test_random_erasing_blanks_one_box_per_chosen_image_and_nothing_else():
    images = np.full((64, 48, 48, 1), 7.0, np.float32)
    erased = augment.random_erasing(images, np.random.default_rng(0), prob=1.0, area=(0.1, 0.1))
    changed = (erased != 7.0).reshape(64, -1).mean(axis=1)
    # every image loses about 10% of its pixels to noise (a rectangle; rounding at the edges)
    assert np.all(changed > 0.04) and np.all(changed < 0.16)
    for img in erased[..., 0]:  # the changed pixels form one axis-aligned rectangle
        rows, cols = np.nonzero(img != 7.0)
        box = img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box != 7.0).mean() > 0.95
    untouched = augment.random_erasing(images, np.random.default_rng(0), prob=0.0)
    np.testing.assert_array_equal(untouched, images)


def test_mixup_blends_images_labels_and_weights_with_one_weight_per_pair():
    n = 32
    classes = np.arange(n) % 4
    # image i is filled with the value i, so a mixed image reveals its two sources and weight
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 4, 4, 1)).copy()
    labels = np.eye(4, dtype=np.float32)[classes]
    weights = np.linspace(0.5, 2.0, n, dtype=np.float32)
    mixed, soft, w = augment.mixup(images, labels, weights, np.random.default_rng(3), alpha=0.4)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(mixed == mixed[:, :1, :1, :])  # one blend per image, not per pixel
    eye = np.eye(4, dtype=np.float32)
    blended = 0
    for i in range(n):
        value = float(mixed[i, 0, 0, 0])
        if abs(value - i) < 1e-3:  # lam ~ 1 (or partner is itself): the image kept its own label
            np.testing.assert_allclose(soft[i], eye[classes[i]], atol=1e-3)
            continue
        blended += 1
        # some partner j and weight lam explain the pixels, the label and the sample weight at once
        explained = False
        for j in range(n):
            if j == i:
                continue
            lam = (value - j) / (i - j)
            if 0.0 <= lam <= 1.0 and np.allclose(
                soft[i], lam * eye[classes[i]] + (1 - lam) * eye[classes[j]], atol=1e-4
            ):
                explained |= abs(w[i] - (lam * weights[i] + (1 - lam) * weights[j])) < 1e-4
        assert explained, i
    assert blended > n // 2  # alpha 0.4 blends almost every image visibly


def _mirror_test_image():
    """A 48x48 image with a bright block on the left half only, so flips and shifts are visible."""
    img = np.zeros((1, 48, 48, 1), np.float32)
    img[0, 16:32, 4:20, 0] = 200.0
    return img


def test_affine_augmentation_flips_about_half_and_keeps_the_image_in_range(monkeypatch):
    monkeypatch.setattr(augment, "ROTATION_DEG", 0.0)
    monkeypatch.setattr(augment, "SHIFT", 0.0)
    monkeypatch.setattr(augment, "ZOOM", 0.0)
    monkeypatch.setattr(augment, "CONTRAST", 0.0)
    images = np.repeat(_mirror_test_image(), 200, axis=0)
    out = augment.random_affine(images, np.random.default_rng(1))
    left = out[:, 16:32, 4:20, 0].mean(axis=(1, 2))
    right = out[:, 16:32, 28:44, 0].mean(axis=(1, 2))
    flipped = (right > 150) & (left < 50)
    kept = (left > 150) & (right < 50)
    assert np.all(flipped | kept)  # an exact mirror or the image itself, nothing in between
    assert 70 < flipped.sum() < 130
    np.testing.assert_allclose(out[kept], images[kept], atol=1e-3)
    np.testing.assert_allclose(out[flipped], images[flipped][:, :, ::-1], atol=1e-3)


def test_affine_augmentation_moves_rotates_and_rescales_within_its_limits():
    images = np.repeat(_mirror_test_image(), 100, axis=0)
    out = augment.random_affine(images, np.random.default_rng(2))
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 255.0
    changed = np.abs(out - images).reshape(100, -1).max(axis=1) > 1.0
    assert changed.mean() > 0.9  # almost every image is transformed
    # the bright block stays roughly the same size: zoom is +-10%, contrast +-20%
    area = (out > 100).reshape(100, -1).sum(axis=1)
    assert np.all(area > 16 * 16 * 0.6) and np.all(area < 16 * 16 * 1.5)


def test_training_batches_replay_exactly_and_reshuffle_each_epoch(make_fer_images):
    x, y = make_fer_images(8, 5)
    weights = fer_train.class_weights(y, 5)
    first = augment.TrainingBatches(x, y, 16, 5, weights, mixup_alpha=0.2, seed=9)
    again = augment.TrainingBatches(x, y, 16, 5, weights, mixup_alpha=0.2, seed=9)
    assert len(first) == 3
    images, labels, sw = first[2]
    assert images.shape == (8, 48, 48, 1) and labels.shape == (8, 5) and sw.shape == (8,)
    for a, b in zip(first[0], again[0], strict=True):  # same seed, epoch and index: same batch
        np.testing.assert_array_equal(a, b)
    order = first.order.copy()
    first.on_epoch_end()
    assert first.epoch == 1 and not np.array_equal(order, first.order)
    assert sorted(first.order.tolist()) == list(range(40))


def test_budgeted_schedule_warms_up_then_anneals_over_the_planned_epochs():
    assert fer_train.cosine_lr(0, 20, 0.02) == 0.002
    rates = [fer_train.cosine_lr(e, 20, 0.02) for e in range(1, 20)]
    assert rates[0] > 0.0199 and rates[-1] < 0.0002
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    # the first epoch pays for compilation: left out of the typical epoch time once others exist
    assert fer_train.plan_epochs([30.0], elapsed=30.0, budget=100.0, done=1, cap=50) == 3
    assert fer_train.plan_epochs([30.0, 5.0, 5.0], elapsed=40.0, budget=100.0, done=3, cap=50) == 15
    assert fer_train.plan_epochs([30.0, 5.0, 5.0], elapsed=40.0, budget=100.0, done=3, cap=10) == 10
    assert fer_train.plan_epochs([30.0, 5.0], elapsed=98.0, budget=100.0, done=2, cap=50) == 2


def test_a_time_budget_stops_the_run_and_records_its_plan(tmp_path, tiny_npz):
    state = tiny_run(tiny_npz, tmp_path / "run", epochs=50, time_budget_s=1.0)
    # a one-second budget allows the first epoch only; the run stops there and calls itself finished
    assert state["epochs_done"] == 1 and state["epochs_planned"] == 1 and state["finished"] is True
    assert state["time_budget_s"] == 1.0 and state["learning_rate_by_epoch"] == {"1": 0.001}


def test_extra_data_joins_the_training_split_only(tmp_path, tiny_npz, make_fer_images):
    x_extra, y_extra = make_fer_images(6, 9)
    x_extra[0] = 128  # a blank frame: cleaned away like in the main split
    extra = tmp_path / "supplement.npz"
    np.savez(extra, x_train=x_extra, y_train=y_extra)
    state = tiny_run(tiny_npz, tmp_path / "run", extra_data=extra)
    assert state["extra_data"]["images_in"] == 30 and state["extra_data"]["dropped_blank"] == 1
    assert state["train_images"] == 32 + 29
    assert state["val_images"] == 32
