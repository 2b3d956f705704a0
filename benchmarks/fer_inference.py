"""Throughput of the exported FER CNN (SavedModel serving_default) on this machine.

Images/s at each batch size, in process and optionally through the model server over gRPC; each
setting gets warm-up calls first (graph tracing, thread pools), then timed repeats.

    python benchmarks/fer_inference.py [--models-dir models] [--server localhost:8500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from moodtunes_fer_training.in_process import InProcessBackend, version_of

BATCH_SIZES = (1, 32)
WARMUP_CALLS = 3
MIN_TIMED_CALLS = 5
MIN_TIMED_SECONDS = 3.0  # keep timing a setting until both minimums are met
SEED = 0
OUT = "reports/bench_fer_inference.json"


def bench(call, batch: np.ndarray) -> dict:
    for _ in range(WARMUP_CALLS):
        call(batch)
    times = []
    started = time.perf_counter()
    while len(times) < MIN_TIMED_CALLS or time.perf_counter() - started < MIN_TIMED_SECONDS:
        t0 = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "batch_size": len(batch),
        "calls": len(times),
        "median_ms_per_call": round(median * 1e3, 2),
        "p90_ms_per_call": round(float(np.percentile(times, 90)) * 1e3, 2),
        "images_per_s": round(len(batch) / median, 1),
    }


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", default="models")
    p.add_argument("--model-name", default="fer_vgg16")
    p.add_argument("--version", type=int)
    p.add_argument("--server", help="HOST:PORT of TF Serving / the model server")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    p.add_argument("--out", default=OUT)
    args = p.parse_args()

    import tensorflow as tf

    from moodtunes_fer import inference
    from moodtunes_fer_training.train import hardware

    vdir = inference.version_dir(args.models_dir, args.model_name, args.version)
    card_path = vdir / inference.MODEL_CARD
    tta = json.loads(card_path.read_text()).get("tta") if card_path.is_file() else None
    rng = np.random.default_rng(SEED)
    routes = {"in_process": InProcessBackend(vdir, batch_size=max(args.batch_sizes))}
    if args.server:
        routes["grpc"] = inference.GrpcBackend(
            args.server,
            args.model_name,
            version=args.version,
            batch_size=max(args.batch_sizes),
            timeout_s=60.0,
        )
    rows = []
    for route, backend in routes.items():
        for bs in args.batch_sizes:
            batch = rng.integers(0, 256, (bs, 48, 48, 1)).astype(np.float32)
            row = {"route": route, **bench(backend.features_and_probabilities, batch)}
            rows.append(row)
            print(
                f"{route:<11} batch {bs:>4}: {row['images_per_s']:>8.1f} images/s "
                f"(median {row['median_ms_per_call']} ms/call, p90 {row['p90_ms_per_call']} ms)",
                flush=True,
            )

    result = {
        "model": args.model_name,
        "version": version_of(vdir),
        "tta": tta,
        "note": "with tta every image is run twice (image + mirror)",
        "results": rows,
        "hardware": hardware(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{'route':<11} {'batch':>5} {'images/s':>9} {'ms/call':>8}")
    for r in rows:
        print(
            f"{r['route']:<11} {r['batch_size']:>5} {r['images_per_s']:>9.1f} {r['median_ms_per_call']:>8.1f}"
        )
    print(f"written {out}")


if __name__ == "__main__":
    main()
