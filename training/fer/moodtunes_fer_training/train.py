"""Training the FER CNN: seeded, logged per epoch, checkpointed and resumable.

Resumption uses Keras' BackupAndRestore (weights, optimizer and epoch), so an interrupted run
continues where it stopped when the same command is run again with the same --out.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from moodtunes_fer_training import data as fer_data
from moodtunes_fer_training.model import CLASS_NAMES, build_vgg16

SEED = 1337
EPOCHS = 30
BATCH_SIZE = 64
PEAK_LR = 0.01  # SGD + Nesterov momentum with batch norm; the paper's 0.001 was without BN
WARMUP_EPOCHS = 1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
LABEL_SMOOTHING = 0.1
ROTATION_DEG = 15  # paper: 20; FER2013 faces are already roughly aligned
SHIFT = 0.1  # paper: 0.2, which pushes eyes or mouth out of these tight crops
ZOOM = 0.1
CONTRAST = 0.2  # contrast factor drawn from [0.8, 1.2] per image
ERASE_PROB = 0.5  # random erasing (Zhong et al. 2017): one grey-noise box per image, 2-20% area
ERASE_AREA = (0.02, 0.20)
MIXUP_ALPHA = 0.0  # mixup (Zhang et al. 2018) Beta(alpha, alpha) mixing weight; 0 turns it off
TEACHER_WEIGHT = 0.7  # with a teacher: target = w * ensemble probabilities + (1 - w) * one-hot label


def class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Square-root inverse-frequency weights, mean 1: lifts fear/angry recall without flattening happy."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = 1.0 / np.sqrt(np.maximum(counts, 1))
    return (w / (w * counts).sum() * counts.sum()).astype(np.float32)


def make_dataset(
    x,
    y,
    batch_size,
    num_classes,
    training,
    weights=None,
    mixup_alpha: float = MIXUP_ALPHA,
    seed: int = SEED,
    targets=None,
):
    """Training: augmented `TrainingBatches` (on soft `targets` when given); evaluation: plain
    (images, one-hot) numpy batches."""
    if training:
        from moodtunes_fer_training.augment import TrainingBatches

        return TrainingBatches(x, y, batch_size, num_classes, weights, mixup_alpha, seed, targets=targets)
    return x[..., None].astype(np.float32), np.eye(num_classes, dtype=np.float32)[y]


def cosine_lr(epoch: int, planned_epochs: int, peak_lr: float) -> float:
    """Per-epoch learning rate of a time-budgeted run: one warm-up epoch at peak/10, then a cosine
    from the peak to near zero over the epochs the budget is expected to allow."""
    if epoch < WARMUP_EPOCHS:
        return peak_lr / 10
    span = max(1, planned_epochs - WARMUP_EPOCHS)
    progress = min(1.0, (epoch - WARMUP_EPOCHS + 0.5) / span)
    return 0.5 * peak_lr * (1.0 + float(np.cos(np.pi * progress)))


def plan_epochs(epoch_seconds: list[float], elapsed: float, budget: float, done: int, cap: int) -> int:
    """How many epochs in all fit the wall-clock budget: the typical epoch time (the first one pays
    for compilation, so it is left out once there are others) into the time left."""
    typical = float(np.median(epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds))
    return int(min(cap, done + max(0, (budget - elapsed) // typical)))


def hardware() -> dict:
    info = {
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
    }
    try:
        import keras

        info["keras_backend"] = keras.backend.backend()
        if info["keras_backend"] == "jax":
            import jax

            info["gpus"] = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        elif info["keras_backend"] == "tensorflow":
            import tensorflow as tf

            info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # pragma: no cover - informational only
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def save_compact_weights(checkpoint: str | os.PathLike, out: str | os.PathLike) -> None:
    """A .keras checkpoint's weights as float16 arrays in an npz: under half the checkpoint's
    size, small enough to travel to a lent GPU machine beside the data, exact enough to start from."""
    import keras

    weights = keras.models.load_model(checkpoint, compile=False).get_weights()
    np.savez_compressed(out, **{f"w{i}": w.astype(np.float16) for i, w in enumerate(weights)})


def load_initial_weights(model, source: str | os.PathLike) -> None:
    """Copies weights from a .keras checkpoint, an exported TF Serving version folder or an npz of
    `save_compact_weights`."""
    import keras

    source = Path(source)
    if source.suffix == ".npz":
        with np.load(source) as f:
            model.set_weights([f[f"w{i}"].astype(np.float32) for i in range(len(f.files))])
    elif source.is_dir():
        import tensorflow as tf

        from moodtunes_fer_training.export import serving_module

        # the export's tf.Module wraps the same layers, so its variable checkpoint maps one to one
        status = tf.train.Checkpoint(serving_module(model)).read(str(source / "variables" / "variables"))
        status.assert_existing_objects_matched()
    else:
        model.set_weights(keras.models.load_model(source, compile=False).get_weights())


def init_from_summary(source: str | os.PathLike) -> dict:
    """What the starting weights cost: their run's epochs and seconds, for the model card."""
    source = Path(source)
    summary: dict = {"path": str(source)}
    card, state = source / "model_card.json", source.parent / "train_state.json"
    if card.is_file():
        training = json.loads(card.read_text()).get("training", {})
    elif state.is_file():
        training = json.loads(state.read_text())
    else:
        return summary
    for key in ("epochs_done", "train_seconds", "best_val_accuracy", "init_from"):
        if training.get(key) is not None:
            summary[key] = training[key]
    return summary


