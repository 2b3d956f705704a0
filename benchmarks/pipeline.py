"""What the pipeline adds to the work: the same job done in one process (the floor), the bare model
server, and the whole event-driven pipeline (HTTP -> queue -> FER worker -> event -> recommender).

    .venv/bin/python benchmarks/pipeline.py                      # starts its own stack (temp dir)
    .venv/bin/python benchmarks/pipeline.py --url http://127.0.0.1:8000 --model-server 127.0.0.1:8500

(a) floor: decode, detect, crop, model-server call (gRPC), head, playlist query, in a loop in this
    process with no queue, no job store and no HTTP: single-threaded (per-stage medians) and with
    THREADS threads (throughput);
(b) the bare model server: gRPC Predict of one face;
(c) the pipeline: POST the photo, poll until done, closed loop at each concurrency; throughput,
    client p50/p95/p99, errors; per-stage times from the job's own timestamps; and, on a stack it
    started itself, the CPU time each program (gateway, workers, model server, PostgreSQL, Redis,
    ...) spent per job at each level, read from /proc: the basis of deploy/README.md's capacity
    table;
(d) the ratio: PAIRED_ROUNDS rounds of one floor run (its best thread count) and one pipeline run
    (the highest concurrency), taken in turn, so the machine's drift weighs on both alike.
Writes reports/bench_pipeline.json and .png; the last printed line is one JSON object with
`throughput_ratio` (pipeline / floor throughput at the highest concurrency, from (d)) and
`overhead_ms` (median single job time minus the single-threaded floor).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np

OUT = Path("reports/bench_pipeline.json")
CONCURRENCY = (1, 4, 16)
FLOOR_JOBS = 60  # single-threaded floor iterations (after WARMUP)
WARMUP = 5
THREADS = (1, 2, 4, 8)
MODEL_CALLS = 200
JOBS_PER_LEVEL = 60  # pipeline jobs per concurrency level, and at least JOBS_PER_CLIENT per client:
JOBS_PER_CLIENT = 15  # at 16 clients 240 jobs, as many as the floor's 4-thread run, so the closed loop's
# ramp (16 POSTs at once) and drain (the last jobs with idle workers) weigh little: the whole run's
# rate came within 1% of `steady_jobs_per_s` (every client busy) at concurrency 16
LONG_POLL_S = 20  # `POST /v1/jobs?wait=`: one request per job, answered with the finished job (a
# `GET /v1/jobs/{id}?wait=` long poll follows only if it is not done by then). No polling loop eats
# the two cores the pipeline runs on: before long polls, a 5 ms poll loop cost the gateway ~36 ms of
# CPU per job; a POST and a long poll cost the gateway ~1.5-2 ms and the client ~1 ms more than the
# one waiting POST (README, runs 4 and 5).
PAIRED_ROUNDS = 4  # the ratio: runs of the floor (best threads) and the pipeline (top concurrency) taken
PAIRED_JOBS = 240  # in turn, this many jobs each, so that the machine's drift over a run (its speed moved
# by up to 8% within minutes here) weighs on both sides alike instead of on whichever ran later
MODE, LIMIT = "match", 10
# a load test is not abuse: lift the per-client limits and the queue bound for the benchmark's stack
LOAD_TEST_ENV = {"RATE_LIMIT_JOBS": "100000/minute", "MAX_UNFINISHED_JOBS_PER_CLIENT": "0"}


def astronaut_jpeg() -> bytes:
    """The public-domain astronaut portrait (scikit-image), 512x512 JPEG: one face."""
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def pct(values, q) -> float:
    return round(float(np.percentile(values, q)), 2) if values else float("nan")


# --- (a) the floor ------------------------------------------------------------------------------


class Floor:
    """One job's work as plain function calls: what the worker processes do, minus the plumbing."""

    def __init__(self, model_server: str, database_url: str):
        from moodtunes.config import get_settings
        from moodtunes_fer.inference import FerPipeline, GrpcBackend

        s = get_settings()
        self.settings = s
        self.database_url = database_url
        self.local = threading.local()
        self.make_pipeline = lambda: FerPipeline(
            GrpcBackend(model_server, s.model_name), models_dir=s.models_dir, model_name=s.model_name
        )

    def _thread_state(self):
        if not hasattr(self.local, "pipeline"):
            import psycopg
            from pgvector.psycopg import register_vector
            from psycopg.rows import dict_row

            self.local.pipeline = self.make_pipeline()
            self.local.conn = psycopg.connect(self.database_url, row_factory=dict_row, autocommit=False)
            register_vector(self.local.conn)
        return self.local.pipeline, self.local.conn

    def run(self, photo: bytes) -> dict[str, float]:
        """One job; returns milliseconds per stage."""
        from moodtunes_fer.detection import crop, decode_grey, detect_faces
        from moodtunes_fer.preprocessing import to_model_input
        from moodtunes_recommender import mapping, matching

        pipeline, conn = self._thread_state()
        s, t = self.settings, {}
        t0 = time.perf_counter()
        grey = decode_grey(photo, s.max_image_pixels)
        t1 = time.perf_counter()
        boxes = detect_faces(grey, s.min_face_px)
        if not boxes:
            raise RuntimeError("the benchmark photo must show a face")
        t2 = time.perf_counter()
        x = to_model_input([crop(grey, b, s.face_margin, s.face_shift) for b in boxes])
        t3 = time.perf_counter()
        features, _, version = pipeline.backend.features_and_probabilities(x)
        t4 = time.perf_counter()
        probs = pipeline._head_for(version).predict_proba(features)[0]
        t5 = time.perf_counter()
        targets = mapping.targets(list(probs), MODE, LIMIT)
        tracks = matching.build_playlist(conn, targets, None, [], None, mapping.min_valence(MODE, LIMIT))
        conn.rollback()
        t6 = time.perf_counter()
        assert len(tracks) == LIMIT
        for name, a, b in (
            ("decode", t0, t1),
            ("detect", t1, t2),
            ("crop", t2, t3),
            ("model_server", t3, t4),
            ("head", t4, t5),
            ("playlist", t5, t6),
        ):
            t[name] = (b - a) * 1e3
        t["total"] = (t6 - t0) * 1e3
        return t


