"""The paper's classical head on CNN features: PCA -> StandardScaler -> classifier.

Saved with joblib beside a JSON sidecar; a pickled scikit-learn model is only trustworthy under
the scikit-learn release that wrote it, so loading under another major.minor fails loudly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin  # DistilledSVC is part of a pickled head

from moodtunes_fer.signature import CLASS_NAMES

HEAD_FILE = "head.joblib"
META_FILE = "head.json"
SEED = 1337
PCA_COMPONENTS = 50  # the paper's choice
SVM_C = 1.0
SVM_GAMMA = "scale"
KNN_K = 5
CALIBRATION_FOLDS = 5  # Platt scaling folds; what SVC(probability=True) did internally
KINDS = ("svm", "knn", "tree", "logreg")


class DistilledSVC(ClassifierMixin, BaseEstimator):
    """An RBF SVC fitted on one set of labels, with probabilities calibrated on another.

    A head distilled from an ensemble draws its boundaries from the ensemble's labels of the
    training faces (cleaner than FER2013's: `decision_y`), but the music needs probabilities that
    mean what they say about real faces, so the calibration is fitted on FER2013's own labels (`y`):
    a multinomial logistic regression on the SVC's out-of-fold decision values (Platt scaling, made
    multiclass). Platt scaling on the ensemble's labels instead was measured overconfident
    (x_val: mean top probability 0.93 at 0.71 accuracy; `benchmarks/fer_head_labels.py`).
    """

    def __init__(self, C: float = 1.0, gamma: float | str = "scale", folds: int = 5, seed: int = 1337):
        self.C, self.gamma, self.folds, self.seed = C, gamma, folds, seed

    def _svc(self):
        from sklearn.svm import SVC

        return SVC(kernel="rbf", C=self.C, gamma=self.gamma, random_state=self.seed)

    def fit(self, X, y, decision_y=None):
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        y = np.asarray(y)
        decision_y = y if decision_y is None else np.asarray(decision_y)
        folds = StratifiedKFold(self.folds, shuffle=True, random_state=self.seed)
        decisions = np.zeros((len(y), len(np.unique(decision_y))))
        for fit_rows, held_rows in folds.split(X, decision_y):
            decisions[held_rows] = (
                self._svc().fit(X[fit_rows], decision_y[fit_rows]).decision_function(X[held_rows])
            )
        self.svc_ = self._svc().fit(X, decision_y)
        self.calibrator_ = LogisticRegression(max_iter=2000).fit(decisions, y)
        self.classes_ = self.calibrator_.classes_
        return self

    def predict_proba(self, X):
        return self.calibrator_.predict_proba(self.svc_.decision_function(X))

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class HeadVersionError(RuntimeError):
    """The head was pickled by a different scikit-learn release than the one installed."""


def build_head(
    kind: str = "svm",
    pca_components: int | None = PCA_COMPONENTS,
    *,
    C: float = SVM_C,
    gamma: float | str = SVM_GAMMA,
    k: int = KNN_K,
    max_depth: int | None = None,
    probability: bool = True,
    distilled: bool = False,
    seed: int = SEED,
):
    """An unfitted Pipeline(pca, scale, clf); `pca_components=None` skips PCA.

    `distilled` (svm only) makes the classifier a `DistilledSVC`: fit it with
    `pipeline.fit(features, true_labels, clf__decision_y=teacher_labels)`.

    For "svm" with `probability=True` the RBF SVC is wrapped in a Platt-scaling
    CalibratedClassifierCV(ensemble=False): scikit-learn 1.9 deprecated SVC(probability=True) in
    favour of exactly that. `probability=False` gives the bare SVC (one fit instead of six), for
    experiments that only need labels.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    if distilled and kind != "svm":
        raise ValueError("only the svm head can be distilled")
    if kind == "svm" and distilled:
        clf = DistilledSVC(C=C, gamma=gamma, folds=CALIBRATION_FOLDS, seed=seed)
    elif kind == "svm":
        clf = SVC(kernel="rbf", C=C, gamma=gamma, random_state=seed)
        if probability:
            clf = CalibratedClassifierCV(clf, method="sigmoid", cv=CALIBRATION_FOLDS, ensemble=False)
    elif kind == "knn":
        clf = KNeighborsClassifier(n_neighbors=k)
    elif kind == "tree":
        clf = DecisionTreeClassifier(max_depth=max_depth, random_state=seed)
    elif kind == "logreg":
        clf = LogisticRegression(max_iter=2000, random_state=seed)
    else:
        raise ValueError(f"unknown head kind {kind!r}; choose one of {KINDS}")
    pca = PCA(pca_components, random_state=seed) if pca_components else "passthrough"
    return Pipeline([("pca", pca), ("scale", StandardScaler()), ("clf", clf)])


