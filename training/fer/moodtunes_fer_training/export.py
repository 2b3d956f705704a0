"""Export: a Keras checkpoint -> a TF Serving version folder with its fitted head and model card.

Layout (what TF Serving and the local model server watch):
    <models_dir>/<model_name>/<version>/saved_model.pb, variables/   the CNN, signature serving_default
                                       head/head.joblib, head.json     PCA -> scaler -> classifier
                                       model_card.json
The head is fitted on features computed by the exported SavedModel itself, so served features and
the head's training features come from the very same graph. Everything is written to a hidden
folder first and renamed at the end: a watching server never sees a half-written version.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from moodtunes_fer import inference
from moodtunes_fer.head import PCA_COMPONENTS, SEED, SVM_C, SVM_GAMMA, Head, build_head, save_head
from moodtunes_fer_training.in_process import InProcessBackend
from moodtunes_fer_training.model import (
    CLASS_NAMES,
    FC1_UNITS,
    INPUT_CHANNELS,
    INPUT_SIZE,
    SERVING_FEATURE_LAYER,
)

MODEL_NAME = inference.DEFAULT_MODEL_NAME
CHECKPOINT = "runs/fer_vgg16/best.keras"
BATCH_SIZE = 128


def serving_module(model, tta: bool = True):
    """A tf.Module whose `serve` is the serving_default signature: image -> features, probabilities.

    With tta the batch and its horizontal mirror go through the CNN in one call and both outputs
    are averaged (faces are roughly left-right symmetric; the CNN was trained with flips).
    A plain tf.Module (not keras' ExportArchive, which in Keras 3.15 stores every variable twice)
    keeps the SavedModel at the size of the weights.
    """
    import tensorflow as tf

    from moodtunes_fer_training.model import feature_extractor

    extractor = feature_extractor(model, (SERVING_FEATURE_LAYER,))

    class FerServing(tf.Module):
        def __init__(self):
            super().__init__(name="fer_serving")
            self.extractor = extractor
            self.tta = tta

        @tf.function(
            input_signature=[
                tf.TensorSpec(
                    [None, INPUT_SIZE, INPUT_SIZE, INPUT_CHANNELS], tf.float32, name=inference.INPUT_KEY
                )
            ]
        )
        def serve(self, image):
            batch = tf.concat([image, tf.reverse(image, axis=[2])], 0) if self.tta else image
            out = self.extractor(batch, training=False)
            features, probs = out[SERVING_FEATURE_LAYER], out["probabilities"]
            if self.tta:
                n = tf.shape(image)[0]
                features = (features[:n] + features[n:]) / 2.0
                probs = (probs[:n] + probs[n:]) / 2.0
            return {
                inference.FEATURES_KEY: tf.identity(features, name="features"),
                inference.PROBABILITIES_KEY: tf.identity(probs, name="probabilities"),
            }

    return FerServing()


def write_saved_model(model, path: str | os.PathLike, tta: bool = True) -> Path:
    import tensorflow as tf

    module = serving_module(model, tta)
    tf.saved_model.save(module, str(path), signatures={inference.SIGNATURE: module.serve})
    return Path(path)


def _lineage_total(state: dict, key: str):
    """Sum of `key` over a run and the runs its initial weights came from (see train.init_from)."""
    total, node = 0.0, state
    while node:
        total += float(node.get(key) or 0)
        node = node.get("init_from")
    return round(total, 1) if key == "train_seconds" else int(total)


def next_version(models_dir: str | os.PathLike, model_name: str) -> int:
    found = inference.versions(models_dir, model_name)
    return found[-1] + 1 if found else 1


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def library_versions() -> dict:
    import joblib
    import keras
    import sklearn
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
    }


def stratified_subset(x, y, n: int | None, seed: int):
    """A seeded class-stratified subset of size n (all when n is None or >= len)."""
    if not n or n >= len(x):
        return x, y
    from sklearn.model_selection import train_test_split

    x_keep, _, y_keep, _ = train_test_split(x, y, train_size=n, stratify=y, random_state=seed)
    return x_keep, y_keep


def _architecture(model) -> dict:
    from moodtunes_fer_training.model import BLOCKS, FC2_UNITS

    return {
        "name": model.name,
        "layout": "VGG16 (13 conv in blocks 2-2-3-3-3, BN, max-pool; "
        "Flatten -> Dense 1024 -> ReLU -> Dense 512 -> ReLU -> Dropout -> softmax)",
        "conv_blocks": [{"filters": f, "convs": c} for f, c in BLOCKS],
        "fc1_units": FC1_UNITS,
        "fc2_units": FC2_UNITS,
        "parameters": int(model.count_params()),
        "input": {
            "name": inference.INPUT_KEY,
            "dtype": "float32",
            "shape": [None, INPUT_SIZE, INPUT_SIZE, INPUT_CHANNELS],
            "range": "0..255",
        },
        "outputs": {
            inference.FEATURES_KEY: {
                "dtype": "float32",
                "shape": [None, FC1_UNITS],
                "layer": SERVING_FEATURE_LAYER,
            },
            inference.PROBABILITIES_KEY: {"dtype": "float32", "shape": [None, len(CLASS_NAMES)]},
        },
        "signature": inference.SIGNATURE,
    }


def export(
    checkpoint: str | os.PathLike = CHECKPOINT,
    data_path: str | os.PathLike | None = None,
    models_dir: str | os.PathLike = inference.DEFAULT_MODELS_DIR,
    model_name: str = MODEL_NAME,
    version: int | None = None,
    tta: bool = True,
    head_kind: str = "svm",
    pca_components: int | None = PCA_COMPONENTS,
    C: float = SVM_C,
    gamma: float | str = SVM_GAMMA,
    k: int = 5,
    max_depth: int | None = None,
    max_train: int | None = None,
    train_dir: str | os.PathLike | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int = SEED,
    log=print,
    head_teacher: str | os.PathLike | None = None,
) -> dict:
    """Writes `<models_dir>/<model_name>/<version>/` and returns its model card.

    `head_teacher` (an npz of `moodtunes_fer_training.teacher`) fits the head on the ensemble's
    labels of the training faces (its argmax) instead of FER2013's own, which are noisy: the head
    is distilled like the network it sits on. Validation is always scored against x_val's labels.
    """
    import keras

    from moodtunes_fer.head import head_params
    from moodtunes_fer_training import data as fer_data
    from moodtunes_fer_training.evaluate import classification_metrics

    t_start = time.perf_counter()
    checkpoint = Path(checkpoint)
    train_dir = Path(train_dir) if train_dir else checkpoint.parent
    data = fer_data.resolve_data_path(data_path)
    version = int(version) if version is not None else next_version(models_dir, model_name)
    final = inference.model_dir(models_dir, model_name) / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists; versions are immutable, pick another")
    staging = final.parent / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)

    try:
        model = keras.models.load_model(checkpoint, compile=False)
        write_saved_model(model, staging, tta)
        backend = InProcessBackend(staging, batch_size=batch_size)
        backend.version = version

        train = fer_data.clean_training_split(fer_data.load_split(data, "train"))
        val = fer_data.load_split(data, "val")
        head_labels = train.y
        if head_teacher:
            from moodtunes_fer_training.teacher import load_teacher

            head_labels = load_teacher(head_teacher, train.x).argmax(axis=1)
            agree = float((head_labels == train.y).mean())
            log(f"head labels from {head_teacher}: {agree:.1%} agree with FER2013's")
        rows, y_fit = stratified_subset(np.arange(len(train.y)), head_labels, max_train, seed)
        x_fit, y_true_fit = train.x[rows], train.y[rows]
        log(f"features of {len(x_fit)} training images through the SavedModel (tta={tta}) ...")
        t0 = time.perf_counter()
        from moodtunes_fer.preprocessing import to_model_input

        f_fit, _, _ = backend.features_and_probabilities(to_model_input(x_fit))
        feature_seconds = time.perf_counter() - t0

        params = {"C": C, "gamma": gamma, "k": k, "max_depth": max_depth, "probability": True}
        n_comp = pca_components
        if n_comp and n_comp > min(f_fit.shape):  # tiny data: PCA cannot exceed the sample count
            n_comp = int(min(f_fit.shape))
            log(f"pca_components lowered to {n_comp} (only {len(f_fit)} samples)")
        distilled = bool(head_teacher) and head_kind == "svm"
        pipeline = build_head(head_kind, n_comp, seed=seed, distilled=distilled, **params)
        log(f"fitting head {head_kind} on {f_fit.shape} features ...")
        t0 = time.perf_counter()
        if distilled:  # boundaries from the ensemble's labels, probabilities calibrated on FER2013's
            pipeline.fit(f_fit, y_true_fit, clf__decision_y=y_fit)
        else:
            pipeline.fit(f_fit, y_fit)
        head_fit_seconds = time.perf_counter() - t0
        log(f"head fitted in {head_fit_seconds:.1f}s")

        head_meta = {
            "name": f"pca{n_comp or 'none'}_{head_kind}",
            "kind": head_kind,
            "model_name": model_name,
            "model_version": version,
            "feature_layer": SERVING_FEATURE_LAYER,
            "feature_dim": int(f_fit.shape[1]),
            "tta": tta,
            "params": head_params(head_kind, n_comp, **params),
            "fitted_on": {
                "images": int(len(y_fit)),
                "class_counts": fer_data.class_counts(y_fit, len(CLASS_NAMES)),
                "labels": f"teacher argmax ({head_teacher})" if head_teacher else "FER2013 training labels",
                "calibration": (
                    "multinomial logistic regression on out-of-fold SVM decision values, FER2013 labels"
                    if distilled
                    else "as the classifier"
                ),
            },
            "fit_seconds": round(head_fit_seconds, 2),
        }
        head = Head(pipeline, head_meta)
        pipe = inference.FerPipeline(backend, head)
        t0 = time.perf_counter()
        pred = pipe.predict(val.x)
        eval_seconds = time.perf_counter() - t0
        metrics = {
            "split": "val",
            **classification_metrics(val.y, pred.probabilities.argmax(1)),
            "cnn_softmax": classification_metrics(val.y, pred.cnn_probabilities.argmax(1)),
        }
        log(
            f"val accuracy: pipeline {metrics['accuracy']:.4f}, "
            f"CNN softmax {metrics['cnn_softmax']['accuracy']:.4f}"
        )
        del pipe, backend
        save_head(pipeline, staging / inference.HEAD_DIR, head_meta)
        from moodtunes_fer_training.warmup import write_warmup_requests

        write_warmup_requests(staging, model_name)

        state_file = train_dir / "train_state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        card = {
            "model_name": model_name,
            "model_version": version,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checkpoint": str(checkpoint),
            "class_names": list(CLASS_NAMES),
            "data": {
                "path": str(data),
                "train_cleaning": train.report,
                "head_fit_images": int(len(y_fit)),
                "max_train": max_train,
                "head_fit_class_counts": fer_data.class_counts(y_fit, len(CLASS_NAMES)),
                "head_fit_labels": head_meta["fitted_on"]["labels"],
                "head_fit_label_agreement": float((head_labels == train.y).mean()),
                "val_images": int(len(val.y)),
                "val_class_counts": fer_data.class_counts(val.y, len(CLASS_NAMES)),
            },
            "preprocessing": {
                "input": "uint8 greyscale face crop",
                "resize": f"to {INPUT_SIZE}x{INPUT_SIZE}: cv2 INTER_AREA when shrinking, "
                "INTER_LINEAR when enlarging",
                "filtering": "none: training and serving both see the sharp 48x48 face",
                "model_input": "float32 (N, 48, 48, 1) pixels 0..255; 1/255 rescaling is inside the model",
                "tta": "mean of image and horizontal flip" if tta else None,
            },
            "tta": tta,
            "architecture": _architecture(model),
            "head": head_meta["params"]
            | {
                "pipeline": " -> ".join(
                    type(step).__name__ if step != "passthrough" else "passthrough"
                    for _, step in pipeline.steps
                )
            },
            "hyperparameters": {
                key: state.get(key)
                for key in (
                    "epochs_planned",
                    "batch_size",
                    "peak_lr",
                    "seed",
                    "class_weights",
                    "hyperparameters",
                )
            },
            "metrics": metrics,
            "training": {
                "train_dir": str(train_dir),
                **{
                    key: state.get(key)
                    for key in (
                        "epochs_done",
                        "train_seconds",
                        "best_val_accuracy",
                        "best_epoch",
                        "finished",
                        "last_epoch_images_per_s",
                        "data_report",
                        "teacher",
                    )
                },
                "hardware": [seg.get("hardware") for seg in state.get("segments", [])],
                "init_from": state.get("init_from"),
                "total_epochs": _lineage_total(state, "epochs_done"),
                "total_train_seconds": _lineage_total(state, "train_seconds"),
            },
            "libraries": library_versions(),
            "timings_s": {
                "feature_extraction": round(feature_seconds, 2),
                "head_fit": round(head_fit_seconds, 2),
                "val_evaluation": round(eval_seconds, 2),
            },
        }
        card["timings_s"]["export_total"] = round(time.perf_counter() - t_start, 2)
        card["size_bytes"] = folder_bytes(staging)
        (staging / inference.MODEL_CARD).write_text(json.dumps(card, indent=2))
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"exported {final} ({card['size_bytes'] / 1e6:.1f} MB)")
    return card
