"""Soft targets from an ensemble of trained runs, for distilling it into one served network.

An ensemble of several runs scores higher than any one of them, but serving it would multiply the
model server's compute and break the head's one-1024-d-vector contract. Distillation keeps one
network: the student trains on the ensemble's averaged (flip-TTA) probabilities of each cleaned
training face, blended with its label (Hinton et al. 2015). The file records a digest of the
cleaned training images so a student never trains on targets of a different split or order.

    python -m moodtunes_fer_training.teacher --data fer.npz --out teacher.npz a.keras b.keras c.keras
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from moodtunes_fer_training import data as fer_data

BATCH_SIZE = 256


def split_digest(x: np.ndarray) -> str:
    """Identifies a cleaned training split (images and their order)."""
    return hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).hexdigest()


def ensemble_probabilities(checkpoints, x: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Mean over checkpoints of the mean over (face, mirrored face) of each network's softmax,
    the same flip TTA the served model uses: (N, 48, 48) uint8 in, (N, classes) float32 out."""
    import keras

    images = x[..., None].astype(np.float32)
    total = None
    for checkpoint in checkpoints:
        model = keras.models.load_model(checkpoint, compile=False)
        probs = (
            model.predict(images, batch_size=batch_size, verbose=0)
            + model.predict(images[:, :, ::-1], batch_size=batch_size, verbose=0)
        ) / 2
        total = probs if total is None else total + probs
    return (total / len(checkpoints)).astype(np.float32)


def write_teacher(data: str | os.PathLike, checkpoints, out: str | os.PathLike) -> dict:
    """Writes the ensemble's targets for the cleaned training split (and x_val, to report the
    ensemble's own accuracy) to `out`; returns the report."""
    path = fer_data.resolve_data_path(data)
    train = fer_data.clean_training_split(fer_data.load_split(path, "train"))
    val = fer_data.load_split(path, "val")
    probs_train = ensemble_probabilities(checkpoints, train.x)
    probs_val = ensemble_probabilities(checkpoints, val.x)
    report = {
        "checkpoints": [str(c) for c in checkpoints],
        "train_images": int(len(train.x)),
        "train_digest": split_digest(train.x),
        "teacher_train_accuracy": float((probs_train.argmax(1) == train.y).mean()),
        "teacher_val_accuracy": float((probs_val.argmax(1) == val.y).mean()),
    }
    np.savez_compressed(
        out, probs_train=probs_train, probs_val=probs_val, report=np.array(json.dumps(report))
    )
    return report


def load_teacher(path: str | os.PathLike, x_train: np.ndarray) -> np.ndarray:
    """The targets for `x_train` (the cleaned split the student trains on); refuses a file made
    for other images, since misaligned targets would silently teach wrong labels."""
    with np.load(path, allow_pickle=False) as f:
        report, probs = json.loads(str(f["report"])), f["probs_train"]
    if report["train_digest"] != split_digest(x_train) or len(probs) != len(x_train):
        raise ValueError(
            f"{path} holds targets for another training split "
            f"({report['train_images']} images, digest {report['train_digest']}); "
            f"this one has {len(x_train)} images, digest {split_digest(x_train)}"
        )
    return probs.astype(np.float32)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data")
    p.add_argument("--out", required=True)
    p.add_argument("--student-init", type=Path, help="also write this checkpoint's weights, compact, to")
    p.add_argument("--student-init-out", type=Path, default=Path("student_init.npz"))
    p.add_argument("checkpoints", nargs="+", type=Path)
    a = p.parse_args(argv)
    if a.student_init:
        from moodtunes_fer_training.train import save_compact_weights

        save_compact_weights(a.student_init, a.student_init_out)
    report = write_teacher(a.data, a.checkpoints, a.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