class FloorRuns:
    """Timed floor runs on one pool of `threads` threads, made and warmed once: every run finds
    each thread's model-server channel and database connection ready."""

    def __init__(self, floor: Floor, photo: bytes, threads: int):
        self.floor, self.photo = floor, photo
        self.pool = ThreadPoolExecutor(threads)
        list(self.pool.map(lambda _: floor.run(photo), range(threads * WARMUP)))

    def __call__(self, jobs: int = PAIRED_JOBS) -> tuple[int, float]:
        t0 = time.perf_counter()
        list(self.pool.map(lambda _: self.floor.run(self.photo), range(jobs)))
        return jobs, time.perf_counter() - t0

    def close(self) -> None:
        self.pool.shutdown()

    def __enter__(self) -> FloorRuns:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def measure_floor(floor: Floor, photo: bytes) -> dict:
    for _ in range(WARMUP):
        floor.run(photo)
    runs = [floor.run(photo) for _ in range(FLOOR_JOBS)]
    single = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    threaded = {}
    for n in THREADS:
        with FloorRuns(floor, photo, n) as run:
            jobs, dt = run(FLOOR_JOBS * n)
        threaded[str(n)] = round(jobs / dt, 2)
    best = max(threaded, key=threaded.get)
    return {
        "single_thread_ms": single,
        "single_thread_jobs_per_s": round(1e3 / single["total"], 2),
        "jobs_per_s_by_threads": threaded,
        "best_threads": int(best),
        "best_jobs_per_s": threaded[best],
    }


# --- (b) the bare model server --------------------------------------------------------------------


