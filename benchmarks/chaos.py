"""Chaos: jobs submitted while each component of a real local stack is SIGKILLed in turn.

    .venv/bin/python benchmarks/chaos.py [--jobs 200] [--faults fer-worker recommender redis ...]

Starts its own supervised stack (benchmarks/_stack.py: `make up`'s code in a temp dir, loopback
only). For each fault: JOBS jobs are submitted at a steady pace by CLIENTS listeners; KILL_AFTER_S
into the run the component's main process gets SIGKILL; supervisord restarts it (the benchmark
only waits for it to serve again); then every job is polled until it is final or DRAIN_LIMIT_S has
passed since the component came back. A POST answered 503/429 is retried after its Retry-After, as
a polite client would. Prints per fault: done / failed (by code) / lost, restart time and the time
from "back" to the last job finished; writes reports/bench_chaos.json; last line: JSON totals.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
from pipeline import LOAD_TEST_ENV, astronaut_jpeg

OUT = Path("reports/bench_chaos.json")
JOBS = 200
CLIENTS = 8
SUBMIT_RATE = 10.0  # jobs/s over all clients: about what this 2-core machine finishes
KILL_AFTER_S = 4.0
DRAIN_LIMIT_S = 120.0  # after the component is back; a job still unfinished then counts as lost
POST_RETRY_LIMIT_S = 90.0
# fault name -> supervisord program and the port that says it serves again (None: a worker)
FAULTS = {
    "fer-worker": ("fer-worker", None),
    "recommender": ("recommender", None),
    "redis": ("redis", "redis"),
    "model-server": ("model-server", "model_server"),
    "postgres": ("postgres", "postgres"),
}


def listening(host_port: str) -> bool:
    host, port = host_port.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, int(port))) == 0


def main_pid(sup, program: str) -> int:
    procs = [p for p in sup.processes() if p["group"] == program and p["statename"] == "RUNNING"]
    if not procs:
        raise RuntimeError(f"{program} is not running")
    return procs[0]["pid"]


def kill_and_wait_back(stack, program: str, port_of: str | None) -> dict:
    """SIGKILLs the program's main process; returns when supervisord has a new one RUNNING (and,
    for a server, its port accepts connections again)."""
    sup = stack.supervisor()
    pid = main_pid(sup, program)
    address = {
        "redis": stack.redis_url.split("//")[1].split("/")[0],
        "model_server": stack.model_server,
        "postgres": stack.database_url.split("@")[1].split("/")[0],
    }.get(port_of)
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            new = main_pid(sup, program)
        except (RuntimeError, OSError):
            new = None
        if new and new != pid and (address is None or listening(address)):
            break
        if time.monotonic() - t_kill > 120:
            raise RuntimeError(f"{program} did not come back within 120 s")
        time.sleep(0.05)
    return {
        "killed_pid": pid,
        "new_pid": new,
        "restart_s": round(time.monotonic() - t_kill, 2),
        "t_back": time.time(),
    }


def submit(client: httpx.Client, url: str, photo: bytes, errors: collections.Counter) -> str | None:
    """POSTs one job, retrying refusals (503/429) and dropped connections after Retry-After."""
    deadline = time.monotonic() + POST_RETRY_LIMIT_S
    while time.monotonic() < deadline:
        try:
            r = client.post(f"{url}/v1/jobs", files={"image": ("face.jpg", photo, "image/jpeg")})
        except httpx.HTTPError as exc:
            errors[f"post:{type(exc).__name__}"] += 1
            time.sleep(0.5)
            continue
        if r.status_code == 202:
            return r.json()["id"]
        code = (
            r.json().get("error", {}).get("code")
            if r.headers.get("content-type", "").startswith("application/json")
            else None
        )
        errors[f"post:{r.status_code}:{code}"] += 1
        if r.status_code not in (429, 503):
            return None
        time.sleep(min(5.0, float(r.headers.get("Retry-After", "1"))))
    return None


def poll(client: httpx.Client, url: str, job_id: str, until: float) -> dict | None:
    while time.time() < until:
        try:
            r = client.get(f"{url}/v1/jobs/{job_id}")
            if r.status_code == 200 and r.json()["status"] in ("done", "failed"):
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return None


def run_fault(stack, name: str, photo: bytes, jobs: int) -> dict:
    program, port_of = FAULTS[name]
    clients = [httpx.Client(timeout=10) for _ in range(CLIENTS)]
    post_errors: collections.Counter = collections.Counter()
    ids: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def submitter(k: int) -> None:
        for i in range(k, jobs, CLIENTS):
            wait = t0 + i / SUBMIT_RATE - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            job_id = submit(clients[k], stack.url, photo, post_errors)
            with lock:
                ids.append((k, job_id))

    with ThreadPoolExecutor(CLIENTS + 1) as pool:
        futures = [pool.submit(submitter, k) for k in range(CLIENTS)]
        time.sleep(KILL_AFTER_S)
        fault = kill_and_wait_back(stack, program, port_of)
        for f in futures:
            f.result()
    until = fault["t_back"] + DRAIN_LIMIT_S
    with ThreadPoolExecutor(16) as pool:
        finals = list(
            pool.map(lambda kj: poll(clients[kj[0]], stack.url, kj[1], until) if kj[1] else None, ids)
        )
    for c in clients:
        c.close()
    done = [j for j in finals if j and j["status"] == "done"]
    failed = collections.Counter(j["error"]["code"] for j in finals if j and j["status"] == "failed")
    lost = sum(1 for (_, job_id), j in zip(ids, finals, strict=True) if job_id is None or j is None)
    finished = [datetime.fromisoformat(j["finished_at"]).timestamp() for j in finals if j]
    last = max(finished) if finished else fault["t_back"]
    result = {
        "fault": name,
        "program": program,
        "jobs": jobs,
        "accepted": sum(1 for _, j in ids if j),
        "done": len(done),
        "failed": dict(failed),
        "lost": lost,
        "post_refusals": dict(post_errors),
        "restart_s": fault["restart_s"],
        "drain_s_after_back": round(last - fault["t_back"], 1),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(
        f"{name:>13}: done {len(done):>3}  failed {sum(failed.values()):>3} {dict(failed) or ''}"
        f"  lost {lost:>3}"
        f"  back after {fault['restart_s']:5.2f} s  drained {result['drain_s_after_back']:5.1f} s later"
        f"  (POST refusals {dict(post_errors) or 0})",
        flush=True,
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=JOBS)
    p.add_argument("--faults", nargs="+", default=list(FAULTS), choices=list(FAULTS))
    p.add_argument("--fer-workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    from _stack import temp_stack

    photo = astronaut_jpeg()
    print("starting a supervised stack in a temporary directory ...", flush=True)
    with temp_stack(fer_workers=args.fer_workers, env=LOAD_TEST_ENV) as stack:
        results = [run_fault(stack, name, photo, args.jobs) for name in args.faults]
    totals = {
        "jobs": sum(r["jobs"] for r in results),
        "done": sum(r["done"] for r in results),
        "failed": sum(sum(r["failed"].values()) for r in results),
        "lost": sum(r["lost"] for r in results),
        "max_drain_s_after_back": max(r["drain_s_after_back"] for r in results),
        "faults": len(results),
    }
    report = {
        "machine": {"cpus": os.cpu_count()},
        "settings": {
            "jobs": args.jobs,
            "clients": CLIENTS,
            "submit_rate": SUBMIT_RATE,
            "kill_after_s": KILL_AFTER_S,
        },
        "faults": results,
        "totals": totals,
        "targets": {"lost": 0, "failed": 0, "drain_s_after_back_max": 30},
        "met": totals["lost"] == 0 and totals["failed"] == 0 and totals["max_drain_s_after_back"] <= 30,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(totals | {"met": report["met"]}))


if __name__ == "__main__":
    main()
