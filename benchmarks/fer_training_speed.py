"""Training throughput of the FER CNN on this machine: images/s and epochs/hour per setting.

Runs the real input pipeline (`make_dataset`: numpy/OpenCV augmentation in a Keras PyDataset
with loader threads) and `model.fit` for a fixed number of steps per variant, after one warm-up epoch
that pays for tracing/XLA compilation. Prints a table, writes reports/bench_fer_training_speed.json;
the last line is one JSON object.

    python benchmarks/fer_training_speed.py [--steps 40] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 24_705  # the shared training split, for epochs/hour


def measure(x, y, *, batch_size: int, steps: int, jit, intra: int | None, erase: bool) -> float:
    import keras

    from moodtunes_fer_training import augment
    from moodtunes_fer_training import train as fer_train
    from moodtunes_fer_training.model import build_vgg16

    if intra and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(intra)
    prob = augment.ERASE_PROB
    if not erase:
        augment.ERASE_PROB = 0.0
    try:
        batches = fer_train.make_dataset(x, y, batch_size, 5, True)
        model = build_vgg16()
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
            loss="categorical_crossentropy",
            jit_compile=jit,
        )
        model.fit(batches, steps_per_epoch=5, epochs=1, verbose=0)  # warm-up: tracing and compilation
        t0 = time.perf_counter()
        model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
        return steps * batch_size / (time.perf_counter() - t0)
    finally:
        augment.ERASE_PROB = prob


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="FER npz (default: $MOODTUNES_FER_DATA, else ../shared/data/...)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=str(REPO / "reports/bench_fer_training_speed.json"))
    a = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from moodtunes_fer_training.data import resolve_data_path

    with np.load(resolve_data_path(a.data)) as z:
        x, y = z["x_train"][:4096], z["y_train"][:4096].astype(np.int64)
    variants = [
        ("recipe: numpy augmentation + erasing, XLA", {"jit": True, "intra": None, "erase": True}),
        ("no XLA", {"jit": False, "intra": None, "erase": True}),
        ("XLA, no random erasing", {"jit": True, "intra": None, "erase": False}),
    ]
    rows = []
    for name, kw in variants:
        ips = measure(x, y, batch_size=a.batch_size, steps=a.steps, **kw)
        rows.append(
            {
                "variant": name,
                **kw,
                "images_per_s": round(ips, 1),
                "epochs_per_hour": round(3600 * ips / TRAIN_IMAGES, 2),
            }
        )
        print(f"{name:45s} {ips:7.1f} img/s  {3600 * ips / TRAIN_IMAGES:5.2f} epochs/h")
    from moodtunes_fer_training.train import hardware

    result = {"batch_size": a.batch_size, "steps": a.steps, "hardware": hardware(), "variants": rows}
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(
        json.dumps({"images_per_s": rows[0]["images_per_s"], "epochs_per_hour": rows[0]["epochs_per_hour"]})
    )


if __name__ == "__main__":
    main()
