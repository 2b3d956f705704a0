"""What `make up` adds to watch the stack: a metrics port for every process (each copy of a worker its
own), a Prometheus config generated from deploy/prometheus/prometheus.yml's jobs with one target per
process, Prometheus itself when installed (run here for real against stand-in metrics servers), and
Flower on the broker. The whole supervised stack with them: test_supervision.py."""

from __future__ import annotations

import http.server
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from moodtunes.config import REPO_ROOT
from moodtunes_cli import localstack
from moodtunes_cli.localstack import (
    HOST,
    Process,
    free_port,
    free_port_run,
    free_ports,
    prometheus_config,
    service_processes,
)
from moodtunes_cli.supervision import program_section

ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
JOBS = ["gateway", "fer-worker", "recommender", "reconciler", "model-server"]
METRICS = {"model-server": 18501, "fer-worker": 19150, "recommender": 19110, "reconciler": 19101}


def processes(**kw) -> list[Process]:
    return service_processes(Path("/nonexistent"), {}, gateway_port=18000, metrics_ports=METRICS, **kw)


def run_copy(p: Process, n: int) -> str:
    """What supervisord runs for copy N of P: the section's command and environment, expanded as
    supervisord expands them."""
    section = dict(
        line.split("=", 1) for line in program_section(p, Path("/tmp")).splitlines() if "=" in line
    )

    def expand(value: str) -> str:
        return value.replace("%(process_num)d", str(n)).replace("%%", "%")

    env = {
        k: v.strip('"') for k, v in (item.split("=", 1) for item in expand(section["environment"]).split(","))
    }
    argv = shlex.split(expand(section["command"]))
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()


def test_each_copy_of_a_worker_gets_its_own_metrics_port():
    """supervisord gives every copy the same environment: the command computes copy n's port."""
    probe = [sys.executable, "-c", "import os; print(os.environ['METRICS_PORT'])"]
    p = Process(
        "fer-worker", probe, Path("/tmp"), {"X": "1"}, numprocs=3, metrics_port=9150, metrics_env=True
    )
    assert (
        [run_copy(p, n) for n in (1, 2, 3)] == ["9150", "9151", "9152"] == [str(x) for x in p.metrics_ports()]
    )
    one = Process("reconciler", probe, Path("/tmp"), {"X": "1"}, metrics_port=9101, metrics_env=True)
    assert run_copy(one, 1) == "9101" and "/bin/sh" not in program_section(one, Path("/tmp"))


def test_the_generated_config_has_one_target_per_process():
    procs = processes(fer_workers=2, recommender_workers=3)
    config = prometheus_config(procs)
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {
        "gateway": [f"{HOST}:18000"],
        "fer-worker": [f"{HOST}:19150", f"{HOST}:19151"],
        "recommender": [f"{HOST}:19110", f"{HOST}:19111", f"{HOST}:19112"],
        "reconciler": [f"{HOST}:19101"],
        "model-server": [f"{HOST}:18501"],
    }
    assert config["rule_files"] == [str(ALERTS)]
    by_name = {p.name: p for p in procs}
    model_server = by_name["model-server"].argv
    assert "--rest_api_port=18501" in model_server  # TF Serving's flag: metrics on the REST port
    assert f"--monitoring_config_file={REPO_ROOT / 'deploy/tfserving/monitoring.config'}" in model_server
    for name in ("fer-worker", "recommender", "reconciler"):
        assert by_name[name].environment["METRICS_PORT"] == str(METRICS[name])
    assert "METRICS_PORT" not in by_name["gateway"].environment  # /metrics on its own port


def test_every_metrics_port_is_checked_before_anything_starts():
    wanted = [w for p in processes(fer_workers=2) for w in p.listens()]
    assert (19151, "fer-worker-2 metrics", "MOODTUNES_FER_METRICS_PORT") in wanted
    assert (18501, "model-server metrics", "MOODTUNES_MODEL_SERVER_METRICS_PORT") in wanted
    assert [w for w in wanted if w[0] == 18000] == [(18000, "gateway", "MOODTUNES_GATEWAY_PORT")]
    clash = {**METRICS, "recommender": 19151}  # the second FER copy's port
    ps = service_processes(Path("/x"), {}, fer_workers=2, metrics_ports=clash, gateway_port=18000)
    with pytest.raises(localstack.StackError, match="port 19151 is set for both fer-worker-2 metrics"):
        localstack.check_ports([w for p in ps for w in p.listens()])


def test_without_metrics_ports_only_the_gateway_has_metrics():
    """The test suite's direct starts (tests/e2e) bind no fixed metrics port."""
    procs = service_processes(Path("/x"), {})
    assert {p.name: p.metrics_ports() for p in procs if p.metrics_ports()} == {"gateway": [8000]}
    assert not any("--rest_api_port" in a for p in procs for a in p.argv)


def test_up_says_when_prometheus_is_not_installed():
    text = localstack.monitoring_lines({"prometheus": None, "flower": "http://127.0.0.1:5555"})
    assert "prometheus: not installed" in text and "apt-get install prometheus" in text
    assert "flower: http://127.0.0.1:5555" in text
    text = localstack.monitoring_lines({"prometheus": "http://127.0.0.1:9090", "flower": "http://x"})
    assert text.startswith("prometheus: http://127.0.0.1:9090")