def measure_model_server(model_server: str) -> dict:
    from moodtunes_fer.inference import GrpcBackend

    backend = GrpcBackend(model_server)
    face = np.random.default_rng(0).uniform(0, 255, (1, 48, 48, 1)).astype(np.float32)
    for _ in range(10):
        backend.features_and_probabilities(face)
    times = []
    for _ in range(MODEL_CALLS):
        t0 = time.perf_counter()
        backend.features_and_probabilities(face)
        times.append((time.perf_counter() - t0) * 1e3)
    backend.close()
    return {
        "calls": MODEL_CALLS,
        "p50_ms": pct(times, 50),
        "p95_ms": pct(times, 95),
        "p99_ms": pct(times, 99),
    }


# --- (c) the pipeline -----------------------------------------------------------------------------


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def job_upload(url: str, photo: bytes) -> tuple[bytes, dict[str, str]]:
    """The POST /v1/jobs body and its Content-Type, multipart-encoded once by httpx: every job sends
    the same bytes, and the client (sharing the stack's cores) does not re-encode 75 KB per job."""
    import httpx

    request = httpx.Request(
        "POST", f"{url}/v1/jobs", files={"image": ("face.jpg", photo, "image/jpeg")}, data={"mode": MODE}
    )
    return request.read(), {"content-type": request.headers["content-type"]}


class JobClient:
    """One closed-loop client: its own keep-alive connection, and the session cookie the gateway
    set on its first job sent back with every request (its jobs are visible to it alone). urllib3,
    not httpx: the client shares the stack's cores, and urllib3 spends about half of httpx's CPU
    per request (0.28 against 0.57 ms, measured against a local server)."""

    def __init__(self, url: str):
        import urllib3

        self.pool = urllib3.connection_from_url(
            url, maxsize=1, timeout=urllib3.Timeout(connect=5, read=LONG_POLL_S + 10), retries=False
        )
        self.cookie: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
        headers = dict(headers or {})
        if self.cookie:
            headers["cookie"] = self.cookie
        r = self.pool.request(method, path, body=body, headers=headers)
        if set_cookie := r.headers.get("set-cookie"):
            self.cookie = set_cookie.split(";", 1)[0]
        return r.status, r.data

    def close(self) -> None:
        self.pool.close()


def one_job(client: JobClient, upload: tuple[bytes, dict[str, str]]) -> dict:
    """POST with `?wait=` (the answer is the finished job), long polls if it is not finished by
    then; client time and the job's own stage timestamps."""
    body, headers = upload
    t0 = time.perf_counter()
    status, data = client.request("POST", f"/v1/jobs?wait={LONG_POLL_S}", body, headers)
    if status not in (200, 202):
        return {"ok": False, "error": f"POST {status} {data[:120]!r}"}
    job = json.loads(data)
    status_url = f"{job['status_url']}?wait={LONG_POLL_S}" if status == 202 else None
    while job["status"] not in ("done", "failed"):  # long polls: answered when the job finishes
        job = json.loads(client.request("GET", status_url)[1])
    elapsed = (time.perf_counter() - t0) * 1e3
    if job["status"] != "done":
        return {"ok": False, "error": (job.get("error") or {}).get("code", "failed"), "ms": elapsed}
    created, started, finished = (_ts(job[k]) for k in ("created_at", "started_at", "finished_at"))
    stages = {
        "queued_ms": (started - created) * 1e3,
        "fer_and_recommend_ms": (finished - started) * 1e3,
        "server_total_ms": (finished - created) * 1e3,
    }
    for key, value in (job.get("timings_ms") or {}).items():  # per-stage times, where the stack reports them
        stages[key] = value
    return {"ok": True, "ms": elapsed, "stages": stages}


def cpu_seconds(supervisor) -> dict[str, float]:
    """CPU time (user + system) so far of each supervised program group: its processes, all their
    descendants (Celery's pool, PostgreSQL's backends), and the descendants they already reaped."""
    import psutil

    out: dict[str, float] = {}
    for info in supervisor.processes():
        if not info["pid"]:
            continue
        try:
            root = psutil.Process(info["pid"])
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        total = 0.0
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        out[info["group"]] = out.get(info["group"], 0.0) + total
    return out


