import json

import numpy as np
import pytest

from moodtunes_fer import inference
from moodtunes_fer_training.in_process import InProcessBackend
from moodtunes_fer_training.model import CLASS_NAMES


@pytest.fixture(scope="module")
def version_dir(exported):
    models, card = exported
    return models / "fer_vgg16" / str(card["model_version"])


@pytest.fixture(scope="module")
def keras_features(keras_checkpoint):
    """Keras' own fc1_relu/probabilities for an image batch, used as ground truth."""
    import keras

    from moodtunes_fer_training.model import feature_extractor

    extractor = feature_extractor(keras.models.load_model(keras_checkpoint, compile=False))

    def run(x):
        out = extractor(x, training=False)
        return out["fc1_relu"].numpy(), out["probabilities"].numpy()

    return run


def test_export_writes_tf_serving_layout(exported, version_dir):
    models, card = exported
    assert card["model_version"] == 1
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables").is_dir()
    assert {p.name for p in (version_dir / "head").iterdir()} == {"head.joblib", "head.json"}
    # nothing but numeric version folders is left where a server watches
    assert [p.name for p in (models / "fer_vgg16").iterdir()] == ["1"]
    total = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())
    assert total < 60e6


def test_signature_shapes(version_dir):
    import tensorflow as tf

    sig = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    (_, inputs), outputs = sig.structured_input_signature, sig.structured_outputs
    assert list(inputs) == ["image"]
    assert inputs["image"].shape.as_list() == [None, 48, 48, 1]
    assert inputs["image"].dtype == tf.float32
    assert outputs["features"].shape.as_list() == [None, 1024]
    assert outputs["probabilities"].shape.as_list() == [None, 5]


