"""Side-by-side budgeted runs (the lent-GPU training path), run here on the CPU with tiny data."""

import json
import tarfile

import keras
import numpy as np

from moodtunes_fer_training import parallel_runs


def test_split_file_pieces_reassemble_byte_for_byte(tmp_path):
    blob = np.random.default_rng(0).integers(0, 256, 2500, dtype=np.uint8).tobytes()
    (tmp_path / "model.keras").write_bytes(blob)
    parts = parallel_runs.split_file(tmp_path / "model.keras", tmp_path, piece=1000)
    assert [p.name for p in parts] == ["model.keras.part0", "model.keras.part1", "model.keras.part2"]
    assert b"".join(p.read_bytes() for p in parts) == blob


def test_runs_are_ranked_by_best_validation_accuracy(tmp_path):
    for name, acc in (("a", 0.61), ("b", 0.68), ("c", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_state.json").write_text(
            json.dumps({"best_val_accuracy": acc, "epochs_done": 3})
        )
    ranking = parallel_runs.rank(tmp_path, ["a", "b", "c", "missing"])
    assert [r["run"] for r in ranking] == ["b", "a"]  # no score, no state: left out


def test_two_runs_side_by_side_export_the_best_weights_and_all_logs(tmp_path, tiny_npz):
    out, dest = tmp_path / "runs", tmp_path / "out"
    ranking = parallel_runs.main(
        [
            "--data", str(tiny_npz), "--out", str(out), "--budget", "600", "--epochs", "1",
            "--runs", "s21_mixup,s23_plain", "--export-dir", str(dest), "--keep", "1",
            "--", "--limit", "32", "--batch-size", "16", "--jit", "false",
        ]
    )  # fmt: skip
    assert sorted(r["run"] for r in ranking) == ["s21_mixup", "s23_plain"]
    assert all(r["epochs_done"] == 1 for r in ranking)
    best = ranking[0]["run"]
    parts = sorted(dest.glob("*.part*"))
    assert [p.name for p in parts] == [f"{best}.keras.part0", f"{best}.keras.part1"]  # 18 MB in 15 MiB pieces
    (tmp_path / "best.keras").write_bytes(b"".join(p.read_bytes() for p in parts))
    model = keras.models.load_model(tmp_path / "best.keras", compile=False)
    saved = keras.models.load_model(out / best / "best.keras", compile=False)
    for mine, theirs in zip(model.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    with tarfile.open(dest / "runs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {
        "ranking.json",
        "s21_mixup/train_state.json",
        "s23_plain/history.csv",
        "s23_plain/train.log",
    } <= names
