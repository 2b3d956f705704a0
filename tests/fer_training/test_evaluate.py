import numpy as np
import pytest

from moodtunes_fer_training.evaluate import classification_metrics, evaluate, format_report
from moodtunes_fer_training.model import CLASS_NAMES


def test_classification_metrics_by_hand():
    y_true = [0, 0, 1, 1, 2, 3, 4, 4]
    y_pred = [0, 1, 1, 1, 2, 3, 4, 0]
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["per_class_recall"] == {"neutral": 0.5, "happy": 1.0, "sad": 1.0, "fear": 1.0, "angry": 0.5}
    assert m["confusion_matrix"][0] == [1, 1, 0, 0, 0]
    assert m["confusion_matrix"][4] == [1, 0, 0, 0, 1]
    assert m["n"] == 8 and 0 < m["macro_f1"] < 1


def test_evaluate_in_process_matches_the_export_metrics(exported, tiny_npz):
    models, card = exported
    result = evaluate(tiny_npz, "val", models, "fer_vgg16", return_predictions=True)
    assert result["route"] == "in_process" and result["model_version"] == 1
    assert result["n"] == 40 and len(result["predictions"]) == 40
    for key in ("accuracy", "macro_f1", "per_class_recall", "confusion_matrix"):
        assert result[key] == card["metrics"][key]
    assert result["cnn_accuracy"] == card["metrics"]["cnn_softmax"]["accuracy"]
    text = format_report(result)
    assert "confusion matrix" in text and all(c in text for c in CLASS_NAMES)


def test_evaluate_other_split_and_errors(exported, tiny_npz):
    models, _ = exported
    assert evaluate(tiny_npz, "train", models)["n"] == 80
    with pytest.raises(KeyError, match="x_test"):
        evaluate(tiny_npz, "test", models)
    with pytest.raises(FileNotFoundError, match="version"):
        evaluate(tiny_npz, "val", models, version=9)


def test_grpc_route_gives_identical_predictions(exported, tiny_npz, make_fer_images):
    from moodtunes_fer.inference import GrpcBackend, version_dir
    from moodtunes_fer.preprocessing import to_model_input
    from moodtunes_fer_training.in_process import InProcessBackend

    testing = pytest.importorskip("moodtunes_model_server.testing")
    models, _ = exported
    local = evaluate(tiny_npz, "val", models, return_predictions=True)
    x = to_model_input(make_fer_images(2, seed=9)[0])
    local_f, local_p, _ = InProcessBackend(version_dir(models, "fer_vgg16")).features_and_probabilities(x)
    with testing.running_model_server(models, "fer_vgg16") as address:
        remote = evaluate(tiny_npz, "val", models, server=address, return_predictions=True)
        backend = GrpcBackend(address, "fer_vgg16", batch_size=4)
        remote_f, remote_p, remote_version = backend.features_and_probabilities(x)
        backend.close()
    assert remote_version == 1
    np.testing.assert_allclose(remote_f, local_f, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(remote_p, local_p, rtol=1e-5, atol=1e-8)
    assert remote["route"] == "grpc" and remote["model_version"] == local["model_version"]
    assert remote["predictions"] == local["predictions"]
    assert remote["confusion_matrix"] == local["confusion_matrix"]
    np.testing.assert_equal(remote["accuracy"], local["accuracy"])
