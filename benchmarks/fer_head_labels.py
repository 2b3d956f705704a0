"""Which labels the head should be fitted on: FER2013's own, or an ensemble's (head distillation).

FER2013's training labels are noisy (one annotator per face). The deployed network is a student of
an ensemble (`moodtunes_fer_training.teacher`); this fits the paper's head (PCA 50 -> scaler ->
RBF SVM) on the exported network's training features three ways: Platt-scaled on FER2013's
labels; Platt-scaled on the ensemble's argmax; and the deployed `DistilledSVC` (boundaries from the
ensemble's labels, probabilities calibrated on FER2013's). It scores each on x_val and on an
independent set the network and the ensemble never trained on (the AffectNet supplement: other
photos, other annotators, looser crops), so a choice made on x_val can be checked off it: accuracy,
macro-F1, and whether the probabilities mean what they say (log loss, expected calibration error
over 10 confidence bins, mean top probability), since the music is blended from them.

    python benchmarks/fer_head_labels.py --model-dir models/fer_vgg16/6 --teacher runs/distill/teacher.npz

Writes reports/bench_fer_head_labels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OUT = "reports/bench_fer_head_labels.json"
CALIBRATION_BINS = 10
INDEPENDENT = Path("../shared/data/affectnet_5class_supplement.npz")


def calibration(y: np.ndarray, proba: np.ndarray) -> dict:
    """Log loss, expected calibration error (top probability vs. accuracy, equal-width bins) and
    the mean top probability."""
    top, right = proba.max(axis=1), proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (top > low) & (top <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(top[in_bin].mean() - right[in_bin].mean())
    return {
        "log_loss": float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean()),
        "ece": float(ece),
        "mean_top_probability": float(top.mean()),
    }


def main(argv=None) -> dict:
    from moodtunes_fer.head import PCA_COMPONENTS, build_head, proba_in_class_order
    from moodtunes_fer.preprocessing import to_model_input
    from moodtunes_fer_training import data as fer_data
    from moodtunes_fer_training.evaluate import classification_metrics
    from moodtunes_fer_training.in_process import InProcessBackend
    from moodtunes_fer_training.teacher import load_teacher

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="an exported version folder")
    p.add_argument("--teacher", required=True, help="the ensemble's targets npz")
    p.add_argument("--data")
    p.add_argument(
        "--independent", default=str(INDEPENDENT), help="npz with x_train/y_train, never trained on"
    )
    p.add_argument("--out", default=OUT)
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    path = fer_data.resolve_data_path(a.data)
    train = fer_data.clean_training_split(fer_data.load_split(path, "train"))
    val = fer_data.load_split(path, "val")
    independent = fer_data.load_split(a.independent, "train")
    backend = InProcessBackend(a.model_dir)
    features = {
        name: backend.features_and_probabilities(to_model_input(split.x))[0]
        for name, split in (("train", train), ("val", val), ("independent", independent))
    }
    teacher_labels = load_teacher(a.teacher, train.x).argmax(axis=1)
    results = {}
    heads = {
        "fer2013": lambda: build_head("svm", PCA_COMPONENTS).fit(features["train"], train.y),
        "teacher_platt": lambda: build_head("svm", PCA_COMPONENTS).fit(features["train"], teacher_labels),
        "teacher_distilled": lambda: build_head("svm", PCA_COMPONENTS, distilled=True).fit(
            features["train"], train.y, clf__decision_y=teacher_labels
        ),
    }
    for name, fit in heads.items():
        head = fit()
        results[name] = {}
        for split_name, split in (("val", val), ("independent", independent)):
            proba = proba_in_class_order(head, features[split_name])
            results[name][split_name] = {
                **classification_metrics(split.y, proba.argmax(axis=1)),
                **calibration(split.y, proba),
            }
        v, i = results[name]["val"], results[name]["independent"]
        print(
            f"head {name:18s} val acc {v['accuracy']:.4f} log loss {v['log_loss']:.3f} ece {v['ece']:.3f}  "
            f"independent acc {i['accuracy']:.4f} log loss {i['log_loss']:.3f} ece {i['ece']:.3f}",
            flush=True,
        )
    report = {
        "model_dir": a.model_dir,
        "teacher": a.teacher,
        "independent": {"path": a.independent, "images": int(len(independent.y))},
        "label_agreement": float((teacher_labels == train.y).mean()),
        "head": f"PCA {PCA_COMPONENTS} -> scaler -> RBF SVM; deployed: teacher_distilled",
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: {s: round(r[s]["accuracy"], 4) for s in r} for k, r in results.items()}))
    return report


if __name__ == "__main__":
    main()
