"""Does the gateway stall? A real uvicorn gateway (a process, as deployed) on the suite's kind of
servers (embedded PostgreSQL and Redis from moodtunes_cli.localstack, in a temporary folder):

  1. idle: /healthz latency with nothing else going on (the floor on this machine), in windows
     alternating with those of step 2 (--rounds), so both see the same background load;
  2. uploads: /healthz latency while --uploads clients each send photos of ~--upload-mb MB (valid
     JPEGs under the upload limit, so each one is parsed, decoded, stored and enqueued), back to
     back for --seconds; target: p99 <= 50 ms;
  3. oversized: /healthz latency while as many clients each stream a 200 MB body with no
     Content-Length (chunked), plus one that declares 200 MB; reported: how each ended (413 or the
     connection cut), how fast, and the largest temp file the gateway ever held (target: about the
     upload limit, never 200 MB);
  4. PostgreSQL stopped: POST /v1/jobs and GET /v1/jobs/{id} latency and answers (target: 503
     database_unavailable + Retry-After within 1 s), then how soon jobs are accepted again after
     PostgreSQL is back;
  5. Redis stopped: POST latency and answer (503 queue_unavailable), then back.

    python benchmarks/gateway_stall.py [--uploads 8] [--upload-mb 8] [--seconds 10]

Prints the figures, writes reports/bench_gateway_stall.json; the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench_gateway_stall.json"
MB = 1 << 20
PROBE_INTERVAL_S = 0.02


def log(*args) -> None:
    print(*args, flush=True)


def big_jpeg(target_bytes: int) -> bytes:
    """A valid JPEG of about target_bytes (noisy, so it compresses little), under the limit."""
    rng = np.random.default_rng(0)
    side = 1500
    while True:
        pixels = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=85)
        if buf.tell() >= target_bytes * 0.9 or side > 6000:
            break
        side = int(side * (target_bytes / buf.tell()) ** 0.5 * 1.02)
    data = buf.getvalue()
    return data


def face_jpeg() -> bytes:
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def latency_text(name: str, stats: dict) -> str:
    return f"{name:<10} /healthz p50 {stats['p50_ms']} ms  p99 {stats['p99_ms']} ms  max {stats['max_ms']} ms"


def percentiles(samples_ms: list[float]) -> dict:
    if not samples_ms:
        return {"n": 0}
    a = np.asarray(samples_ms)
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p90_ms": round(float(np.percentile(a, 90)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def probe(url: str, ready, start, stop, results) -> None:
    """GET /healthz every PROBE_INTERVAL_S on one keep-alive connection, from `start` to `stop`;
    puts (latencies in ms, errors) on `results`."""
    ms, errors = [], 0
    with httpx.Client(base_url=url, timeout=10) as client:
        client.get("/healthz")  # connect before measuring
        ready.set()
        start.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                ms.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1
            stop.wait(PROBE_INTERVAL_S)
    results.put((ms, errors))


class HealthProbe:
    """The probe in a process of its own: the load's client threads in this process must not
    delay it (they share this process's GIL), only the gateway may."""

    def __init__(self, url: str):
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.start_, self.stop_, self.results = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
        self.process = ctx.Process(
            target=probe, args=(url, self.ready, self.start_, self.stop_, self.results)
        )
        self.process.start()

    def measure(self) -> None:
        if not self.ready.wait(180):
            raise RuntimeError("the probe process did not start")
        self.start_.set()

    def finish(self) -> tuple[list[float], int]:
        self.stop_.set()
        out = self.results.get(timeout=60)
        self.process.join(30)
        return out


class TempWatch(threading.Thread):
    """The largest single temp file, and the most temp bytes together, the gateway process held
    open under its TMPDIR. Read through /proc/<pid>/fd: the spooled uploads are anonymous
    (O_TMPFILE or unlinked), so a directory listing never shows them."""

    def __init__(self, pid: int, folder: Path):
        super().__init__(daemon=True)
        self.fds, self.folder = Path(f"/proc/{pid}/fd"), str(folder)
        self.stop, self.largest, self.total = threading.Event(), 0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            sizes = []
            for fd in self.fds.iterdir():
                try:
                    if os.readlink(fd).startswith(self.folder):
                        sizes.append(fd.stat().st_size)
                except OSError:  # closed meanwhile
                    pass
            self.largest = max(self.largest, max(sizes, default=0))
            self.total = max(self.total, sum(sizes))
            self.stop.wait(0.005)


def measure_under(url: str, load, seconds: float | None = None) -> tuple[dict, object]:
    """/healthz latency while `load(stop_event)` runs (for `seconds`, or until it returns)."""
    prober, stop = HealthProbe(url), threading.Event()
    prober.measure()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(value=load(stop)))
    worker.start()
    if seconds is not None:
        time.sleep(seconds)
        stop.set()
    worker.join()
    ms, errors = prober.finish()
    return {**percentiles(ms), "probe_errors": errors, "samples_ms": ms}, result.get("value")


