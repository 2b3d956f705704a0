"""The accuracy benchmark runs both routes on a tiny export and scores the issue's targets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moodtunes_fer_training import evaluate

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "fer_accuracy.py"


def test_targets_are_scored_from_the_metrics():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import fer_accuracy
    finally:
        sys.path.remove(str(SCRIPT.parent))
    y_true = [0, 1, 2, 3, 4] * 4
    good = evaluate.classification_metrics(y_true, y_true)
    checks = fer_accuracy.targets(good)
    assert all(checks[k] for k in fer_accuracy.REQUIRED)
    weak_fear = evaluate.classification_metrics(y_true, [p if p != 3 else 0 for p in y_true])
    checks = fer_accuracy.targets(weak_fear)
    assert checks["accuracy_at_least_0.70"] is True and checks["accuracy_goal_0.75"] is True
    assert checks["every_class_recall_at_least_0.50"] is False
    assert checks["worst_class"] == "fear" and checks["worst_recall"] == 0.0


@pytest.mark.e2e
def test_benchmark_runs_both_routes_on_a_tiny_export(tmp_path, exported, tiny_npz):
    models_dir, _ = exported
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--data",
            str(tiny_npz),
            "--models-dir",
            str(models_dir),
            "--out",
            str(out),
            "--strict",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    assert report["routes_agree"] is True
    assert set(report["results"]) == {"in_process", "grpc"}
    assert report["results"]["grpc"]["accuracy"] == report["results"]["in_process"]["accuracy"]
    missed = not all(
        report["targets"][k]
        for k in ("accuracy_at_least_0.70", "macro_f1_at_least_0.67", "every_class_recall_at_least_0.50")
    )
    assert proc.returncode == (1 if missed else 0), proc.stdout + proc.stderr
    assert "written" in proc.stdout
