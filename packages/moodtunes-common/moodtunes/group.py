"""Music for a room (`drive=group`): how every detected face's emotion blends into one.

Each face counts in proportion to its classifier confidence (its top probability), so a face the
model is unsure about (turned away, blurred, half hidden) pulls the room's mood less than a clear
one. Because a mode's target is linear in the probabilities (moodtunes_recommender.mapping), the
blended probabilities give exactly the confidence-weighted mean of the faces' targets. `spread`
says how much the room agrees: the mean total-variation distance of a face's probabilities from
the blend, 0 when every face reads the same, towards 1 when they share nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DRIVES = ("face", "group")  # the largest face drives the music / every face does
DEFAULT_DRIVE = "face"


@dataclass(frozen=True)
class GroupBlend:
    probabilities: np.ndarray  # (emotions,), sums to 1
    weights: np.ndarray  # (faces,), each face's share; sums to 1
    spread: float  # 0 .. 1


def blend(face_probabilities) -> GroupBlend:
    """The confidence-weighted blend of each face's emotion probabilities (rows: faces)."""
    p = np.asarray(face_probabilities, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0 or (p < 0).any():
        raise ValueError(f"expected one row of non-negative probabilities per face, got shape {p.shape}")
    p = p / p.sum(axis=1, keepdims=True)
    confidence = p.max(axis=1)
    weights = confidence / confidence.sum()
    mixed = weights @ p
    spread = float(np.mean(0.5 * np.abs(p - mixed).sum(axis=1)))
    return GroupBlend(mixed, weights, spread)
