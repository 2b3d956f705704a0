"""Emotion probabilities -> target points in music-feature space, from the tables in modes.yaml."""

from __future__ import annotations

import numpy as np

from moodtunes.modes import config


def emotions() -> list[str]:
    return list(config()["emotions"])


def features() -> list[str]:
    return list(config()["features"])


def feature_vector(track) -> np.ndarray:
    """A track's point in matching space: its values of `features()` with tempo divided by
    `tempo_scale` (capped at 1). The one definition: the catalogue stores it in `tracks.features`
    for the index and the playlist builder ranks with it, so both measure the same distances."""
    cfg = config()
    vec = np.array([float(track[f]) for f in cfg["features"]], dtype=np.float64)
    tempo = cfg["features"].index("tempo")
    vec[tempo] = min(vec[tempo] / cfg["tempo_scale"], 1.0)
    return vec


def matrix(mode: str) -> np.ndarray:
    """(emotions x features) rows of a mode."""
    return np.array(list(config()["modes"][mode]["rows"].values()), dtype=np.float64)


def normalise(probabilities) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, None)
    if p.shape != (len(emotions()),) or p.sum() <= 0:
        raise ValueError(f"expected {len(emotions())} non-negative probabilities, got {probabilities!r}")
    return p / p.sum()


def target(probabilities, mode: str = "match") -> np.ndarray:
    """The blended point p @ rows of a mode; for `match` this is the published target."""
    return normalise(probabilities) @ matrix(mode)


def _ease(x: np.ndarray, easing: str) -> np.ndarray:
    if easing == "linear":
        return x
    if easing == "smoothstep":
        return x * x * (3 - 2 * x)
    raise ValueError(f"unknown easing {easing!r}")


def targets(probabilities, mode: str, n: int) -> np.ndarray:
    """One target per playlist position, shape (n, features).

    `blend` modes repeat one point; `path` modes move from the `start` mode's point to the mode's
    own point in eased steps (a single-track playlist gets the goal).
    """
    spec = config()["modes"][mode]
    goal = target(probabilities, mode)
    if spec["kind"] == "blend":
        return np.repeat(goal[None, :], n, axis=0)
    start = target(probabilities, spec["start"])
    if n == 1:
        return goal[None, :]
    steps = _ease(np.linspace(0.0, 1.0, n), spec.get("easing", "linear"))
    return start[None, :] + steps[:, None] * (goal - start)[None, :]


def min_valence(mode: str, n: int) -> list[float | None]:
    """Per position: the lowest valence a track may have there (path modes end positive)."""
    spec = config()["modes"][mode]
    floor = spec.get("final_min_valence")
    if floor is None:
        return [None] * n
    first_final = n - max(1, int(np.ceil(spec.get("final_fraction", 0.0) * n)))
    return [floor if i >= first_final else None for i in range(n)]


def describe(vector) -> dict:
    """A feature vector in user units (tempo in BPM)."""
    out = dict(zip(features(), (float(v) for v in vector), strict=True))
    out["tempo"] = out["tempo"] * config()["tempo_scale"]
    return out
