"""What the FER worker image installs, and what a worker process costs to start, before and after
the worker stopped installing TensorFlow (TF Serving's API through moodtunes-tfserving instead).

For each variant ("before": the tree at --before-rev, HEAD~1 by default, whose image installed
tensorflow-cpu and tensorflow-serving-api; "after": this working tree):

  (a) a fresh venv gets exactly the `pip install` commands of that variant's services/fer/Dockerfile
      (with a pip cache, so reruns do not download again); reported: the bytes they added to
      site-packages, the number of distributions, the largest ones;
  (b) a fresh `python` of that venv imports the worker module (what `celery -A moodtunes_fer.worker`
      loads), then what the first job imports, builds the gRPC backend and makes its first Predict
      against a local model server (a toy model with the FER signature); reported: time of each
      step, the process's wall time and its peak RSS (medians over --runs, variants alternating).

    python benchmarks/fer_worker_footprint.py [--runs 7] [--work /tmp/fer_worker_footprint] [--reuse-venvs]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench_fer_worker_footprint.json"
SOURCES = ("constraints.txt", "packages/moodtunes-common", "packages/moodtunes-tfserving", "services/fer")
MODEL_NAME = "fer_vgg16"

# Peak RSS of the process image: VmHWM restarts at exec, unlike ru_maxrss, which a child started by
# fork + exec inherits from its parent (here a process holding TensorFlow). Prepended to the probes.
PEAK_RSS = r"""
def peak_rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
"""

# Runs in a variant's venv: a worker process from start to its first prediction.
PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import moodtunes_fer.worker  # what `celery -A moodtunes_fer.worker worker` imports
t1 = time.perf_counter()
import numpy as np
import moodtunes_fer.detection, moodtunes_fer.head, moodtunes_fer.preprocessing  # the first job's imports
from moodtunes_fer.inference import GrpcBackend
backend = GrpcBackend(sys.argv[1], sys.argv[2])
t2 = time.perf_counter()
backend.features_and_probabilities(np.zeros((1, 48, 48, 1), np.float32))
t3 = time.perf_counter()
print(json.dumps({
    "import_worker_s": t1 - t0, "first_job_imports_and_client_s": t2 - t1, "first_predict_s": t3 - t2,
    "to_first_prediction_s": t3 - t0, "peak_rss_mb": peak_rss_mb(),
    "tensorflow_modules_loaded": sum(m.split(".")[0] in ("tensorflow", "tensorflow_serving")
                                     for m in sys.modules),
    "tensorflow_initialised": "tensorflow.python" in sys.modules,
}))
"""

# For comparison: the TF Serving API imported the ordinary way from the before image's packages.
PLAIN_API_IMPORT = r"""
import json, time
t0 = time.perf_counter()
from tensorflow_serving.apis import prediction_service_pb2_grpc
print(json.dumps({"import_api_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}))
"""


def log(message: str) -> None:
    print(message, flush=True)


def materialise(variant: str, rev: str | None, dest: Path) -> Path:
    """The variant's sources under dest/src: `git archive` of rev (read-only), or this tree."""
    src = dest / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    if rev:
        data = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, *SOURCES[:2], "services/fer"],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(src, filter="data")
    else:
        ignore = shutil.ignore_patterns("*.egg-info", "__pycache__", "build")
        for rel in SOURCES:
            if (REPO / rel).is_dir():
                shutil.copytree(REPO / rel, src / rel, ignore=ignore)
            else:
                shutil.copy2(REPO / rel, src / rel)
    return src


def dockerfile_pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of every `pip install` in the Dockerfile's RUN instructions."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    installs = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        for command in line[4:].split("&&"):
            words = shlex.split(command.strip())
            if words[:2] == ["pip", "install"]:
                installs.append(words[2:])
    return installs


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


DISTS = r"""
import json
from importlib import metadata
out = {}
for d in metadata.distributions():
    out[d.metadata["Name"]] = sum(f.size or 0 for f in (d.files or []))
print(json.dumps(out))
"""


