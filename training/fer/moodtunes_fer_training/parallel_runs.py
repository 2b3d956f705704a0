"""Several time-budgeted training runs side by side on one accelerator, for a lent GPU machine.

One small VGG16-layout net leaves an H200 mostly idle, so the runs (seeds, mixup on/off, batch
size) share it as separate processes, each fitted to the same wall-clock budget. Afterwards the
runs are ranked by best validation accuracy and the top ones' weights are written out in pieces
small enough for the lease's file limits (reassemble with `cat NAME.part* > NAME`).

    KERAS_BACKEND=jax python -m moodtunes_fer_training.parallel_runs --data fer.npz --out runs/gpu \\
        --budget 430 --export-dir $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

# name, train.py options: chosen from the CPU runs (reports/fer_v3..v5): mixup 0.2 helped there
RUNS = (
    ("s21_mixup", ["--seed", "21", "--mixup", "0.2"]),
    ("s22_mixup", ["--seed", "22", "--mixup", "0.2"]),
    ("s23_plain", ["--seed", "23", "--mixup", "0.0"]),
    ("s24_mixup_b128", ["--seed", "24", "--mixup", "0.2", "--batch-size", "128", "--peak-lr", "0.02"]),
)
# Distilling the three best v5 runs (teacher.py) into one network; "{init}" is --init-from (the
# deployed run's weights), so a warm-started student and a from-scratch one compare on one lease.
DISTILL_RUNS = (
    ("d1_init_w07", ["--init-from", "{init}", "--seed", "31", "--mixup", "0.2", "--batch-size", "128",
                     "--peak-lr", "0.01", "--teacher-weight", "0.7"]),
    ("d2_init_w10", ["--init-from", "{init}", "--seed", "32", "--mixup", "0.2", "--batch-size", "128",
                     "--peak-lr", "0.01", "--teacher-weight", "1.0"]),
    ("d3_init_w07_lowlr", ["--init-from", "{init}", "--seed", "33", "--mixup", "0.0", "--batch-size", "128",
                           "--peak-lr", "0.004", "--teacher-weight", "0.7"]),
    ("d4_scratch_w07", ["--seed", "34", "--mixup", "0.2", "--batch-size", "128", "--peak-lr", "0.02",
                        "--teacher-weight", "0.7"]),
)  # fmt: skip
PRESETS = {"scratch": RUNS, "distill": DISTILL_RUNS}
PIECE_BYTES = 15 * 1024 * 1024  # a lease returns files of at most 16 MiB
KEEP = 3  # weights of the best KEEP runs come back (three ~18 MB models fit the 64 MiB return)


def launch(runs, data: str, out: Path, budget: float, epochs: int, extra: list[str]) -> dict[str, int]:
    """Starts every run as its own process (own log), waits for all, returns their exit codes."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name, options in runs:
        run_dir = out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "moodtunes_fer_training.train", "--data", data, "--out", str(run_dir)]
        cmd += ["--epochs", str(epochs), "--time-budget", str(budget), *options, *extra]
        log = open(run_dir / "train.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    codes = {}
    for name, (proc, log) in procs.items():
        codes[name] = proc.wait()
        log.close()
    return codes


def rank(out: Path, names) -> list[dict]:
    """Runs by best validation accuracy, best first (runs that wrote no state are left out)."""
    rows = []
    for name in names:
        state_file = out / name / "train_state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("best_val_accuracy") is not None:
                rows.append(
                    {
                        "run": name,
                        **{
                            k: state.get(k)
                            for k in (
                                "best_val_accuracy",
                                "best_epoch",
                                "epochs_done",
                                "epochs_planned",
                                "train_seconds",
                                "last_epoch_images_per_s",
                            )
                        },
                    }
                )
    return sorted(rows, key=lambda r: -r["best_val_accuracy"])


def split_file(path: Path, dest: Path, piece: int = PIECE_BYTES) -> list[Path]:
    data, parts = path.read_bytes(), []
    for i in range(0, max(1, len(data)), piece):
        part = dest / f"{path.name}.part{i // piece}"
        part.write_bytes(data[i : i + piece])
        parts.append(part)
    return parts


def export_best(out: Path, ranking: list[dict], dest: Path, keep: int = KEEP) -> None:
    """The best runs' weights as uncompiled .keras files in pieces, and every run's logs in one tar."""
    import keras

    dest.mkdir(parents=True, exist_ok=True)
    for row in ranking[:keep]:
        model = keras.models.load_model(out / row["run"] / "best.keras", compile=False)
        model_file = out / row["run"] / f"{row['run']}.keras"
        model.save(model_file)  # no optimizer state: half the size of the checkpoint
        split_file(model_file, dest)
    with tarfile.open(dest / "runs.tar.gz", "w:gz") as tar:
        for run_dir in sorted(p for p in out.iterdir() if p.is_dir()):
            for f in ("train_state.json", "history.csv", "history.png", "train.log"):
                if (run_dir / f).is_file():
                    tar.add(run_dir / f, arcname=f"{run_dir.name}/{f}")
        (out / "ranking.json").write_text(json.dumps(ranking, indent=2))
        tar.add(out / "ranking.json", arcname="ranking.json")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/parallel")
    p.add_argument("--budget", type=float, required=True, help="wall-clock seconds per run")
    p.add_argument("--epochs", type=int, default=300, help="cap on each run's epochs")
    p.add_argument("--preset", choices=sorted(PRESETS), default="scratch")
    p.add_argument("--runs", help="comma-separated subset of the preset's runs")
    p.add_argument("--init-from", default="", help="weights for runs whose options say {init}")
    p.add_argument("--export-dir", help="write the best runs' weights and all logs here")
    p.add_argument("--keep", type=int, default=KEEP)
    p.add_argument("extra", nargs="*", help="more train.py options for every run (after --)")
    a = p.parse_args(argv)
    runs = [
        (name, [o.format(init=a.init_from) for o in options])
        for name, options in PRESETS[a.preset]
        if not a.runs or name in a.runs.split(",")
    ]
    if any("--init-from" in options and not a.init_from for _, options in runs):
        p.error("these runs start from earlier weights: pass --init-from")
    out = Path(a.out)
    t0 = time.perf_counter()
    codes = launch(runs, a.data, out, a.budget, a.epochs, a.extra)
    ranking = rank(out, [n for n, _ in runs])
    print(
        json.dumps(
            {"exit_codes": codes, "wall_s": round(time.perf_counter() - t0, 1), "ranking": ranking}, indent=2
        )
    )
    if a.export_dir:
        export_best(out, ranking, Path(a.export_dir), a.keep)
    return ranking


if __name__ == "__main__":
    main()