def head_params(kind: str, pca_components: int | None, **params) -> dict:
    """The hyperparameters that matter for `kind`, for model cards and reports."""
    relevant = {"svm": ("C", "gamma", "probability"), "knn": ("k",), "tree": ("max_depth",), "logreg": ()}[
        kind
    ]
    return {
        "kind": kind,
        "pca_components": pca_components,
        **{key: params[key] for key in relevant if key in params},
    }


def proba_in_class_order(pipeline, features: np.ndarray) -> np.ndarray:
    """predict_proba with columns in CLASS_NAMES order; a class absent at fit time gets 0."""
    proba = pipeline.predict_proba(features)
    out = np.zeros((len(features), len(CLASS_NAMES)), dtype=np.float64)
    classes = np.asarray(pipeline.classes_).astype(np.int64)
    if classes.min() < 0 or classes.max() >= len(CLASS_NAMES):
        raise ValueError(f"head classes {classes.tolist()} are not indices into {CLASS_NAMES}")
    out[:, classes] = proba
    return out


def _sklearn_release(version: str) -> str:
    return ".".join(version.split(".")[:2])


@dataclass
class Head:
    pipeline: object
    meta: dict = field(default_factory=dict)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, 5) probabilities in CLASS_NAMES order."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2:
            raise ValueError(f"expected (N, D) features, got shape {features.shape}")
        expected = self.meta.get("feature_dim")
        if expected is not None and features.shape[1] != expected:
            raise ValueError(f"head expects {expected}-d features, got {features.shape[1]}")
        return proba_in_class_order(self.pipeline, features)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.predict_proba(features).argmax(axis=1)


def save_head(pipeline, directory: str | os.PathLike, meta: dict | None = None) -> Path:
    """Writes head.joblib and head.json (meta + class names + library versions)."""
    import joblib
    import sklearn

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, out / HEAD_FILE, compress=3)
    meta = dict(meta or {})
    meta.update(
        {
            "class_names": list(CLASS_NAMES),
            "classes": np.asarray(pipeline.classes_).astype(int).tolist(),
            "sklearn_version": sklearn.__version__,
            "joblib_version": joblib.__version__,
            "numpy_version": np.__version__,
        }
    )
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def load_head(directory: str | os.PathLike) -> Head:
    import joblib
    import sklearn

    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file() or not (directory / HEAD_FILE).is_file():
        raise FileNotFoundError(f"no head ({HEAD_FILE} + {META_FILE}) in {directory}")
    meta = json.loads(meta_path.read_text())
    saved = meta.get("sklearn_version", "unknown")
    if _sklearn_release(saved) != _sklearn_release(sklearn.__version__):
        raise HeadVersionError(
            f"head in {directory} was saved with scikit-learn {saved} but {sklearn.__version__} "
            f"is installed; install scikit-learn=={saved} or re-export the head"
        )
    if tuple(meta.get("class_names", CLASS_NAMES)) != CLASS_NAMES:
        raise ValueError(f"head classes {meta['class_names']} differ from {CLASS_NAMES}")
    return Head(joblib.load(directory / HEAD_FILE), meta)