def upload_load(url: str, photo: bytes, clients: int):
    def load(stop: threading.Event) -> dict:
        outcomes: list[tuple[int, float]] = []
        lock = threading.Lock()

        def one_client() -> None:
            with httpx.Client(base_url=url, timeout=120) as client:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    r = client.post("/v1/jobs", files={"image": ("big.jpg", photo, "image/jpeg")})
                    with lock:
                        outcomes.append((r.status_code, time.perf_counter() - t0))

        threads = [threading.Thread(target=one_client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses: dict[str, int] = {}
        for status, _ in outcomes:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        times = [s for _, s in outcomes]
        return {
            "requests": len(outcomes),
            "statuses": statuses,
            "upload_s_median": round(statistics.median(times), 3) if times else None,
            "upload_s_max": round(max(times), 3) if times else None,
        }

    return load


def chunked_200mb(sent: list[int]):
    head = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="huge.jpg"\r\n\r\n'
    yield head
    sent.append(len(head))
    chunk = b"\xff" * MB
    for _ in range(200):
        yield chunk
        sent.append(MB)


def oversize_load(url: str, clients: int, port: int):
    def one_streaming() -> dict:
        sent: list[int] = []
        t0 = time.perf_counter()
        try:
            r = httpx.post(
                f"{url}/v1/jobs",
                content=chunked_200mb(sent),
                headers={"Content-Type": "multipart/form-data; boundary=xyz"},
                timeout=120,
            )
            ended = f"{r.status_code} {r.json()['error']['code']}"
        except httpx.HTTPError as exc:  # the gateway answered 413 and closed while we were sending
            ended = f"cut off ({type(exc).__name__})"
        return {"ended": ended, "seconds": time.perf_counter() - t0, "sent_mb": sum(sent) / MB}

    def one_declared() -> dict:
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                b"Content-Length: 209715200\r\n\r\n"
            )
            status = s.recv(65536).split(b"\r\n", 1)[0].decode()
        return {"ended": status, "seconds": time.perf_counter() - t0, "sent_mb": 0}

    def load(stop: threading.Event) -> list[dict]:
        results: list[dict] = []
        lock = threading.Lock()

        def run(fn) -> None:
            out = fn()
            with lock:
                results.append(out)

        threads = [threading.Thread(target=run, args=(one_streaming,)) for _ in range(clients)]
        threads.append(threading.Thread(target=run, args=(one_declared,)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    return load


def timed_requests(url: str, photo: bytes, n: int, accepted: httpx.Response | None) -> list[dict]:
    """n POSTs, and with `accepted` (a 202) n polls of that job by its owner (its cookie)."""
    out = []
    job_id = accepted.json()["id"] if accepted is not None else None
    with httpx.Client(base_url=url, timeout=30, cookies=accepted.cookies if accepted else None) as client:
        for _ in range(n):
            for method in ("POST", "GET") if job_id else ("POST",):
                t0 = time.perf_counter()
                if method == "POST":
                    r = client.post("/v1/jobs", files={"image": ("face.jpg", photo, "image/jpeg")})
                else:
                    r = client.get(f"/v1/jobs/{job_id}")
                seconds = time.perf_counter() - t0
                try:
                    code = r.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = None
                out.append(
                    {
                        "method": method,
                        "status": r.status_code,
                        "code": code,
                        "retry_after": r.headers.get("Retry-After"),
                        "seconds": seconds,
                    }
                )
    return out


def summarize(requests: list[dict]) -> dict:
    by_method: dict = {}
    for method in sorted({r["method"] for r in requests}):
        rs = [r for r in requests if r["method"] == method]
        secs = [r["seconds"] for r in rs]
        by_method[method] = {
            "n": len(rs),
            "answers": sorted({f"{r['status']} {r['code']} Retry-After={r['retry_after']}" for r in rs}),
            "median_s": round(statistics.median(secs), 3),
            "max_s": round(max(secs), 3),
        }
    return by_method


def until_accepted(url: str, photo: bytes, timeout_s: float = 60) -> float | None:
    """Seconds until a POST is accepted again (a fresh client each try)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        try:
            r = httpx.post(f"{url}/v1/jobs", files={"image": ("face.jpg", photo, "image/jpeg")}, timeout=10)
            if r.status_code == 202:
                return round(time.perf_counter() - t0, 2)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=8, help="concurrent upload clients")
    parser.add_argument("--upload-mb", type=float, default=8.0, help="size of each valid photo")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each upload window")
    parser.add_argument("--rounds", type=int, default=3, help="idle + upload windows, alternating")
    parser.add_argument("--down-requests", type=int, default=10, help="requests while a server is down")
    parser.add_argument("--skip-outages", action="store_true", help="skip steps 4 and 5")
    parser.add_argument(
        "--gateway-src",
        type=Path,
        help="run the moodtunes_gateway package found in this folder instead (e.g. an older one, "
        "from `git archive HEAD services/gateway | tar -x -C DIR`, then DIR/services/gateway)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from moodtunes_cli.localstack import Postgres, Redis, free_ports, wait_for_port

    work = Path(tempfile.mkdtemp(prefix="gateway_stall_"))
    postgres_port, redis_port, port = free_ports(3)  # the last for the gateway
    pg, redis = Postgres(work / "postgres", postgres_port), Redis(work / "redis", redis_port)
    gateway = None
    try:
        log(f"starting PostgreSQL and Redis under {work} ...")
        pg.start()
        redis.start()
        os.environ.update(DATABASE_URL=pg.app_url, REDIS_URL=redis.url)
        from moodtunes import migrations
        from moodtunes.config import Settings, get_settings

        get_settings.cache_clear()
        migrations.upgrade(pg.owner_url, app_url=pg.app_url)
        limit = Settings().max_upload_bytes
        tmp = work / "gateway-tmp"
        tmp.mkdir()
        env = {
            **os.environ,
            "DATABASE_URL": pg.app_url,
            "REDIS_URL": redis.url,
            "SESSION_SECRET": "benchmark-only-secret",
            "RATE_LIMIT_JOBS": "",  # measure the gateway, not its limits
            "MAX_UNFINISHED_JOBS_PER_CLIENT": "0",
            "FER_QUEUE_MAX_DEPTH": "1000000",  # checked on every job, never reached (no workers here)
            "TMPDIR": str(tmp),  # where the multipart parser spools uploads
            "PYTHONUNBUFFERED": "1",
            **({"PYTHONPATH": str(args.gateway_src.resolve())} if args.gateway_src else {}),
        }
        gateway_log = open(work / "gateway.log", "wb")
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "moodtunes_gateway.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=gateway_log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_for_port(port, timeout_s=60)
        url = f"http://127.0.0.1:{port}"
        photo, face = big_jpeg(int(args.upload_mb * MB)), face_jpeg()
        assert len(photo) <= limit, "the benchmark photo must be under the upload limit"
        log(
            f"gateway (uvicorn, 1 process) on {url}; "
            f"photo {len(photo) / MB:.1f} MB, limit {limit / MB:.0f} MB"
        )
        warm = httpx.post(f"{url}/v1/jobs", files={"image": ("face.jpg", face, "image/jpeg")}, timeout=60)
        assert warm.status_code == 202, warm.text

        # Idle and loaded windows alternate, so both see the same background load of this machine
        rounds = []
        for n in range(1, args.rounds + 1):
            idle, _ = measure_under(url, lambda stop: stop.wait(), seconds=3)
            uploads, done = measure_under(url, upload_load(url, photo, args.uploads), seconds=args.seconds)
            log(f"round {n}:")
            log(latency_text("  idle", idle))
            log(
                latency_text("  uploads", uploads)
                + f"  ({args.uploads} clients: {done['requests']} photos {done['statuses']}, "
                f"median {done['upload_s_median']} s each)"
            )
            rounds.append({"idle": idle, "uploads": uploads, "uploads_done": done})
        idle = {**percentiles([ms for r in rounds for ms in r["idle"]["samples_ms"]])}
        uploads = {**percentiles([ms for r in rounds for ms in r["uploads"]["samples_ms"]])}
        for r in rounds:
            for window in ("idle", "uploads"):
                del r[window]["samples_ms"]
        log(latency_text("idle", idle) + "  (all rounds)")
        log(latency_text("uploads", uploads) + "  (all rounds)")

        watch = TempWatch(gateway.pid, tmp)
        watch.start()
        oversize, ends = measure_under(url, oversize_load(url, args.uploads, port))
        del oversize["samples_ms"]
        watch.stop.set()
        watch.join()
        for e in ends:
            e["seconds"] = round(e["seconds"], 3)
            e["sent_mb"] = round(e["sent_mb"], 1)
        log(
            latency_text("oversized", oversize) + f"  (ends: {sorted({e['ended'] for e in ends})}; "
            f"slowest {max(e['seconds'] for e in ends)} s; most sent {max(e['sent_mb'] for e in ends)} MB; "
            f"largest temp file {watch.largest / MB:.1f} MB)"
        )

        pg_summary = redis_down = pg_back = redis_back = None
        if not args.skip_outages:
            log("stopping PostgreSQL ...")
            pg.stop()
            # as the owner of the warm-up job: its POSTs and its polls of that job
            pg_summary = summarize(timed_requests(url, face, args.down_requests, warm))
            log(f"PostgreSQL down: {json.dumps(pg_summary)}")
            pg.start()
            pg_back = until_accepted(url, face)
            log(f"PostgreSQL back: jobs accepted again after {pg_back} s")

            log("stopping Redis ...")
            redis.stop()
            redis_down = summarize(timed_requests(url, face, args.down_requests, None))
            log(f"Redis down: {json.dumps(redis_down)}")
            redis.start()
            redis_back = until_accepted(url, face)
            log(f"Redis back: jobs accepted again after {redis_back} s")
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        redis.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    load1, load5, _ = os.getloadavg()
    result = {
        "what": "gateway responsiveness under large uploads, oversized bodies and backing-service outages",
        "gateway": "uvicorn moodtunes_gateway.main:app, one process, default thread pool",
        "gateway_src": str(args.gateway_src) if args.gateway_src else "this working tree",
        "uploads": {
            "clients": args.uploads,
            "photo_mb": round(len(photo) / MB, 2),
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
        },
        "healthz_idle": idle,
        "healthz_during_uploads": uploads,
        "rounds": rounds,
        "healthz_during_oversized": oversize,
        "oversized_ends": ends,
        "largest_temp_file_mb": round(watch.largest / MB, 2),
        "most_temp_bytes_together_mb": round(watch.total / MB, 2),
        "upload_limit_mb": round(limit / MB, 2),
        "postgres_down": pg_summary,
        "postgres_back_after_s": pg_back,
        "redis_down": redis_down,
        "redis_back_after_s": redis_back,
        "targets": {
            "healthz_p99_under_uploads_ms": 50,
            "post_503_with_postgres_down_s": 1.0,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1_5_min_at_end": [round(load1, 2), round(load5, 2)],
            "python": platform.python_version(),
            "note": "shared machine: other processes (a training run) compete for the CPUs",
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"written {args.out}")
    summary = {
        "healthz_p99_ms_idle": idle["p99_ms"],
        "healthz_p99_ms_under_uploads": uploads["p99_ms"],
        "healthz_p99_ms_under_oversized": oversize["p99_ms"],
        "largest_temp_file_mb": result["largest_temp_file_mb"],
        "post_503_s_max_postgres_down": pg_summary["POST"]["max_s"] if pg_summary else None,
        "post_503_s_max_redis_down": redis_down["POST"]["max_s"] if redis_down else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