def test_served_features_are_the_tta_mean_of_keras_features(version_dir, keras_features, make_fer_images):
    x = make_fer_images(2, seed=5)[0][..., None].astype(np.float32)
    feats, probs, version = InProcessBackend(version_dir, batch_size=4).features_and_probabilities(x)
    plain_f, plain_p = keras_features(x)
    flip_f, flip_p = keras_features(x[:, :, ::-1])
    assert version == 1 and feats.shape == (10, 1024) and probs.shape == (10, 5)
    np.testing.assert_allclose(feats, (plain_f + flip_f) / 2, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(probs, (plain_p + flip_p) / 2, rtol=1e-4, atol=1e-6)
    assert not np.allclose(feats, plain_f, rtol=1e-3, atol=0)  # the mirror really counted


def test_export_without_tta_serves_plain_features(
    tmp_path, keras_checkpoint, keras_features, make_fer_images
):
    import keras

    from moodtunes_fer_training.export import write_saved_model

    write_saved_model(keras.models.load_model(keras_checkpoint, compile=False), tmp_path / "7", tta=False)
    x = make_fer_images(1, seed=6)[0][..., None].astype(np.float32)
    feats, probs, version = InProcessBackend(tmp_path / "7").features_and_probabilities(x)
    plain_f, plain_p = keras_features(x)
    assert version == 7
    np.testing.assert_allclose(feats, plain_f, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(probs, plain_p, rtol=1e-4, atol=1e-6)


def test_pipeline_round_trip(exported, tiny_npz):
    models, card = exported
    head = inference.load_head_for_version(models, "fer_vgg16")
    assert head.meta["model_version"] == 1 and head.meta["feature_dim"] == 1024
    backend = InProcessBackend(inference.version_dir(models, "fer_vgg16"))
    with np.load(tiny_npz) as z:
        x_val, y_val = z["x_val"], z["y_val"]
    crops = [np.kron(c, np.ones((2, 2), np.uint8)) for c in x_val[:4]]  # 96x96 crops
    proba = inference.FerPipeline(backend, head).predict_proba(crops)
    assert proba.shape == (4, len(CLASS_NAMES))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    pred = inference.FerPipeline(backend, models_dir=models).predict(x_val)
    # the class-coded patches survive random CNN features: a scrambled class order would not
    assert (pred.probabilities.argmax(1) == y_val).mean() == pytest.approx(card["metrics"]["accuracy"])
    assert card["metrics"]["accuracy"] >= 0.8
    assert pred.labels[0] in CLASS_NAMES and pred.model_version == 1


def test_head_of_another_version_is_refused(exported, make_fer_images):
    models, _ = exported
    head = inference.load_head_for_version(models, "fer_vgg16", 1)
    head.meta["model_version"] = 2
    backend = InProcessBackend(inference.version_dir(models, "fer_vgg16", 1))
    with pytest.raises(inference.HeadMismatchError, match="version 2"):
        inference.FerPipeline(backend, head).predict(make_fer_images(1, seed=2)[0])


def test_model_card(exported, version_dir, tiny_npz):
    _, card = exported
    on_disk = json.loads((version_dir / "model_card.json").read_text())
    assert on_disk == card
    assert card["tta"] is True and card["class_names"] == list(CLASS_NAMES)
    assert card["data"]["train_cleaning"]["images_in"] == 80
    assert card["data"]["head_fit_images"] == 80 and card["data"]["val_images"] == 40
    assert card["architecture"]["parameters"] > 4_000_000
    assert card["head"]["kind"] == "svm" and card["head"]["pca_components"] == 10
    assert card["head"]["pipeline"] == "PCA -> StandardScaler -> CalibratedClassifierCV"
    m = card["metrics"]
    assert set(m["per_class_recall"]) == set(CLASS_NAMES)
    assert np.array(m["confusion_matrix"]).sum() == 40
    assert 0 <= m["cnn_softmax"]["accuracy"] <= 1
    assert card["training"]["epochs_done"] == 3 and card["training"]["train_seconds"] == 12.5
    assert card["training"]["hardware"] == [{"machine": "test-cpu", "cpu_count": 2}]
    assert card["training"]["total_epochs"] == 3 and card["training"]["init_from"] is None
    assert card["hyperparameters"]["batch_size"] == 16
    assert {"tensorflow", "keras", "scikit-learn"} <= set(card["libraries"])
    assert card["timings_s"]["export_total"] > 0


def test_versions_are_immutable_and_numbered(exported, keras_checkpoint, tiny_npz):
    from moodtunes_fer_training.export import export, next_version

    models, _ = exported
    assert next_version(models, "fer_vgg16") == 2
    with pytest.raises(FileExistsError):
        export(keras_checkpoint, tiny_npz, models, "fer_vgg16", version=1, log=lambda *_: None)
    assert [p.name for p in (models / "fer_vgg16").iterdir()] == ["1"]


def test_model_card_totals_span_the_runs_the_weights_came_from():
    """A continued run's card counts the epochs and seconds of the run it started from."""
    from moodtunes_fer_training.export import _lineage_total

    state = {
        "epochs_done": 28,
        "train_seconds": 4800.0,
        "init_from": {"path": "models/fer_vgg16/1", "epochs_done": 30, "train_seconds": 4516.7},
    }
    assert _lineage_total(state, "epochs_done") == 58
    assert _lineage_total(state, "train_seconds") == 9316.7
    assert _lineage_total({"epochs_done": 3}, "epochs_done") == 3


def test_export_ships_tf_serving_warmup_requests_the_server_replays(version_dir):
    import tensorflow as tf

    from moodtunes_model_server.models import WARMUP_FILE, load_servable
    from moodtunes_tfserving.proto.tensorflow_serving.apis import prediction_log_pb2
    from moodtunes_tfserving.tensors import make_ndarray

    records = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(str(version_dir / WARMUP_FILE))
    ]
    requests = [r.predict_log.request for r in records]
    assert [r.model_spec.name for r in requests] == ["fer_vgg16"] * 3
    assert [make_ndarray(r.inputs["image"]).shape for r in requests] == [(n, 48, 48, 1) for n in (1, 4, 32)]
    servable = load_servable("fer_vgg16", 1, str(version_dir))  # replays them while loading
    assert servable.signatures["serving_default"].run({"image": make_ndarray(requests[0].inputs["image"])})[
        "probabilities"
    ].shape == (1, 5)
