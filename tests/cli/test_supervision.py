"""The supervised local stack (`make up`), for real: started once for this module in a temporary var
dir on free ports with two FER workers, then every server and service has its main process killed
with SIGKILL and must be back (a new process, running) within 5 s, as a Kubernetes pod would be.
With it Flower, every process's metrics endpoint, and Prometheus scraping them when it is installed.

The measured restart times are printed (pytest -s) and kept in RESTARTS."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from moodtunes.config import REPO_ROOT
from moodtunes_cli.localstack import APP_ROLE, Postgres, free_port_run, free_ports, prometheus_binary
from moodtunes_cli.supervision import Supervisor

pytestmark = pytest.mark.integration

RESTART_LIMIT_S = 5.0
PORT_SETTINGS = ("GATEWAY_PORT", "MODEL_SERVER_PORT", "POSTGRES_PORT", "REDIS_PORT")
# Free ports for these too; each worker's is its first copy's, so FER_METRICS_PORT gets three in a row
OTHER_PORTS = (
    "MODEL_SERVER_METRICS_PORT",
    "RECONCILER_METRICS_PORT",
    "RECOMMENDER_METRICS_PORT",
    "FLOWER_PORT",
    "PROMETHEUS_PORT",
)
PROMETHEUS = prometheus_binary() is not None
RESTARTS: dict[str, dict] = {}


def moodtunes(var: Path, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """The `moodtunes` command in its own process, as `make` runs it, on this module's stack."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MOODTUNES_") and k not in ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL")
    }
    return subprocess.run(
        [sys.executable, "-m", "moodtunes_cli.cli", *args],
        env={**base, "MOODTUNES_VAR": str(var), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check, timeout_s: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:  # not there yet: connection refused, still starting
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:g}s")
        time.sleep(every)


@pytest.fixture(scope="module")
def stack(servers_root, catalogue_sample):
    if not any(p.name.isdigit() for p in (REPO_ROOT / "models" / "fer_vgg16").glob("*")):
        pytest.fail("no exported model under models/fer_vgg16/: run `moodtunes fer export`")
    var = servers_root / "supervised" / "var"  # outside pytest's 0700 root: see servers_root
    fer_metrics = free_port_run(3)
    names = (*PORT_SETTINGS, *OTHER_PORTS)
    ports = free_ports(len(names), avoid=range(fer_metrics, fer_metrics + 3))
    env = {f"MOODTUNES_{name}": str(port) for name, port in zip(names, ports, strict=True)}
    env["MOODTUNES_FER_METRICS_PORT"] = str(fer_metrics)
    env.update(MOODTUNES_FER_WORKERS="2", CATALOGUE_PATH=str(catalogue_sample))
    t0 = time.monotonic()
    run = moodtunes(var, "stack", "up", **env)
    print(f"\nstack up: {time.monotonic() - t0:.1f}s\n{run.stdout}")
    sup = Supervisor(var)
    try:
        assert run.returncode == 0, f"stack up failed:\n{run.stdout}\n{run.stderr}"
        ports = {name: int(value) for name, value in env.items() if name.endswith("_PORT")}
        yield {"var": var, "env": env, "up": run, "sup": sup, "ports": ports}
    finally:
        moodtunes(var, "stack", "down", timeout=300)
        if RESTARTS:
            print("\nrestart after SIGKILL (s): " + json.dumps(RESTARTS, indent=1))


def gone(pid: int) -> bool:
    """Exited (a zombie not yet reaped by whoever adopted it counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return kids


def info(sup: Supervisor, name: str) -> dict:
    return next(p for p in sup.processes() if p["name"] == name)


def test_up_prints_what_it_supervises(stack):
    out = stack["up"].stdout
    assert "moodtunes is up in" in out and "make down" in out
    table = out[out.index("PROGRAM") :].splitlines()
    shown = {line.split()[0]: line.split() for line in table[1:] if line.strip()[:1].isalpha()}
    for name, p in ((p["name"], p) for p in stack["sup"].processes()):
        assert shown[name][1] == "RUNNING" and shown[name][2] == str(p["pid"]), f"{name}: {shown.get(name)}"
    assert shown["gateway"][4] == str(stack["ports"]["MOODTUNES_GATEWAY_PORT"])
    assert shown["postgres"][4] == str(stack["ports"]["MOODTUNES_POSTGRES_PORT"])


def test_status_shows_the_supervisors_view(stack):
    run = moodtunes(stack["var"], "stack", "status")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    table = lines[2 : next(i for i, line in enumerate(lines) if line.startswith("prometheus:"))]
    rows = {line.split()[0]: line.split() for line in table}
    expected = {"postgres", "redis", "model-server", "fer-worker-1", "fer-worker-2", "recommender", "gateway"}
    expected |= {"reconciler", "flower"} | ({"prometheus"} if PROMETHEUS else set())
    assert set(rows) == expected
    for name in expected:
        assert rows[name][1] == "RUNNING" and int(rows[name][2]) == info(stack["sup"], name)["pid"]
    assert list(rows)[:3] == ["postgres", "redis", "model-server"]  # start order, not alphabetical


def test_services_get_the_application_role_only(stack):
    """The services' environment names the application role; the owner's password stays with `up`."""
    conf = (stack["var"] / "supervisord.conf").read_text()
    assert oct((stack["var"] / "supervisord.conf").stat().st_mode & 0o777) == "0o600"
    pg = Postgres(stack["var"] / "postgres", stack["ports"]["MOODTUNES_POSTGRES_PORT"])
    assert f'DATABASE_URL="postgresql://{APP_ROLE}:' in conf
    assert pg.password("moodtunes") not in conf and "DATABASE_OWNER_URL" not in conf
    for secret in (pg.secrets / "moodtunes.password", pg.secrets / f"{APP_ROLE}.password"):
        assert oct(secret.stat().st_mode & 0o777) == "0o600"
    gateway_env = (Path("/proc") / str(info(stack["sup"], "gateway")["pid"]) / "environ").read_bytes()
    assert b"DATABASE_OWNER_URL" not in gateway_env and pg.app_url.encode() in gateway_env


def test_stack_env_gives_both_roles(stack):
    """`eval "$(moodtunes stack env)"`: DATABASE_URL logs in as the application role, the owner's URL as
    the owner, so commands run beside the stack reach its password-only PostgreSQL."""
    run = moodtunes(stack["var"], "stack", "env", **{k: v for k, v in stack["env"].items() if "PORT" in k})
    assert run.returncode == 0, run.stderr
    env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in run.stdout.splitlines())
    assert set(env) == {"DATABASE_URL", "DATABASE_OWNER_URL"}
    for key, role in (("DATABASE_URL", APP_ROLE), ("DATABASE_OWNER_URL", "moodtunes")):
        with psycopg.connect(env[key], connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == role


def test_two_fer_workers_both_consume(stack):
    """MOODTUNES_FER_WORKERS=2: two processes, two Celery nodes, each consuming the `fer` queue."""
    from celery import Celery

    fer = [p for p in stack["sup"].processes() if p["group"] == "fer-worker"]
    assert len(fer) == 2 and len({p["pid"] for p in fer}) == 2
    assert all(p["statename"] == "RUNNING" for p in fer)
    redis_url = f"redis://127.0.0.1:{stack['ports']['MOODTUNES_REDIS_PORT']}/0"
    app = Celery(broker=redis_url)
    try:
        queues = wait_until(
            lambda: (
                {
                    node: {q["name"] for q in qs}
                    for node, qs in (app.control.inspect(timeout=2).active_queues() or {}).items()
                    if node.startswith("fer-")
                }
                or None
            ),
            60,
            "FER workers answering",
        )
    finally:
        app.close()
    host = socket.gethostname()
    assert queues == {f"fer-1@{host}": {"fer"}, f"fer-2@{host}": {"fer"}}


def test_every_process_serves_metrics_and_prometheus_scrapes_them(stack):
    """Each FER copy on its own port, the other workers, the reconciler, the model server (at TF
    Serving's path) and the gateway; Flower answers; Prometheus (when installed) has every one of
    them up as a target of its job and the alert rules loaded."""
    ports = stack["ports"]
    fer = ports["MOODTUNES_FER_METRICS_PORT"]
    endpoints = {
        ("fer-worker", fer): "/metrics",
        ("fer-worker", fer + 1): "/metrics",
        ("recommender", ports["MOODTUNES_RECOMMENDER_METRICS_PORT"]): "/metrics",
        ("reconciler", ports["MOODTUNES_RECONCILER_METRICS_PORT"]): "/metrics",
        ("model-server", ports["MOODTUNES_MODEL_SERVER_METRICS_PORT"]): "/monitoring/prometheus/metrics",
        ("gateway", ports["MOODTUNES_GATEWAY_PORT"]): "/metrics",
    }
    for (job, port), path in endpoints.items():
        url = f"http://127.0.0.1:{port}{path}"
        wait_until(
            lambda url=url: httpx.get(url, timeout=5).status_code == 200, 60, f"{job} {url}", every=0.5
        )
    flower = f"http://127.0.0.1:{ports['MOODTUNES_FLOWER_PORT']}"
    assert f"flower: {flower}" in stack["up"].stdout
    wait_until(lambda: httpx.get(f"{flower}/healthcheck", timeout=5).text == "OK", 60, "flower", every=0.5)
    if not PROMETHEUS:
        assert "prometheus: not installed" in stack["up"].stdout
        return
    api = f"http://127.0.0.1:{ports['MOODTUNES_PROMETHEUS_PORT']}"
    assert f"prometheus: {api}" in stack["up"].stdout
    expected = sorted((job, f"127.0.0.1:{port}") for job, port in endpoints)

    def all_up():
        targets = httpx.get(f"{api}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        seen = sorted((t["labels"]["job"], t["labels"]["instance"]) for t in targets)
        return seen == expected and all(t["health"] == "up" for t in targets)

    wait_until(all_up, 60, "every target up in Prometheus (scrapes every 15 s)", every=1)
    groups = httpx.get(f"{api}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert [g["file"] for g in groups] == [str(REPO_ROOT / "deploy" / "prometheus" / "alerts.yml")]
    assert {r["name"] for g in groups for r in g["rules"]} >= {"QueueBacklog", "ModelServerDown", "StuckJobs"}


def _serves(name: str, stack: dict):
    """A check that NAME answers again (None: no port of its own to ask)."""
    ports = stack["ports"]
    if name == "postgres":
        pg = Postgres(stack["var"] / "postgres", ports["MOODTUNES_POSTGRES_PORT"])
        return lambda: psycopg.connect(pg.app_url, connect_timeout=2).close() or True
    if name == "redis":
        return lambda: __import__("redis").Redis(port=ports["MOODTUNES_REDIS_PORT"]).ping()
    if name == "gateway":
        return lambda: httpx.get(f"http://127.0.0.1:{ports['MOODTUNES_GATEWAY_PORT']}/healthz").is_success
    if name == "model-server":
        return lambda: listening(ports["MOODTUNES_MODEL_SERVER_PORT"])
    return None


@pytest.mark.parametrize(
    "name", ["fer-worker-1", "recommender", "reconciler", "gateway", "model-server", "redis", "postgres"]
)
def test_a_killed_program_is_back_within_5s(stack, name):
    """SIGKILL to the main process: a new process of that program is RUNNING (up for supervisord's
    startsecs, 1 s) within 5 s, and a worker's pool children, orphaned, do not linger."""
    sup = stack["sup"]
    old = info(sup, name)
    assert old["statename"] == "RUNNING"
    orphans = children(old["pid"]) if name in ("fer-worker-1", "recommender") else set()
    os.kill(old["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    spawned = wait_until(
        lambda: info(sup, name)["pid"] not in (0, old["pid"]) and time.monotonic() - t0, 10, name
    )
    new = wait_until(
        lambda: (p := info(sup, name))["statename"] == "RUNNING" and p["pid"] != old["pid"] and p,
        10,
        f"{name} RUNNING again",
    )
    running = time.monotonic() - t0
    RESTARTS[name] = {"new_pid_s": round(spawned, 2), "running_s": round(running, 2)}
    assert running < RESTART_LIMIT_S, f"{name} took {running:.1f}s"
    assert new["pid"] != old["pid"]
    wait_until(lambda: all(gone(pid) for pid in orphans), 30, f"{name}'s pool processes exiting")
    serves = _serves(name, stack)
    if serves:  # and it does its job again (a model server reloads the model first: slower)
        wait_until(serves, 180, f"{name} serving")
        RESTARTS[name]["serving_s"] = round(time.monotonic() - t0, 2)


def test_the_stack_is_ready_again_after_the_crashes(stack, face_jpeg):
    """After every kill above, a photo still goes through FER and the recommender to a playlist."""
    base = f"http://127.0.0.1:{stack['ports']['MOODTUNES_GATEWAY_PORT']}"
    wait_until(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 180, "readyz", every=0.5)
    with httpx.Client(base_url=base, timeout=30) as client:
        # as a client would: a 503 right after PostgreSQL's restart is retried after Retry-After
        for _ in range(5):
            r = client.post("/v1/jobs", files={"image": ("face.jpg", face_jpeg)}, data={"mode": "match"})
            if r.status_code != 503:
                break
            time.sleep(float(r.headers["Retry-After"]))
        assert r.status_code == 202, r.text
        url = r.json()["status_url"]
        job = wait_until(
            lambda: (j := client.get(url).json())["status"] in ("done", "failed") and j, 180, "job", every=0.5
        )
    assert job["status"] == "done", job
    assert job["recommendation"]["tracks"]


def test_a_second_up_scales_without_touching_the_rest(stack):
    """`make up FER_WORKERS=3` on a running stack: the FER workers become three, every other program
    keeps its process."""
    sup = stack["sup"]
    before = {p["name"]: p["pid"] for p in sup.processes() if p["group"] != "fer-worker"}
    run = moodtunes(stack["var"], "stack", "up", **{**stack["env"], "MOODTUNES_FER_WORKERS": "3"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "moodtunes is up" in run.stdout
    after = {p["name"]: p for p in sup.processes()}
    assert {n for n in after if n.startswith("fer-worker")} == {f"fer-worker-{i}" for i in (1, 2, 3)}
    assert {n: p["pid"] for n, p in after.items() if p["group"] != "fer-worker"} == before
    if PROMETHEUS:  # reloaded (SIGHUP) with the third copy's target
        api = f"http://127.0.0.1:{stack['ports']['MOODTUNES_PROMETHEUS_PORT']}/api/v1/targets"
        fer = stack["ports"]["MOODTUNES_FER_METRICS_PORT"]

        def fer_targets():
            targets = httpx.get(api, timeout=5).json()["data"]["activeTargets"]
            return sorted(t["labels"]["instance"] for t in targets if t["labels"]["job"] == "fer-worker")

        wanted = [f"127.0.0.1:{fer + i}" for i in range(3)]
        wait_until(lambda: fer_targets() == wanted, 30, "three fer-worker targets", every=0.5)


def test_down_stops_everything(stack):
    sup = stack["sup"]
    pids = [p["pid"] for p in sup.processes()] + [sup.pid()]
    run = moodtunes(stack["var"], "stack", "down", timeout=300)
    assert run.returncode == 0 and "moodtunes stopped" in run.stdout
    for pid in pids:
        assert gone(pid), f"pid {pid} still runs"
    assert not any(listening(p) for p in stack["ports"].values())
    status = moodtunes(stack["var"], "stack", "status")
    assert status.returncode == 3 and "not running" in status.stdout