def train(
    data_path: str | None = None,
    out_dir: str | os.PathLike = "runs/fer_vgg16",
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    peak_lr: float = PEAK_LR,
    seed: int = SEED,
    limit: int | None = None,
    verbose: int = 2,
    jit_compile: bool | str = "auto",
    init_from: str | os.PathLike | None = None,
    mixup_alpha: float = MIXUP_ALPHA,
    extra_data: str | os.PathLike | None = None,
    time_budget_s: float | None = None,
    width: float = 1.0,
    teacher: str | os.PathLike | None = None,
    teacher_weight: float = TEACHER_WEIGHT,
) -> dict:
    """Trains (or resumes) a run in `out_dir`; returns its state (epochs done, time, best val).

    `init_from` starts from earlier weights (a .keras checkpoint or an exported version folder):
    a second cosine cycle continues a finished run (SGDR-style warm restart).
    `extra_data` is a supplement npz (e.g. the AffectNet faces) whose `x_train`/`y_train` are cleaned
    the same way and added to the training split only; validation stays FER2013 PublicTest.
    `time_budget_s` fits the run to a wall-clock budget (a lent GPU machine's lease): `epochs`
    becomes a cap, and a per-epoch cosine re-plans the epoch count from measured epoch times.
    `width` multiplies every conv block's filters (2.0 gives VGG16's own 64-128-256-512-512).
    `teacher` is an npz of `moodtunes_fer_training.teacher` (an ensemble's probabilities for this
    cleaned split): the run distils it, training on `teacher_weight` x its probabilities +
    the rest x the labels, without label smoothing (the ensemble's targets are soft already).
    """
    import keras

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A resumed run reseeds with the epochs already done: with the plain seed its first epoch
    # replays epoch 1's exact shuffle order and augmentations, which the network has memorised
    # (measured on v3's resumptions: training accuracy +5 to +10 points for that epoch, and
    # validation accuracy no better).
    previous = out / "train_state.json"
    done = json.loads(previous.read_text()).get("epochs_done", 0) if previous.exists() else 0
    keras.utils.set_random_seed(seed + done)
    path = fer_data.resolve_data_path(data_path)
    train_split = fer_data.clean_training_split(fer_data.load_split(path, "train"))
    val_split = fer_data.load_split(path, "val")
    if limit:  # tiny seeded subsets for smoke tests
        for split in (train_split, val_split):
            pick = np.random.default_rng(seed).permutation(len(split.x))[:limit]
            split.x, split.y = split.x[pick], split.y[pick]
    extra_report = None
    if extra_data:
        extra_split = fer_data.clean_training_split(fer_data.load_split(extra_data, "train"))
        extra_report = {"path": str(extra_data), **extra_split.report}
        train_split = fer_data.Split(
            np.concatenate([train_split.x, extra_split.x]),
            np.concatenate([train_split.y, extra_split.y]),
            train_split.report,
        )
    n_classes = len(CLASS_NAMES)
    weights = class_weights(train_split.y, n_classes)
    targets = None
    if teacher:
        if extra_data or limit:
            raise ValueError(
                "a teacher's targets cover the cleaned FER2013 split only: no --extra-data, --limit"
            )
        from moodtunes_fer_training.teacher import load_teacher

        onehot = np.eye(n_classes, dtype=np.float32)[train_split.y]
        targets = teacher_weight * load_teacher(teacher, train_split.x) + (1 - teacher_weight) * onehot
    train_ds = make_dataset(
        train_split.x, train_split.y, batch_size, n_classes, True, weights, mixup_alpha, seed + done, targets
    )
    val_ds = make_dataset(val_split.x, val_split.y, batch_size, n_classes, False)

    steps_per_epoch = int(np.ceil(len(train_split.x) / batch_size))
    warmup = WARMUP_EPOCHS * steps_per_epoch
    if time_budget_s:
        schedule = cosine_lr(done, epochs, peak_lr)  # a plain rate that BudgetPlan sets each epoch
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=peak_lr / 10,
            decay_steps=max(1, epochs * steps_per_epoch - warmup),
            warmup_target=peak_lr,
            warmup_steps=warmup,
            alpha=0.0,
        )
    model = build_vgg16(num_classes=n_classes, width=width)
    if init_from:
        load_initial_weights(model, init_from)
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.0 if teacher else LABEL_SMOOTHING),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )

    state_file = out / "train_state.json"
    state = (
        json.loads(state_file.read_text())
        if state_file.exists()
        else {
            "epochs_done": 0,
            "train_seconds": 0.0,
            "best_val_accuracy": None,
            "segments": [],
        }
    )
    state.update(
        {
            "data": str(path),
            "data_report": train_split.report,
            "extra_data": extra_report,
            "seed": seed,
            "epochs_planned": epochs,
            "time_budget_s": time_budget_s,
            "width": width,
            "batch_size": batch_size,
            "peak_lr": peak_lr,
            "class_weights": weights.round(4).tolist(),
            "hyperparameters": {
                "momentum": MOMENTUM,
                "weight_decay": WEIGHT_DECAY,
                "label_smoothing": 0.0 if teacher else LABEL_SMOOTHING,
                "rotation_deg": ROTATION_DEG,
                "shift": SHIFT,
                "zoom": ZOOM,
                "warmup_epochs": WARMUP_EPOCHS,
                "erase_prob": ERASE_PROB,
                "erase_area": list(ERASE_AREA),
                "mixup_alpha": mixup_alpha,
            },
            "train_images": int(len(train_split.x)),
            "val_images": int(len(val_split.x)),
            "teacher": {"path": str(teacher), "weight": teacher_weight} if teacher else None,
        }
    )
    if init_from:
        state["init_from"] = init_from_summary(init_from)
    state["segments"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hardware": hardware()})

    class StateLogger(keras.callbacks.Callback):
        """Persists progress after every epoch so time and best score survive interruptions."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            dt = time.perf_counter() - self.t0
            state["epochs_done"] = epoch + 1
            state["train_seconds"] = round(state["train_seconds"] + dt, 1)
            acc = float(logs.get("val_accuracy", 0.0))
            if state["best_val_accuracy"] is None or acc > state["best_val_accuracy"]:
                state["best_val_accuracy"], state["best_epoch"] = acc, epoch + 1
            state["last_epoch_images_per_s"] = round(len(train_split.x) / dt, 1)
            state_file.write_text(json.dumps(state, indent=2))
            plot_history(out / "history.csv", out / "history.png")

    best = state["best_val_accuracy"]
    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        keras.callbacks.ModelCheckpoint(str(out / "last.keras")),
        keras.callbacks.ModelCheckpoint(
            str(out / "best.keras"),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            initial_value_threshold=best,
        ),
        StateLogger(),
    ]
    if time_budget_s:
        started = time.perf_counter()
        epoch_seconds: list[float] = []

        class BudgetPlan(keras.callbacks.Callback):
            """Sets each epoch's rate on a cosine over the epochs the budget allows, re-planned from
            the epoch times seen so far; stops when the next epoch would overrun the budget."""

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()
                rate = cosine_lr(epoch, state["epochs_planned"], peak_lr)
                self.model.optimizer.learning_rate = rate
                state.setdefault("learning_rate_by_epoch", {})[str(epoch + 1)] = round(rate, 6)

            def on_epoch_end(self, epoch, logs=None):
                epoch_seconds.append(time.perf_counter() - self.t0)
                planned = plan_epochs(
                    epoch_seconds, time.perf_counter() - started, time_budget_s, epoch + 1, epochs
                )
                state["epochs_planned"] = planned
                state_file.write_text(json.dumps(state, indent=2))
                if planned <= epoch + 1:
                    self.model.stop_training = True

        callbacks.insert(0, BudgetPlan())
    model.fit(
        train_ds,
        validation_data=val_ds,
        validation_batch_size=batch_size,
        epochs=epochs,
        callbacks=callbacks,
        verbose=verbose,
    )
    state["finished"] = state["epochs_done"] >= state["epochs_planned"]
    state_file.write_text(json.dumps(state, indent=2))
    return state


def read_history(csv_paths) -> list[dict]:
    """CSV log rows of one run, or of runs that continue each other (epochs numbered on)."""
    import csv

    rows: list[dict] = []
    for csv_path in [csv_paths] if isinstance(csv_paths, (str, Path)) else csv_paths:
        if not Path(csv_path).exists():
            continue
        with open(csv_path) as f:
            run = [r for r in csv.DictReader(f) if r.get("epoch", "").strip().isdigit()]
        offset = len(rows)
        rows += [{**r, "epoch": str(offset + i), "run": str(csv_path)} for i, r in enumerate(run)]
    return rows


def plot_history(csv_paths, png_path: Path) -> None:
    """Loss and accuracy curves from the CSV log(s) (matplotlib, headless); a dotted line marks
    where a continued run restarted its learning-rate schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(csv_paths)
    if not rows:
        return
    ep = [int(r["epoch"]) + 1 for r in rows]
    restarts = [ep[i] - 0.5 for i in range(1, len(rows)) if rows[i]["run"] != rows[i - 1]["run"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax1), ("accuracy", ax2)):
        ax.plot(ep, [float(r[key]) for r in rows], label=f"train {key}")
        ax.plot(ep, [float(r[f"val_{key}"]) for r in rows], label=f"val {key}")
        for x in restarts:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    """`python -m moodtunes_fer_training.train`: the same run without the CLI's dependencies, for
    machines that hold only a Keras backend (a lent GPU machine has JAX and PyTorch, no TensorFlow).
    `moodtunes fer train` is the documented entry point."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    p.add_argument("--data")
    p.add_argument("--out", default="runs/fer_vgg16")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--peak-lr", type=float, default=PEAK_LR)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--mixup", type=float, default=MIXUP_ALPHA)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--time-budget", type=float, help="seconds; epochs becomes a cap")
    p.add_argument("--init-from", help=".keras checkpoint, export folder or compact npz to start from")
    p.add_argument("--teacher", help="ensemble targets npz to distil (moodtunes_fer_training.teacher)")
    p.add_argument("--teacher-weight", type=float, default=TEACHER_WEIGHT)
    p.add_argument("--limit", type=int)
    p.add_argument("--jit", default="auto")
    p.add_argument("--verbose", type=int, default=2)
    a = p.parse_args(argv)
    jit = {"true": True, "false": False}.get(a.jit, a.jit)
    return train(
        a.data,
        a.out,
        a.epochs,
        batch_size=a.batch_size,
        peak_lr=a.peak_lr,
        seed=a.seed,
        limit=a.limit,
        verbose=a.verbose,
        jit_compile=jit,
        mixup_alpha=a.mixup,
        time_budget_s=a.time_budget,
        width=a.width,
        init_from=a.init_from,
        teacher=a.teacher,
        teacher_weight=a.teacher_weight,
    )


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
