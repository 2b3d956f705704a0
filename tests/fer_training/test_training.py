import csv
import json

import numpy as np

from moodtunes_fer_training import train as fer_train


def test_training_smoke_run_writes_checkpoints_and_state(tmp_path, tiny_npz):
    out = tmp_path / "run"
    state = fer_train.train(tiny_npz, out, epochs=1, batch_size=16, limit=32, verbose=0, jit_compile=False)
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
    import numpy as np
    import tensorflow as tf

    images = tf.fill((64, 48, 48, 1), 7.0)
    erased = fer_train.random_erasing(images, prob=1.0, area=(0.1, 0.1)).numpy()
    changed = (erased != 7.0).reshape(64, -1).mean(axis=1)
    # every image loses about 10% of its pixels to noise (a rectangle; rounding at the edges)
    assert np.all(changed > 0.04) and np.all(changed < 0.16)
    for img in erased[..., 0]:  # the changed pixels form one axis-aligned rectangle
        rows, cols = np.nonzero(img != 7.0)
        box = img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box != 7.0).mean() > 0.95
    untouched = fer_train.random_erasing(images, prob=0.0).numpy()
    np.testing.assert_array_equal(untouched, images.numpy())


def test_mixup_blends_images_labels_and_weights_with_one_weight_per_pair():
    import numpy as np
    import tensorflow as tf

    n = 32
    classes = np.arange(n) % 4
    # image i is filled with the value i, so a mixed image reveals its two sources and weight
    images = tf.constant(np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 4, 4, 1)))
    labels = tf.constant(np.eye(4, dtype=np.float32)[classes])
    weights = tf.constant(np.linspace(0.5, 2.0, n, dtype=np.float32))
    mixed, soft, w = (t.numpy() for t in fer_train.mixup(images, labels, weights, alpha=0.4))
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
                explained |= abs(w[i] - (lam * weights[i] + (1 - lam) * weights[j]).numpy()) < 1e-4
        assert explained, i
    assert blended > n // 2  # alpha 0.4 blends almost every image visibly


def test_extra_data_joins_the_training_split_only(tmp_path, tiny_npz, make_fer_images):
    x_extra, y_extra = make_fer_images(6, 9)
    x_extra[0] = 128  # a blank frame: cleaned away like in the main split
    extra = tmp_path / "supplement.npz"
    np.savez(extra, x_train=x_extra, y_train=y_extra)
    state = fer_train.train(
        tiny_npz,
        tmp_path / "run",
        epochs=1,
        batch_size=16,
        limit=32,
        verbose=0,
        jit_compile=False,
        extra_data=extra,
    )
    assert state["extra_data"]["images_in"] == 30 and state["extra_data"]["dropped_blank"] == 1
    assert state["train_images"] == 32 + 29
    assert state["val_images"] == 32