def test_flower_runs_unless_turned_off(tmp_path, monkeypatch):
    """MOODTUNES_FLOWER=false: no Flower, so nobody asks the workers for task events."""
    monkeypatch.setattr(localstack, "prometheus_binary", lambda: None)
    monkeypatch.delenv("MOODTUNES_FLOWER", raising=False)
    assert [p.name for p in localstack.monitor_processes(tmp_path, localstack.stack_settings())] == ["flower"]
    monkeypatch.setenv("MOODTUNES_FLOWER", "false")
    assert localstack.monitor_processes(tmp_path, localstack.stack_settings()) == []


# ----------------------------------------------------------------------------- a real Prometheus


class _Metrics(http.server.BaseHTTPRequestHandler):
    path_served = "/metrics"

    def do_GET(self):
        if self.path != self.path_served:
            self.send_response(404)
            self.end_headers()
            return
        body = (
            b"# TYPE moodtunes_queue_depth gauge\n"
            b'moodtunes_queue_depth{queue="fer"} 3\n'
            b'moodtunes_queue_depth{queue="recommend"} 0\n'
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_servers():
    """Stand-ins for every process's metrics endpoint: the local stack's ports with two FER copies."""
    servers = []
    fer = free_port_run(2)
    model_server, recommender, reconciler, gateway = free_ports(4, avoid=(fer, fer + 1))
    ports = {
        "model-server": model_server,
        "fer-worker": fer,
        "recommender": recommender,
        "reconciler": reconciler,
    }
    procs = service_processes(Path("/x"), {}, gateway_port=gateway, fer_workers=2, metrics_ports=ports)
    for p in procs:
        path = "/monitoring/prometheus/metrics" if p.name == "model-server" else "/metrics"
        for port in p.metrics_ports():
            handler = type("Handler", (_Metrics,), {"path_served": path})
            server = http.server.ThreadingHTTPServer((HOST, port), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
    yield procs
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(
    localstack.prometheus_binary() is None, reason="prometheus not installed (apt-get install prometheus)"
)
def test_prometheus_scrapes_every_process_and_loads_the_alerts(tmp_path, metrics_servers):
    """The generated config, run by the installed Prometheus as `make up` runs it (scraping every
    second here, not to wait 15 s): every target up, the rules of deploy/prometheus/alerts.yml
    loaded, the series queryable."""
    root = tmp_path / "prometheus"
    localstack.write_prometheus_config(root / "prometheus.yml", metrics_servers)
    config = yaml.safe_load((root / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prom = localstack.prometheus_process(root, tmp_path / "run", port, localstack.prometheus_binary()).start()
    api = f"http://{HOST}:{port}/api/v1"
    try:
        deadline, targets = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            assert prom.alive(), (tmp_path / "run" / "prometheus.log").read_text()[-3000:]
            try:
                answer = httpx.get(f"{api}/targets", timeout=5)
                # 503 "Service Unavailable" (plain text) until Prometheus is ready
                targets = answer.json()["data"]["activeTargets"] if answer.status_code == 200 else []
            except httpx.HTTPError:
                targets = []
            if len(targets) == 6 and all(t["health"] == "up" for t in targets):
                break
            time.sleep(0.5)
        seen = sorted((t["labels"]["job"], t["labels"]["instance"]) for t in targets)
        expected = sorted((p.name, f"{HOST}:{port}") for p in metrics_servers for port in p.metrics_ports())
        assert seen == expected and len(seen) == 6, targets
        assert all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t["lastError"]) for t in targets]
        rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        assert [g["file"] for g in rules] == [str(ALERTS)]
        names = {r["name"] for g in rules for r in g["rules"]}
        assert names == {
            "QueueBacklog",
            "HighErrorRate",
            "ModelServerDown",
            "StuckJobs",
            "WorkerDown",
            "GatewayDown",
        }
        assert all(r["health"] in ("ok", "unknown") for g in rules for r in g["rules"])
        result = httpx.get(
            f"{api}/query", params={"query": 'max by (queue) (moodtunes_queue_depth{queue="fer"})'}, timeout=5
        ).json()["data"]["result"]
        assert [r["value"][1] for r in result] == ["3"]
    finally:
        prom.stop()


# ----------------------------------------------------------------------------- Flower


@pytest.mark.integration
def test_flower_watches_the_broker(tmp_path, redis_server):
    port = free_port()
    flower = localstack.flower_process(tmp_path / "run", port)
    flower.env = {"CELERY_BROKER_URL": redis_server.url}
    flower.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert flower.alive(), flower.log.read_text()[-3000:]
            try:
                if httpx.get(f"http://{HOST}:{port}/healthcheck", timeout=3).text == "OK":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, flower.log.read_text()[-3000:]
            time.sleep(0.3)
        broker = httpx.get(f"http://{HOST}:{port}/broker", timeout=10)
        assert broker.status_code == 200 and f"127.0.0.1:{redis_server.port}" in broker.text
    finally:
        flower.stop()