def dists_sizes(python: Path) -> dict[str, int]:
    out = subprocess.run([python, "-c", DISTS], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def build_image_venv(src: Path, venv: Path) -> tuple[list[list[str]], float]:
    """A fresh venv given the Dockerfile's pip installs, run from the sources' root as in the image."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installs = dockerfile_pip_installs(src / "services" / "fer" / "Dockerfile")
    started = time.perf_counter()
    for args in installs:
        args = [a for a in args if a != "--no-cache-dir"]  # the cache only spares downloads on reruns
        log(f"  pip install {' '.join(args)}")
        subprocess.run(
            [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
            check=True,
            cwd=src,
        )
    return installs, time.perf_counter() - started


def image_stats(venv: Path, empty: Path) -> dict:
    """What the installs added to site-packages, against a fresh venv with nothing installed."""
    baseline = dists_sizes(empty / "bin" / "python")
    added = {n: size for n, size in dists_sizes(venv / "bin" / "python").items() if n not in baseline}
    largest = sorted(added.items(), key=lambda kv: -kv[1])[:8]
    return {
        "installed_bytes": tree_bytes(site_packages(venv)) - tree_bytes(site_packages(empty)),
        "distributions": len(added),
        "largest_mb": {name: round(size / 2**20, 1) for name, size in largest},
        "tensorflow_distributions": sorted(n for n in added if n.lower().startswith("tensorflow")),
    }


def probe_once(python: Path, code: str, args: list[str]) -> dict:
    """One fresh process in isolated mode (only the venv's packages): its figures and wall time."""
    started = time.perf_counter()
    result = subprocess.run(
        [python, "-I", "-c", PEAK_RSS + code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        env={"PATH": os.environ.get("PATH", ""), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    wall = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"probe failed in {python}:\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "process_wall_s": wall}


def medians(samples: list[dict]) -> dict:
    out = {}
    for key, value in samples[0].items():
        values = [s[key] for s in samples]
        out[key] = round(statistics.median(values), 3) if isinstance(value, float) else values[0]
    out["runs"] = len(samples)
    return out


def run_probes(pythons: dict[str, Path], code: str, args: list[str], runs: int) -> dict[str, dict]:
    """Median figures per variant; runs alternate between variants (after one discarded warm-up
    each), so a change in machine load hits both alike."""
    samples: dict[str, list[dict]] = {name: [] for name in pythons}
    for python in pythons.values():
        probe_once(python, code, args)
    for _ in range(runs):
        for name, python in pythons.items():
            samples[name].append(probe_once(python, code, args))
    return {name: medians(s) for name, s in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before-rev", default="HEAD~1", help="git revision of the TensorFlow-installing image")
    p.add_argument("--work", type=Path, default=Path("/tmp/fer_worker_footprint"))
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--reuse-venvs", action="store_true", help="keep venvs of an earlier run (same sources)")
    args = p.parse_args()

    from moodtunes_model_server.testing import run_server, save_toy_model

    variants = {"before": args.before_rev, "after": None}
    result: dict = {"before_rev": args.before_rev, "variants": {v: {} for v in variants}}
    empty = args.work / "empty-venv"
    if not (empty / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(empty)], check=True)
    venvs = {name: args.work / name / "venv" for name in variants}
    for name, rev in variants.items():
        src = args.work / name / "src"
        if not (args.reuse_venvs and (venvs[name] / "bin" / "python").exists()):
            log(f"[{name}] sources and image venv")
            src = materialise(name, rev, args.work / name)
            _, seconds = build_image_venv(src, venvs[name])
            result["variants"][name]["install_seconds"] = round(seconds, 1)
        dockerfile = src / "services" / "fer" / "Dockerfile"
        result["variants"][name]["pip_installs"] = [" ".join(a) for a in dockerfile_pip_installs(dockerfile)]
        result["variants"][name]["image"] = image_stats(venvs[name], empty)

    models = args.work / "models"
    shutil.rmtree(models, ignore_errors=True)
    save_toy_model(models / MODEL_NAME / "1")
    pythons = {name: venv / "bin" / "python" for name, venv in venvs.items()}
    with run_server(model_base_path=models / MODEL_NAME, model_name=MODEL_NAME) as server:
        log(f"worker start to first Predict, {args.runs} runs each")
        for name, figures in run_probes(pythons, PROBE, [server.address, MODEL_NAME], args.runs).items():
            result["variants"][name]["worker"] = figures
    log("[before] TF Serving's API imported the ordinary way (no import trick)")
    plain = run_probes({"before": pythons["before"]}, PLAIN_API_IMPORT, [], max(1, args.runs // 2))
    result["before_plain_tensorflow_serving_api_import"] = plain["before"]

    before, after = (result["variants"][v] for v in ("before", "after"))
    result["summary"] = {
        "installed_mb": {
            v: round(result["variants"][v]["image"]["installed_bytes"] / 2**20, 1) for v in variants
        },
        "installed_ratio_after_over_before": round(
            after["image"]["installed_bytes"] / before["image"]["installed_bytes"], 3
        ),
        "worker_process_wall_s": {v: result["variants"][v]["worker"]["process_wall_s"] for v in variants},
        "worker_to_first_prediction_s": {
            v: result["variants"][v]["worker"]["to_first_prediction_s"] for v in variants
        },
        "worker_peak_rss_mb": {v: result["variants"][v]["worker"]["peak_rss_mb"] for v in variants},
    }
    result.update(
        {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    log(
        f"\n{'':<8} {'installed':>10} {'dists':>6} {'worker wall':>12} {'import':>8} "
        f"{'1st job+client':>15} {'1st Predict':>12} {'peak RSS':>9}"
    )
    for v in variants:
        image, worker = result["variants"][v]["image"], result["variants"][v]["worker"]
        log(
            f"{v:<8} {image['installed_bytes'] / 2**20:>8.1f}MB {image['distributions']:>6} "
            f"{worker['process_wall_s']:>11.2f}s {worker['import_worker_s']:>7.2f}s "
            f"{worker['first_job_imports_and_client_s']:>14.2f}s {worker['first_predict_s']:>11.3f}s "
            f"{worker['peak_rss_mb']:>7.0f}MB"
        )
    plain = result["before_plain_tensorflow_serving_api_import"]
    log(
        f"before, `import tensorflow_serving.apis` without the trick: {plain['import_api_s']:.2f}s, "
        f"peak RSS {plain['peak_rss_mb']:.0f}MB"
    )
    for v in variants:
        log(f"{v} largest: {result['variants'][v]['image']['largest_mb']}")
    log(f"written {args.out}")


if __name__ == "__main__":
    main()
