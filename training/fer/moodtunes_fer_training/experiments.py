"""The paper's three experiments on CNN features, each written to reports/<name>.json and .png.

    layers       which feature tap feeds the SVM best (flatten, fc1, fc1_relu, fc2, fc2_relu)
    pca          how many PCA components (20, 50, 100, none) before the SVM
    classifiers  SVM vs decision tree vs KNN (k = 1, 3, 5, 7) vs logistic regression vs the
                 CNN's own softmax, on fc1_relu features with PCA 50

Features are extracted once from a Keras checkpoint and cached as an .npz keyed by the checkpoint's
and the dataset's content, so the experiments (and reruns) share them. Labels-only fits are used
(SVC without Platt scaling): the experiments compare accuracy, not calibration.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from moodtunes_fer.head import PCA_COMPONENTS, SEED, build_head, head_params
from moodtunes_fer.preprocessing import to_model_input
from moodtunes_fer_training.model import CLASS_NAMES, FEATURE_LAYERS, SERVING_FEATURE_LAYER

EXPERIMENTS = ("layers", "pca", "classifiers")
CHECKPOINT = "runs/fer_vgg16/best.keras"
REPORTS_DIR = "reports"
CACHE_DIR = ".var/fer_features"
BATCH_SIZE = 128
PCA_CHOICES = (20, 50, 100, None)
KNN_KS = (1, 3, 5, 7)
CNN_SOFTMAX = "cnn_softmax"
# Layers computed by the CNN and cached; the ReLU taps are derived as max(x, 0) on load.
STORED_LAYERS = {"flatten": "flatten", "fc1": "fc1", "fc1_relu": "fc1", "fc2": "fc2", "fc2_relu": "fc2"}
# What the paper reports (AffectNet, 5 classes, VGG16 features + PCA 50 + RBF SVM). Only the best
# figure is recorded here; the paper's other per-setting numbers are not reproduced from memory.
PAPER = {
    "dataset": "AffectNet, 5 classes (neutral, happy, sad, fear, angry)",
    "best": {
        "classifier": "svm",
        "feature_layer": "fc1 (first dense layer)",
        "pca_components": 50,
        "accuracy": 0.635,
    },
    "note": "our data is FER2013 (48x48 greyscale), so figures compare in trend, not in level",
}


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def feature_cache_path(
    checkpoint, data_path, cache_dir=CACHE_DIR, max_train=None, tta=False, seed=SEED
) -> Path:
    key = "|".join(
        [_file_digest(Path(checkpoint)), _file_digest(Path(data_path)), str(max_train), str(tta), str(seed)]
    )
    return Path(cache_dir) / f"features_{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}.npz"


def extract_features(
    checkpoint=CHECKPOINT,
    data_path=None,
    cache_dir=CACHE_DIR,
    max_train: int | None = None,
    tta: bool = False,
    seed: int = SEED,
    batch_size: int = BATCH_SIZE,
    log=print,
) -> dict[str, np.ndarray]:
    """{'<split>/<layer>': (N, D), '<split>/probabilities', 'y_<split>'} for train (cleaned,
    optionally subsampled) and val, from the cache when present."""
    from moodtunes_fer_training import data as fer_data

    data = fer_data.resolve_data_path(data_path)
    cache = feature_cache_path(checkpoint, data, cache_dir, max_train, tta, seed)
    if cache.is_file():
        log(f"features from cache {cache}")
        with np.load(cache) as z:
            stored = {k: z[k] for k in z.files}
    else:
        import keras

        from moodtunes_fer_training.export import stratified_subset
        from moodtunes_fer_training.model import feature_extractor

        model = keras.models.load_model(checkpoint, compile=False)
        extractor = feature_extractor(model, tuple(sorted(set(STORED_LAYERS.values()))))
        train = fer_data.clean_training_split(fer_data.load_split(data, "train"))
        val = fer_data.load_split(data, "val")
        x_train, y_train = stratified_subset(train.x, train.y, max_train, seed)
        stored = {"y_train": y_train, "y_val": val.y}
        for split, x in (("train", x_train), ("val", val.x)):
            log(f"extracting features of {len(x)} {split} images ...")
            t0 = time.perf_counter()
            x = to_model_input(x)
            out = extractor.predict(x, batch_size=batch_size, verbose=0)
            if tta:
                flipped = extractor.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0)
                out = {k: (v + flipped[k]) / 2 for k, v in out.items()}
            for name, value in out.items():
                stored[f"{split}/{name}"] = value.astype(np.float32)
            log(f"  {time.perf_counter() - t0:.1f}s")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **stored)
        os.replace(tmp, cache)
    features = dict(stored.items())
    for split in ("train", "val"):
        for layer, source in STORED_LAYERS.items():
            value = stored[f"{split}/{source}"]
            features[f"{split}/{layer}"] = np.maximum(value, 0) if layer != source else value
    features["meta"] = np.array(json.dumps({"cache": str(cache), "tta": tta, "max_train": max_train}))
    return features


class Scorer:
    """Fits and scores head configurations, remembering results so shared ones run once."""

    def __init__(self, features: dict, seed: int = SEED, log=print):
        self.f = features
        self.seed = seed
        self.log = log
        self.memo: dict[tuple, dict] = {}

    def score(
        self,
        layer: str = SERVING_FEATURE_LAYER,
        pca: int | None = PCA_COMPONENTS,
        kind: str = "svm",
        **params,
    ) -> dict:
        from moodtunes_fer_training.evaluate import classification_metrics

        key = (layer, pca, kind, tuple(sorted(params.items())))
        if key in self.memo:
            return self.memo[key]
        y_train, y_val = self.f["y_train"], self.f["y_val"]
        if kind == CNN_SOFTMAX:
            t0 = time.perf_counter()
            y_pred = self.f["val/probabilities"].argmax(axis=1)
            result = {"kind": kind, "feature_layer": None, "pca_components": None}
        else:
            x_train, x_val = self.f[f"train/{layer}"], self.f[f"val/{layer}"]
            n_comp = min(pca, *x_train.shape) if pca else None
            head = build_head(kind, n_comp, probability=False, seed=self.seed, **params)
            t0 = time.perf_counter()
            head.fit(x_train, y_train)
            y_pred = head.predict(x_val)
            result = {
                "feature_layer": layer,
                "feature_dim": int(x_train.shape[1]),
                **head_params(kind, n_comp, **params),
            }
        result.update(classification_metrics(y_val, y_pred))
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["train_images"] = int(len(y_train))
        setting = "" if kind == CNN_SOFTMAX else f"{layer:<9} pca={pca} {params or ''}"
        self.log(
            f"  {kind:<11} {setting}: acc {result['accuracy']:.4f}, macro-F1 "
            f"{result['macro_f1']:.4f} ({result['seconds']}s)"
        )
        self.memo[key] = result
        return result


def _entries(name: str, scorer: Scorer) -> list[tuple[str, dict]]:
    if name == "layers":
        return [(layer, scorer.score(layer=layer)) for layer in FEATURE_LAYERS]
    if name == "pca":
        return [(str(p) if p else "none", scorer.score(pca=p)) for p in PCA_CHOICES]
    if name == "classifiers":
        entries = [("svm", scorer.score()), ("tree", scorer.score(kind="tree"))]
        entries += [(f"knn_k{k}", scorer.score(kind="knn", k=k)) for k in KNN_KS]
        entries += [("logreg", scorer.score(kind="logreg")), (CNN_SOFTMAX, scorer.score(kind=CNN_SOFTMAX))]
        return entries
    raise ValueError(f"unknown experiment {name!r}; choose from {EXPERIMENTS}")


TITLES = {
    "layers": "Feature layer (RBF SVM, PCA 50)",
    "pca": "PCA components (fc1_relu, RBF SVM)",
    "classifiers": "Classifier (fc1_relu, PCA 50)",
}


def plot(report: dict, png_path: Path) -> None:
    """Accuracy and macro-F1 bars (paper's best as a dashed line); classifiers adds the best
    configuration's confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    names = [r["name"] for r in report["results"]]
    acc = [r["accuracy"] for r in report["results"]]
    f1 = [r["macro_f1"] for r in report["results"]]
    with_cm = report["experiment"] == "classifiers"
    fig, axes = plt.subplots(1, 2 if with_cm else 1, figsize=(13 if with_cm else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, acc, 0.4, label="accuracy")
    ax.bar(pos + 0.2, f1, 0.4, label="macro-F1")
    ax.axhline(PAPER["best"]["accuracy"], color="k", ls="--", lw=1, label="paper best (AffectNet, SVM)")
    ax.set_xticks(pos, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(TITLES[report["experiment"]])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if with_cm:
        best = next(r for r in report["results"] if r["name"] == report["best"])
        ConfusionMatrixDisplay(np.array(best["confusion_matrix"]), display_labels=CLASS_NAMES).plot(
            ax=axes[0, 1], colorbar=False
        )
        axes[0, 1].set_title(f"best: {best['name']} (acc {best['accuracy']:.3f})")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def run_experiment(name: str, scorer: Scorer, reports_dir=REPORTS_DIR, context=None) -> dict:
    t0 = time.perf_counter()
    results = [{"name": n, **r} for n, r in _entries(name, scorer)]
    best = max(results, key=lambda r: r["accuracy"])
    report = {
        "experiment": name,
        "title": TITLES[name],
        **(context or {}),
        "results": results,
        "best": best["name"],
        "best_accuracy": best["accuracy"],
        "paper": PAPER,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    plot(report, out / f"{name}.png")
    return report


def run(
    names=EXPERIMENTS,
    checkpoint=CHECKPOINT,
    data_path=None,
    reports_dir=REPORTS_DIR,
    cache_dir=CACHE_DIR,
    max_train: int | None = None,
    tta: bool = False,
    seed: int = SEED,
    batch_size: int = BATCH_SIZE,
    log=print,
) -> dict[str, dict]:
    """Runs the named experiments ("all" = the three) and returns their reports by name."""
    if isinstance(names, str):
        names = EXPERIMENTS if names == "all" else (names,)
    for name in names:
        if name not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {name!r}; choose from {EXPERIMENTS} or all")
    features = extract_features(checkpoint, data_path, cache_dir, max_train, tta, seed, batch_size, log)
    scorer = Scorer(features, seed, log)
    context = {
        "checkpoint": str(checkpoint),
        **json.loads(str(features["meta"])),
        "train_images": int(len(features["y_train"])),
        "val_images": int(len(features["y_val"])),
    }
    reports = {}
    for name in names:
        log(f"experiment {name}")
        reports[name] = run_experiment(name, scorer, reports_dir, context)
    return reports