def closed_loop(n: int, upload, t0: float):
    """One client's loop: its next job as soon as the last is done, until the level's n jobs are
    taken (a shared count). Each client is one connection used by one thread; each job records
    when it was sent and finished (seconds after t0)."""
    taken = itertools.count()

    def run(client: JobClient) -> list[dict]:
        done = []
        while next(taken) < n:
            sent = time.perf_counter() - t0
            job = one_job(client, upload)
            done.append({**job, "sent_s": sent, "finished_s": time.perf_counter() - t0})
        return done

    return run


def steady_rate(jobs: list[dict], clients: int) -> float | None:
    """Jobs/s while every client had a job in flight: from the clients-th job done (each client's
    first) to the last one sent, so neither the start (every upload at once) nor the drain (the
    last jobs, with workers idle) counts. For reference: the ratio uses the whole run's rate."""
    finished = sorted(j["finished_s"] for j in jobs if j["ok"])
    if len(finished) <= clients:
        return None
    start, end = finished[clients - 1], max(j["sent_s"] for j in jobs)
    inside = sum(start < t <= end for t in finished)
    return round(inside / (end - start), 2) if end > start else None


class PipelineRuns:
    """Timed closed-loop runs by the same `clients` clients, each warmed once (its connection and
    session), as measure_pipeline's are."""

    def __init__(self, url: str, upload, clients: int):
        self.upload = upload
        self.clients = [JobClient(url) for _ in range(clients)]
        for client in self.clients:
            one_job(client, upload)

    def timed(self, jobs: int) -> tuple[list[dict], float]:
        """Every job's record (closed_loop's) and the run's seconds."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(self.clients)) as pool:
            done = [j for part in pool.map(closed_loop(jobs, self.upload, t0), self.clients) for j in part]
        return done, time.perf_counter() - t0

    def __call__(self, jobs: int = PAIRED_JOBS) -> tuple[int, float]:
        done, seconds = self.timed(jobs)
        return sum(j["ok"] for j in done), seconds

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> PipelineRuns:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def measure_pipeline(url: str, photo: bytes, levels, cpu_probe=None) -> list[dict]:
    """`cpu_probe` (optional): a callable giving CPU seconds by program, read before and after
    each level's timed jobs; the benchmark's own CPU (its client threads) is added as "client"."""
    upload = job_upload(url, photo)
    results = []
    for c in levels:
        n = max(JOBS_PER_LEVEL, JOBS_PER_CLIENT * c)
        with PipelineRuns(url, upload, c) as run:  # one listener (cookie) per client
            cpu_before = cpu_probe() if cpu_probe else None
            client_cpu = time.process_time()
            jobs, dt = run.timed(n)
            client_cpu = time.process_time() - client_cpu
            cpu_after = cpu_probe() if cpu_probe else None
        if cpu_after is not None:
            cpu_before, cpu_after = {**cpu_before, "client": 0.0}, {**cpu_after, "client": client_cpu}
        ok = [j for j in jobs if j["ok"]]
        ms = [j["ms"] for j in ok]
        stage_keys = sorted({k for j in ok for k in j["stages"]})
        results.append(
            {
                "concurrency": c,
                "jobs": n,
                "done": len(ok),
                "errors": sorted({j["error"] for j in jobs if not j["ok"]}),
                "error_count": n - len(ok),
                "jobs_per_s": round(len(ok) / dt, 2),
                "steady_jobs_per_s": steady_rate(jobs, c),
                "p50_ms": pct(ms, 50),
                "p95_ms": pct(ms, 95),
                "p99_ms": pct(ms, 99),
                "stage_p50_ms": {
                    k: pct([j["stages"][k] for j in ok if k in j["stages"]], 50) for k in stage_keys
                },
            }
        )
        if cpu_before is not None:
            per_job = {
                name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / n, 1)
                for name in sorted(cpu_after)
            }
            results[-1]["cpu_ms_per_job"] = per_job
            print(f"  CPU ms per job by program: {per_job}", flush=True)
        r = results[-1]
        print(
            f"  concurrency {c:>2}: {r['jobs_per_s']:6.2f} jobs/s  p50 {r['p50_ms']:7.1f} ms"
            f"  p95 {r['p95_ms']:7.1f}  p99 {r['p99_ms']:7.1f}  errors {n - len(ok)}",
            flush=True,
        )
    return results


# --- the ratio, from paired runs --------------------------------------------------------------------


def paired_ratio(run_floor, run_pipeline, rounds: int = PAIRED_ROUNDS, cpu_probe=None) -> dict:
    """Pipeline / floor throughput from `rounds` rounds of one run each, taken in turn and in
    alternating order (floor first, then pipeline first, ...), so a machine that speeds up or slows
    down during the benchmark moves both sides. The ratio pools every run of a side (all its jobs
    over all its seconds); each round's own ratio shows the spread. With `cpu_probe` (CPU seconds
    by program), each side also gets its CPU per job by program, this process's as "benchmark"
    (the floor's own work, or the pipeline's clients), measured under the same conditions."""
    runs: dict[str, list[tuple[int, float]]] = {"floor": [], "pipeline": []}
    cpu: dict[str, dict[str, float]] = {"floor": {}, "pipeline": {}}
    per_round = []
    for i in range(rounds):
        order = ("floor", "pipeline") if i % 2 == 0 else ("pipeline", "floor")
        rates = {}
        for side in order:
            before = {**cpu_probe(), "benchmark": time.process_time()} if cpu_probe else None
            done, seconds = (run_floor if side == "floor" else run_pipeline)()
            if before is not None:
                after = {**cpu_probe(), "benchmark": time.process_time()}
                for name, value in after.items():
                    cpu[side][name] = cpu[side].get(name, 0.0) + value - before.get(name, 0.0)
            runs[side].append((done, seconds))
            rates[side] = done / seconds
        per_round.append(
            {
                "first": order[0],
                "floor_jobs_per_s": round(rates["floor"], 2),
                "pipeline_jobs_per_s": round(rates["pipeline"], 2),
                "ratio": round(rates["pipeline"] / rates["floor"], 3),
            }
        )
        print(f"  round {i + 1} ({order[0]} first): {per_round[-1]}", flush=True)
    pooled = {side: sum(d for d, _ in r) / sum(t for _, t in r) for side, r in runs.items()}
    report = {
        "rounds": per_round,
        "floor_jobs_per_s": round(pooled["floor"], 2),
        "pipeline_jobs_per_s": round(pooled["pipeline"], 2),
        "ratio": round(pooled["pipeline"] / pooled["floor"], 3),
    }
    if cpu_probe:
        done = {side: sum(d for d, _ in r) for side, r in runs.items()}
        report["cpu_ms_per_job"] = {
            side: {name: round(v * 1e3 / done[side], 1) for name, v in sorted(cpu[side].items())}
            for side in runs
        }
        print(f"  CPU ms per job by program: {report['cpu_ms_per_job']}", flush=True)
    return report


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [r["concurrency"] for r in report["pipeline"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(levels, [r["jobs_per_s"] for r in report["pipeline"]], "o-", label="pipeline")
    a1.axhline(report["floor"]["best_jobs_per_s"], color="grey", ls="--", label="floor (best threads)")
    a1.set_xscale("log", base=2)
    a1.set_xlabel("concurrent clients")
    a1.set_ylabel("jobs/s")
    a1.legend()
    a1.set_title("throughput")
    stages = report["floor"]["single_thread_ms"]
    names = [k for k in stages if k != "total"]
    a2.barh(names, [stages[k] for k in names])
    a2.set_xlabel("ms (median, one thread)")
    a2.set_title(f"floor per stage (total {stages['total']:.0f} ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running gateway (default: start a stack in a temp dir)")
    p.add_argument("--model-server", help="HOST:PORT of that stack's model server")
    p.add_argument("--database-url", help="that stack's database (read-only queries)")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    p.add_argument("--fer-workers", type=int, default=1, help="FER worker processes of the started stack")
    p.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the started stack's model server batches requests (MOODTUNES_MODEL_SERVER_BATCHING)",
    )
    p.add_argument(
        "--flower",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the started stack runs Flower, which turns on the workers' task events (MOODTUNES_FLOWER; "
        "Kubernetes runs none)",
    )
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    photo = astronaut_jpeg()
    cpu_probe = None
    with contextlib.ExitStack() as cleanup:
        if args.url:
            url, model_server, database_url = args.url, args.model_server, args.database_url
            if not (model_server and database_url):
                p.error("--url needs --model-server and --database-url")
        else:
            from _stack import temp_stack

            print("starting a stack in a temporary directory ...", flush=True)
            env = {
                **LOAD_TEST_ENV,
                "MOODTUNES_MODEL_SERVER_BATCHING": str(args.batching).lower(),
                "MOODTUNES_FLOWER": str(args.flower).lower(),
            }
            stack = cleanup.enter_context(temp_stack(fer_workers=args.fer_workers, env=env))
            url, model_server, database_url = stack.url, stack.model_server, stack.database_url
            supervisor = stack.supervisor()
            cpu_probe = lambda: cpu_seconds(supervisor)  # noqa: E731
        report = run_all(url, model_server, database_url, photo, args.concurrency, cpu_probe)
        report["fer_workers"] = args.fer_workers if not args.url else None
        report["model_server_batching"] = args.batching if not args.url else None
        report["flower"] = args.flower if not args.url else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    chart(report, args.out.with_suffix(".png"))
    print(json.dumps({k: report[k] for k in ("throughput_ratio", "overhead_ms")} | {"out": str(args.out)}))


def run_all(url: str, model_server: str, database_url: str, photo: bytes, levels, cpu_probe=None) -> dict:
    print(f"floor ({FLOOR_JOBS} jobs, astronaut 512x512) ...", flush=True)
    floor_work = Floor(model_server, database_url)
    floor = measure_floor(floor_work, photo)
    print(f"  single thread: {floor['single_thread_ms']}")
    print(f"  jobs/s by threads: {floor['jobs_per_s_by_threads']}")
    print("bare model server (one face) ...", flush=True)
    bare = measure_model_server(model_server)
    print(f"  p50 {bare['p50_ms']} ms  p99 {bare['p99_ms']} ms")
    print("pipeline ...", flush=True)
    pipe = measure_pipeline(url, photo, levels, cpu_probe)
    single = next(r for r in pipe if r["concurrency"] == min(levels))
    top = next(r for r in pipe if r["concurrency"] == max(levels))
    threads, upload = floor["best_threads"], job_upload(url, photo)
    print(
        f"the ratio: {PAIRED_ROUNDS} rounds of the floor ({threads} threads) and the pipeline "
        f"(concurrency {top['concurrency']}), {PAIRED_JOBS} jobs each, in turn ...",
        flush=True,
    )
    with (
        FloorRuns(floor_work, photo, threads) as floor_runs,
        PipelineRuns(url, upload, top["concurrency"]) as pipeline_runs,
    ):
        paired = paired_ratio(floor_runs, pipeline_runs, cpu_probe=cpu_probe)
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "photo": "skimage astronaut 512x512 JPEG q92",
        "floor": floor,
        "model_server": bare,
        "pipeline": pipe,
        "paired": paired,
        "throughput_ratio": paired["ratio"],
        # the ratio as first measured (the sweep's best floor against the concurrency level, minutes
        # apart): kept to compare with the reports from before the paired rounds
        "sequential_ratio": round(top["jobs_per_s"] / floor["best_jobs_per_s"], 3),
        "overhead_ms": round(single["p50_ms"] - floor["single_thread_ms"]["total"], 1),
    }


if __name__ == "__main__":
    main()
