"""The recommendation modes table (modes.yaml), shared by the gateway (validation, /v1/modes)
and the recommender (computation)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from moodtunes.emotions import EMOTIONS

MODES_FILE = Path(__file__).with_name("modes.yaml")


@lru_cache
def config(path: str | Path = MODES_FILE) -> dict:
    cfg = yaml.safe_load(Path(path).read_text())
    if tuple(cfg["emotions"]) != EMOTIONS:  # one emotion order everywhere: moodtunes.emotions
        raise ValueError(f"modes.yaml: emotions {cfg['emotions']} differ from {list(EMOTIONS)}")
    for name, mode in cfg["modes"].items():
        rows = mode["rows"]
        if list(rows) != cfg["emotions"] or any(len(r) != len(cfg["features"]) for r in rows.values()):
            raise ValueError(
                f"modes.yaml: mode {name!r} needs one row of {len(cfg['features'])} "
                f"values per emotion in the order {cfg['emotions']}"
            )
        if mode["kind"] not in ("blend", "path"):
            raise ValueError(f"modes.yaml: mode {name!r} has unknown kind {mode['kind']!r}")
    return cfg


def names() -> list[str]:
    return list(config()["modes"])


def describe() -> list[dict]:
    return [
        {"name": n, "description": " ".join(m["description"].split()), "kind": m["kind"]}
        for n, m in config()["modes"].items()
    ]
