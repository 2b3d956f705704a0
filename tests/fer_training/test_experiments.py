import json

import numpy as np
import pytest

from moodtunes_fer_training import experiments
from moodtunes_fer_training.model import FEATURE_LAYERS


@pytest.fixture(scope="module")
def reports(tmp_path_factory, keras_checkpoint, tiny_npz):
    base = tmp_path_factory.mktemp("fer_experiments")
    logs = []
    out = experiments.run(
        "all", keras_checkpoint, tiny_npz, base / "reports", base / "cache", log=logs.append
    )
    return base, out, logs


def test_features_are_cached_and_equal_keras_taps(reports, keras_checkpoint, tiny_npz):
    import keras

    from moodtunes_fer_training.model import feature_extractor

    base, _, logs = reports
    assert any("extracting" in line for line in logs)
    assert len(list((base / "cache").glob("features_*.npz"))) == 1
    again = []
    feats = experiments.extract_features(keras_checkpoint, tiny_npz, base / "cache", log=again.append)
    assert any("from cache" in line for line in again)
    assert not any("extracting" in line for line in again)

    from moodtunes_fer.preprocessing import to_model_input

    with np.load(tiny_npz) as z:
        x_val = to_model_input(z["x_val"])
    model = keras.models.load_model(keras_checkpoint, compile=False)
    truth = feature_extractor(model, FEATURE_LAYERS)(x_val, training=False)
    for layer in FEATURE_LAYERS:  # relu taps are derived from the cached pre-activations
        np.testing.assert_allclose(feats[f"val/{layer}"], truth[layer].numpy(), rtol=1e-5, atol=1e-7)
    assert feats["train/flatten"].shape == (80, 256) and feats["train/fc2"].shape == (80, 512)


def test_layers_report(reports):
    base, out, _ = reports
    report = json.loads((base / "reports" / "layers.json").read_text())
    assert report == out["layers"]
    assert [r["name"] for r in report["results"]] == list(FEATURE_LAYERS)
    dims = {r["name"]: r["feature_dim"] for r in report["results"]}
    assert dims == {"flatten": 256, "fc1": 1024, "fc1_relu": 1024, "fc2": 512, "fc2_relu": 512}
    assert all(r["kind"] == "svm" for r in report["results"])
    assert report["paper"]["best"]["accuracy"] == 0.635
    assert (base / "reports" / "layers.png").stat().st_size > 1000


def test_pca_report(reports):
    base, out, _ = reports
    report = out["pca"]
    assert [r["name"] for r in report["results"]] == ["20", "50", "100", "none"]
    # 80 training images cap the component count; "none" keeps all 1024 dims
    assert [r["pca_components"] for r in report["results"]] == [20, 50, 80, None]
    assert (base / "reports" / "pca.png").is_file()


def test_classifiers_report(reports):
    base, out, _ = reports
    report = out["classifiers"]
    names = [r["name"] for r in report["results"]]
    assert names == ["svm", "tree", "knn_k1", "knn_k3", "knn_k5", "knn_k7", "logreg", "cnn_softmax"]
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["knn_k3"]["k"] == 3
    # the shared configuration is the same run in all three experiments
    assert by_name["svm"] == next(r for r in out["layers"]["results"] if r["name"] == "fc1_relu") | {
        "name": "svm"
    }
    best = max(report["results"], key=lambda r: r["accuracy"])
    assert report["best"] == best["name"] and report["best_accuracy"] == best["accuracy"]
    for r in report["results"]:
        assert np.array(r["confusion_matrix"]).sum() == 40 and len(r["per_class_recall"]) == 5
    assert by_name["svm"]["accuracy"] >= 0.8  # class-coded patches: features carry the label
    assert (base / "reports" / "classifiers.png").stat().st_size > 1000


def test_unknown_experiment(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.run("dropout", tmp_path / "x.keras", None, tmp_path, tmp_path)
