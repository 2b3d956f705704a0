"""Loading and cleaning the FER2013 npz (format in ../shared/data/README.md)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_ENV = "MOODTUNES_FER_DATA"
DEFAULT_DATA = Path("../shared/data/fer2013_5class_trainval.npz")
BLANK_STD = 2.0  # pixel std below which an image is a flat/blank frame, not a face


def resolve_data_path(path: str | os.PathLike | None) -> Path:
    """The dataset path: explicit argument, else $MOODTUNES_FER_DATA, else the shared default."""
    candidate = Path(path or os.environ.get(DATA_ENV) or DEFAULT_DATA)
    if not candidate.is_file():
        raise FileNotFoundError(f"FER dataset not found at {candidate}; pass --data or set {DATA_ENV}")
    return candidate


@dataclass
class Split:
    x: np.ndarray  # (N, 48, 48) uint8
    y: np.ndarray  # (N,) int64
    report: dict = field(default_factory=dict)


def load_split(path: str | os.PathLike, name: str) -> Split:
    with np.load(path, allow_pickle=False) as data:
        if f"x_{name}" not in data or f"y_{name}" not in data:
            raise KeyError(f"{path} has no x_{name}/y_{name} arrays (has: {sorted(data.files)})")
        x, y = data[f"x_{name}"], data[f"y_{name}"].astype(np.int64)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"x_{name} must be (N, H, W) uint8, got {x.shape} {x.dtype}")
    return Split(x, y, {"images": int(len(x))})


def clean_training_split(split: Split) -> Split:
    """Drops blank frames, and exact duplicates: one copy kept when labels agree, all when they conflict."""
    keep = np.ones(len(split.x), dtype=bool)
    blank = split.x.reshape(len(split.x), -1).std(axis=1) < BLANK_STD
    keep &= ~blank
    groups: dict[bytes, list[int]] = {}
    for i, img in enumerate(split.x):
        if keep[i]:
            groups.setdefault(hashlib.blake2b(img.tobytes(), digest_size=16).digest(), []).append(i)
    dropped_copies = dropped_conflicts = 0
    for idx in groups.values():
        if len(idx) == 1:
            continue
        if len(set(split.y[idx].tolist())) > 1:
            keep[idx] = False
            dropped_conflicts += len(idx)
        else:
            keep[idx[1:]] = False
            dropped_copies += len(idx) - 1
    report = {
        "images_in": int(len(split.x)),
        "dropped_blank": int(blank.sum()),
        "dropped_duplicate_copies": dropped_copies,
        "dropped_conflicting_label_duplicates": dropped_conflicts,
        "images_out": int(keep.sum()),
    }
    return Split(split.x[keep], split.y[keep], report)


def class_counts(y: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(y, minlength=num_classes).tolist()
