"""Scoring the deployed pipeline on a labelled split, in process or through the model server.

Both routes run the same SavedModel signature and the same head, so they must give identical
predictions; `route` and `model_version` in the result say which one produced the numbers.
"""

from __future__ import annotations

import os

import numpy as np

from moodtunes_fer_training.in_process import InProcessBackend
from moodtunes_fer_training.model import CLASS_NAMES

ROUTE_IN_PROCESS = "in_process"
ROUTE_GRPC = "grpc"


def classification_metrics(y_true, y_pred, num_classes: int = len(CLASS_NAMES)) -> dict:
    """Accuracy, macro-F1, per-class recall (by class name) and the confusion matrix (rows: truth)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    labels = list(range(num_classes))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class_recall": {CLASS_NAMES[i]: float(r) for i, r in enumerate(recall)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }


def evaluate(
    data: str | os.PathLike | None,
    split: str = "val",
    models_dir: str | os.PathLike = "models",
    model_name: str = "fer_vgg16",
    version: int | None = None,
    server: str | None = None,
    batch_size: int = 64,
    timeout_s: float = 30.0,
    return_predictions: bool = False,
) -> dict:
    """Runs to_model_input -> CNN -> head on x_<split> and scores it against y_<split>.

    In process (default) the version dir is loaded directly; with `server="host:port"` the CNN
    answers over gRPC and the head is picked by the version the server reports.
    """
    from moodtunes_fer import inference
    from moodtunes_fer_training import data as fer_data

    path = fer_data.resolve_data_path(data)
    s = fer_data.load_split(path, split)
    if server:
        backend = inference.GrpcBackend(
            server,
            model_name,
            version=version,
            timeout_s=timeout_s,
            batch_size=min(batch_size, inference.GRPC_BATCH_SIZE),
        )
        pipeline = inference.FerPipeline(backend, models_dir=models_dir, model_name=model_name)
        route = ROUTE_GRPC
    else:
        vdir = inference.version_dir(models_dir, model_name, version)
        backend = InProcessBackend(vdir, batch_size=batch_size)
        pipeline = inference.FerPipeline(backend, inference.load_head(vdir / inference.HEAD_DIR))
        route = ROUTE_IN_PROCESS
    try:
        pred = pipeline.predict(s.x)
    finally:
        if hasattr(backend, "close"):
            backend.close()
    y_pred = pred.probabilities.argmax(axis=1)
    result = classification_metrics(s.y, y_pred)
    result.update(
        {
            "cnn_accuracy": classification_metrics(s.y, pred.cnn_probabilities.argmax(axis=1))["accuracy"],
            "model_name": model_name,
            "model_version": pred.model_version,
            "route": route,
            "data": str(path),
            "split": split,
        }
    )
    if return_predictions:
        result["predictions"] = y_pred.tolist()
    return result


def format_report(result: dict) -> str:
    """Human-readable summary: headline numbers, per-class recall, confusion matrix."""
    width = max(len(c) for c in CLASS_NAMES)
    lines = [
        f"model {result.get('model_name')} v{result.get('model_version')} "
        f"({result.get('route')}), {result.get('split')} split, n={result['n']}",
        f"accuracy  {result['accuracy']:.4f}",
        f"macro-F1  {result['macro_f1']:.4f}",
    ]
    if "cnn_accuracy" in result:
        lines.append(f"CNN softmax accuracy  {result['cnn_accuracy']:.4f}")
    lines += ["", "per-class recall"]
    lines += [f"  {name:<{width}}  {r:.4f}" for name, r in result["per_class_recall"].items()]
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * (width + 2) + "".join(f"{c[:7]:>8}" for c in CLASS_NAMES))
    for name, row in zip(CLASS_NAMES, result["confusion_matrix"], strict=False):
        lines.append(f"  {name:<{width}}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)
