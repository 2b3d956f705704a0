import json

import numpy as np
import pytest

from moodtunes_fer.head import HeadVersionError, build_head, load_head, proba_in_class_order, save_head
from moodtunes_fer_training.model import CLASS_NAMES


def blobs(n_per_class=20, dim=64, classes=range(5), seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (5, dim))
    y = np.repeat(np.array(list(classes)), n_per_class)
    return (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize(
    "kind,params", [("svm", {}), ("knn", {"k": 3}), ("tree", {"max_depth": 4}), ("logreg", {})]
)
def test_every_kind_fits_and_gives_probabilities_in_class_order(kind, params):
    x, y = blobs()
    pipe = build_head(kind, pca_components=8, **params).fit(x, y)
    proba = proba_in_class_order(pipe, x)
    assert proba.shape == (len(x), len(CLASS_NAMES))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba.argmax(1) == y).mean() > 0.9


def test_pipeline_layout_and_no_pca_option():
    assert [name for name, _ in build_head().steps] == ["pca", "scale", "clf"]
    assert build_head().named_steps["pca"].n_components == 50
    assert build_head(pca_components=None).named_steps["pca"] == "passthrough"
    with pytest.raises(ValueError, match="unknown head kind"):
        build_head("forest")


def test_missing_class_gets_zero_probability_in_its_column():
    x, y = blobs(classes=(0, 1, 2, 4))  # no "fear" examples
    pipe = build_head("logreg", pca_components=None).fit(x, y)
    proba = proba_in_class_order(pipe, x)
    assert proba.shape[1] == 5
    assert np.all(proba[:, CLASS_NAMES.index("fear")] == 0)
    np.testing.assert_array_equal(proba.argmax(1), y)  # angry (4) lands in column 4, not 3


def test_save_load_round_trip_and_sklearn_version_guard(tmp_path):
    x, y = blobs()
    pipe = build_head("svm", pca_components=8).fit(x, y)
    save_head(pipe, tmp_path / "head", {"model_version": 3, "feature_dim": x.shape[1]})
    head = load_head(tmp_path / "head")
    assert head.meta["model_version"] == 3 and head.meta["class_names"] == list(CLASS_NAMES)
    np.testing.assert_allclose(head.predict_proba(x), proba_in_class_order(pipe, x))
    with pytest.raises(ValueError, match="64-d"):
        head.predict_proba(x[:, :10])

    meta_path = tmp_path / "head" / "head.json"
    meta = json.loads(meta_path.read_text())
    meta["sklearn_version"] = "0.24.2"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(HeadVersionError, match="0.24.2"):
        load_head(tmp_path / "head")


def test_load_head_needs_both_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_head(tmp_path)


def test_a_distilled_head_draws_boundaries_from_one_labelling_and_calibrates_on_the_other(tmp_path):
    """Clean 'teacher' labels set the boundaries; probabilities are calibrated on the noisy true
    labels, so they say how often the truth agrees (about 70% here), not the teacher's certainty."""
    x_all, clean_all = blobs(n_per_class=100, seed=1)
    fit_rows = np.arange(len(x_all)) % 5 != 0  # the rest: new faces
    x, clean, x_new, clean_new = x_all[fit_rows], clean_all[fit_rows], x_all[~fit_rows], clean_all[~fit_rows]
    rng = np.random.default_rng(2)
    noisy = np.where(rng.random(len(clean)) < 0.3, rng.integers(0, 5, len(clean)), clean)
    agreement = (noisy == clean).mean()

    distilled = build_head("svm", pca_components=8, distilled=True).fit(x, noisy, clf__decision_y=clean)
    platt_on_teacher = build_head("svm", pca_components=8).fit(x, clean)
    proba = proba_in_class_order(distilled, x_new)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba.argmax(1) == clean_new).mean() > 0.95  # the teacher's boundaries
    assert abs(proba.max(1).mean() - agreement) < 0.1  # calibrated to how often the truth agrees
    assert proba_in_class_order(platt_on_teacher, x_new).max(1).mean() > agreement + 0.15

    save_head(distilled, tmp_path, {"feature_dim": 64})
    np.testing.assert_allclose(load_head(tmp_path).predict_proba(x_new), proba)
    with pytest.raises(ValueError, match="only the svm head"):
        build_head("knn", distilled=True)
