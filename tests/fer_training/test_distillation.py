"""Distilling an ensemble into one network: the teacher's targets, their guard, the student run."""

import json

import keras
import numpy as np
import pytest

from moodtunes_fer_training import data as fer_data
from moodtunes_fer_training import parallel_runs, teacher
from moodtunes_fer_training import train as fer_train
from moodtunes_fer_training.augment import TrainingBatches
from moodtunes_fer_training.model import build_vgg16


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Two differently seeded untrained networks: their ensemble is not either one of them."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        build_vgg16().save(folder / f"m{seed}.keras")
        paths.append(folder / f"m{seed}.keras")
    return paths


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, tiny_npz, two_checkpoints):
    out = tmp_path_factory.mktemp("teacher") / "teacher.npz"
    return out, teacher.write_teacher(tiny_npz, two_checkpoints, out)


def test_teacher_targets_are_the_mean_of_each_networks_flip_averaged_softmax(
    tiny_npz, two_checkpoints, teacher_file
):
    out, report = teacher_file
    train = fer_data.clean_training_split(fer_data.load_split(tiny_npz, "train"))
    images = train.x[..., None].astype(np.float32)
    expected = np.zeros((len(images), 5), np.float32)
    for path in two_checkpoints:
        model = keras.models.load_model(path, compile=False)
        expected += (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 4
    probs = teacher.load_teacher(out, train.x)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert report["train_images"] == len(train.x) == 80
    assert report["teacher_train_accuracy"] == pytest.approx(float((expected.argmax(1) == train.y).mean()))


def test_targets_made_for_other_images_are_refused(tiny_npz, teacher_file):
    out, _ = teacher_file
    train = fer_data.clean_training_split(fer_data.load_split(tiny_npz, "train"))
    reordered = train.x[::-1]
    with pytest.raises(ValueError, match="another training split"):
        teacher.load_teacher(out, reordered)
    with pytest.raises(ValueError, match="another training split"):
        teacher.load_teacher(out, train.x[:-1])


def test_training_batches_serve_the_given_soft_targets(make_fer_images):
    x, y = make_fer_images(4, seed=5)
    soft = np.random.default_rng(0).dirichlet(np.ones(5), len(x)).astype(np.float32)
    batches = TrainingBatches(x, y, 8, 5, mixup_alpha=0.0, seed=3, targets=soft)
    _, targets, _ = batches[1]
    np.testing.assert_allclose(targets, soft[batches.order[8:16]])


def test_a_student_run_trains_on_the_blend_and_records_its_teacher(
    tmp_path, tiny_npz, teacher_file, monkeypatch
):
    out, _ = teacher_file
    seen = {}
    real = fer_train.make_dataset

    def spy(x, y, batch_size, num_classes, training, *args, **kwargs):
        ds = real(x, y, batch_size, num_classes, training, *args, **kwargs)
        if training:
            seen["targets"], seen["y"], seen["x"] = ds.onehot, y, x
        return ds

    monkeypatch.setattr(fer_train, "make_dataset", spy)
    state = fer_train.train(
        tiny_npz, tmp_path / "student", epochs=1, batch_size=16, verbose=0, jit_compile=False,
        teacher=out, teacher_weight=0.6,
    )  # fmt: skip
    assert state["teacher"] == {"path": str(out), "weight": 0.6}
    assert state["hyperparameters"]["label_smoothing"] == 0.0
    onehot = np.eye(5, dtype=np.float32)[seen["y"]]
    blend = 0.6 * teacher.load_teacher(out, seen["x"]) + 0.4 * onehot
    np.testing.assert_allclose(seen["targets"], blend, atol=1e-6)
    with pytest.raises(ValueError, match="cleaned FER2013 split only"):
        fer_train.train(tiny_npz, tmp_path / "limited", epochs=1, limit=32, verbose=0, teacher=out)


def test_compact_weights_start_a_run_where_the_checkpoint_was(tmp_path, keras_checkpoint):
    compact = tmp_path / "init.npz"
    fer_train.save_compact_weights(keras_checkpoint, compact)
    assert compact.stat().st_size < keras_checkpoint.stat().st_size * 0.46
    model = build_vgg16()
    fer_train.load_initial_weights(model, compact)
    reference = keras.models.load_model(keras_checkpoint, compile=False)
    for mine, theirs in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-3, atol=1e-4)  # float16 round trip


def test_distill_preset_needs_starting_weights_and_fills_them_in(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        parallel_runs.main(["--data", "x.npz", "--budget", "5", "--preset", "distill"])
    launched = {}
    monkeypatch.setattr(
        parallel_runs, "launch", lambda runs, *a, **k: launched.update(runs) or {n: 0 for n, _ in runs}
    )
    parallel_runs.main(
        ["--data", "x.npz", "--out", str(tmp_path), "--budget", "5", "--preset", "distill",
         "--init-from", "init.npz", "--", "--teacher", "t.npz"]
    )  # fmt: skip
    assert set(launched) == {name for name, _ in parallel_runs.DISTILL_RUNS}
    warm = [name for name, options in launched.items() if "--init-from" in options]
    assert warm and all(launched[n][launched[n].index("--init-from") + 1] == "init.npz" for n in warm)
    assert json.dumps(launched).count("{init}") == 0


def test_export_can_fit_the_head_on_the_ensembles_labels(tmp_path, tiny_npz, keras_checkpoint):
    from moodtunes_fer_training.export import export

    train = fer_data.clean_training_split(fer_data.load_split(tiny_npz, "train"))
    relabelled = np.where(np.arange(len(train.y)) % 3 == 0, (train.y + 1) % 5, train.y)  # a third moved
    out = tmp_path / "teacher.npz"
    report = {"train_digest": teacher.split_digest(train.x), "train_images": len(train.y)}
    np.savez(out, probs_train=np.eye(5, dtype=np.float32)[relabelled], report=np.array(json.dumps(report)))
    card = export(
        keras_checkpoint, tiny_npz, tmp_path / "models", "fer_vgg16", tta=True, pca_components=10,
        batch_size=32, log=lambda *_: None, head_teacher=out,
    )  # fmt: skip
    data = card["data"]
    assert data["head_fit_class_counts"] == np.bincount(relabelled, minlength=5).tolist()
    assert data["head_fit_class_counts"] != np.bincount(train.y, minlength=5).tolist()
    assert data["head_fit_labels"].startswith("teacher argmax")
    assert data["head_fit_label_agreement"] == pytest.approx(float((relabelled == train.y).mean()))
