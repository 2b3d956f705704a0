"""deploy/prometheus/: the scrape config and alert rules every deployment uses, checked offline.

- The jobs are the same everywhere: docker compose's prometheus.yml (DNS discovery), the Kubernetes
  ConfigMap in deploy/k8s/prometheus.yaml (pod discovery) and the config `make up` generates
  (moodtunes_cli.localstack.prometheus_config; tests/cli/test_prometheus_local.py runs it): job
  names, metrics paths, intervals and rule files; and every job finds its processes on the port
  they serve metrics on (METRICS_PORT, the gateway's port, TF Serving's REST port).
- The ConfigMap's alerts.yml is a copy of deploy/prometheus/alerts.yml.
- Every metric the alerts (and the Grafana dashboard, test_grafana.py) use is in CONTRACT, the
  metrics the services export, and CONTRACT matches the metrics the code defines.
- With `promtool` installed (Debian's `prometheus` package; .ci/run installs it): both configs and
  the rules pass `promtool check`, and the rules' unit tests (alerts_test.yml) pass.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
COMPOSE_CONFIG = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
JOBS = {"gateway", "fer-worker", "recommender", "reconciler", "model-server"}
# job -> the compose service / Kubernetes workload it scrapes
JOB_WORKLOADS = {
    "gateway": "gateway",
    "fer-worker": "fer-worker",
    "recommender": "recommender",
    "reconciler": "reconciler",
    "model-server": "tfserving",
}
METRICS_PORT_JOBS = {"fer-worker", "recommender", "reconciler"}  # they read METRICS_PORT
ALERT_NAMES = {"QueueBacklog", "HighErrorRate", "ModelServerDown", "StuckJobs", "WorkerDown", "GatewayDown"}
NO_PROMTOOL = "promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)"

# ----------------------------------------------------------------------------- the metric contract

TARGET_LABELS = {"job", "instance", "pod"}  # added by Prometheus to every series it scrapes


def _counter(name: str, *labels: str) -> dict[str, set[str]]:
    return {f"{name}_total": set(labels)}


def _gauge(name: str, *labels: str) -> dict[str, set[str]]:
    return {name: set(labels)}


def _histogram(name: str, *labels: str) -> dict[str, set[str]]:
    return {f"{name}_bucket": {*labels, "le"}, f"{name}_sum": set(labels), f"{name}_count": set(labels)}


# Exposition names and their labels. The gateway's http_* come from prometheus-fastapi-instrumentator
# (status grouped as 2xx..5xx); the worker metrics from moodtunes.observability; the model server's
# from moodtunes_model_server.monitoring (the local stand-in: TF Serving exports its own names).
CONTRACT: dict[str, set[str]] = {
    "up": set(),
    **_counter("http_requests", "handler", "method", "status"),
    **_histogram("http_request_duration_seconds", "handler", "method"),
    **_histogram("http_request_duration_highr_seconds"),
    **_counter("moodtunes_gateway_rejections", "code"),
    **_gauge("moodtunes_queue_depth", "queue"),
    **_gauge("moodtunes_jobs_unfinished", "status"),
    **_gauge("moodtunes_jobs_finished_last_hour", "status", "code"),
    **_histogram("moodtunes_task_duration_seconds", "service", "task"),
    **_histogram("moodtunes_stage_duration_seconds", "service", "stage"),
    **_counter("moodtunes_task_outcomes", "service", "outcome", "code"),
    **_counter("moodtunes_task_retries", "service", "reason"),
    **_gauge("moodtunes_tasks_in_flight", "service"),
    **_histogram("moodtunes_model_call_duration_seconds", "model"),
    **_histogram("moodtunes_model_call_batch_size", "model"),
    **_counter("moodtunes_reconciler_actions", "action"),
    **_counter("moodtunes_model_server_requests", "model", "code"),
    **_histogram("moodtunes_model_server_request_duration_seconds", "model"),
    **_histogram("moodtunes_model_server_batch_size", "model"),
}

# ----------------------------------------------------------------------------- PromQL, read

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: every identifier that is not a function (an
    identifier followed by `(`), a keyword, a label (inside {} or a by/on/... list) or a duration."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        if m[1].lower() not in _KEYWORDS:
            names.add(m[1])
    return names


def selector_labels(expr: str) -> dict[str, set[str]]:
    """metric name -> the label names its selectors in EXPR match on."""
    out: dict[str, set[str]] = {}
    for m in _SELECTOR.finditer(expr):
        if m[1] in ("by", "without", "on", "ignoring", "group_left", "group_right"):
            continue
        out.setdefault(m[1], set()).update(k for k, _, _ in _MATCHER.findall(m[2]))
    return out


def contract_problems(expr: str) -> list[str]:
    """What in EXPR is outside CONTRACT: unknown metrics, or matchers on labels they do not have."""
    problems = [f"unknown metric {name}" for name in sorted(metric_names(expr) - set(CONTRACT))]
    for name, labels in selector_labels(expr).items():
        if name in CONTRACT:
            extra = labels - CONTRACT[name] - TARGET_LABELS
            if extra:
                problems.append(f"{name} has no label {sorted(extra)}")
    return problems


def test_the_promql_reader():
    expr = (
        'sum(rate(a_total{job="x",code!~"no_face|y"}[5m])) / sum by (le) (b_bucket[10m:1m]) '
        '> 0.05 unless on() absent(up{job="m"} == 1) and histogram_quantile(0.5, c) offset 5m'
    )
    assert metric_names(expr) == {"a_total", "b_bucket", "up", "c"}
    assert selector_labels(expr) == {"a_total": {"job", "code"}, "up": {"job"}}
    assert contract_problems('moodtunes_queue_depth{queue="fer",stage="x"} + nope') == [
        "unknown metric nope",
        "moodtunes_queue_depth has no label ['stage']",
    ]


# ----------------------------------------------------------------------------- the files


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def k8s_docs() -> dict[tuple[str, str], dict]:
    docs = yaml.safe_load_all((REPO / "deploy" / "k8s" / "prometheus.yaml").read_text())
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d}


def k8s_config_files() -> dict[str, str]:
    return k8s_docs()[("ConfigMap", "prometheus-config")]["data"]


def k8s_config() -> dict:
    return yaml.safe_load(k8s_config_files()["prometheus.yml"])


def jobs_of(config: dict) -> dict[str, dict]:
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert len(jobs) == len(config["scrape_configs"]), "a job name is used twice"
    return jobs


def scrape_settings(job: dict) -> dict:
    """What a job scrapes and how, less how it finds its targets."""
    return {
        k: v
        for k, v in job.items()
        if not k.endswith("_sd_configs") and k not in ("static_configs", "relabel_configs")
    }


def alert_rules() -> list[dict]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def compose() -> dict:
    return load(REPO / "docker-compose.yml")


def compose_env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def test_every_job_of_the_contract_is_scraped_the_same_way_everywhere():
    from moodtunes_cli.localstack import prometheus_config, service_processes

    compose_config, k8s = load(COMPOSE_CONFIG), k8s_config()
    processes = service_processes(
        Path("/nonexistent"),
        {},
        metrics_ports={"model-server": 18501, "fer-worker": 19150, "recommender": 19110, "reconciler": 19101},
    )
    local = prometheus_config(processes)
    assert set(jobs_of(compose_config)) == JOBS
    for name, config in (("deploy/k8s/prometheus.yaml", k8s), ("make up", local)):
        assert config["global"] == compose_config["global"], name
        assert {j: scrape_settings(job) for j, job in jobs_of(config).items()} == {
            j: scrape_settings(job) for j, job in jobs_of(compose_config).items()
        }, f"{name}: jobs differ from deploy/prometheus/prometheus.yml"
    assert compose_config["rule_files"] == k8s["rule_files"] == ["alerts.yml"]
    assert local["rule_files"] == [str(ALERTS)], "make up must load the same rule file"


def test_the_k8s_configmap_carries_the_same_alert_rules():
    copied = k8s_config_files()["alerts.yml"]
    if copied != ALERTS.read_text():
        diff = "".join(
            difflib.unified_diff(
                ALERTS.read_text().splitlines(True), copied.splitlines(True), "deploy/prometheus/alerts.yml"
            )
        )
        pytest.fail(
            f"deploy/k8s/prometheus.yaml's alerts.yml differs from deploy/prometheus/alerts.yml:\n{diff}"
        )
    assert set(k8s_config_files()) == {"prometheus.yml", "alerts.yml"}


def test_model_server_metrics_path_is_tf_servings():
    """The model-server job's path is where --monitoring_config_file puts the metrics (TF Serving and
    the local stand-in read the same file)."""
    from moodtunes_model_server.monitoring import parse_monitoring_config

    monitoring = parse_monitoring_config((REPO / "deploy" / "tfserving" / "monitoring.config").read_text())
    assert monitoring.enable
    assert jobs_of(load(COMPOSE_CONFIG))["model-server"]["metrics_path"] == monitoring.path
    tfs = compose()["services"]["tfserving"]
    assert flags(tfs["command"])["monitoring_config_file"] == "/config/monitoring.config"


# ----------------------------------------------------------------------------- compose


def metrics_port_in_compose(job: str) -> int:
    services = compose()["services"]
    service = services[JOB_WORKLOADS[job]]
    if job in METRICS_PORT_JOBS:
        return int(compose_env(service)["METRICS_PORT"])
    if job == "gateway":
        command = service["command"]
        return int(command[command.index("--port") + 1])
    return int(flags(service["command"])["rest_api_port"])


@pytest.mark.parametrize("job", sorted(JOBS))
def test_compose_jobs_find_their_service_on_its_metrics_port(job):
    (sd,) = jobs_of(load(COMPOSE_CONFIG))[job]["dns_sd_configs"]
    assert sd["names"] == [JOB_WORKLOADS[job]] and sd["type"] == "A", (
        "one A lookup of the service name: every replica's address (--scale)"
    )
    assert sd["port"] == metrics_port_in_compose(job)


def test_compose_runs_prometheus_on_these_files_and_flower_on_the_broker():
    services = compose()["services"]
    prom = services["prometheus"]
    args = flags(prom["command"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] if isinstance(v, str)}
    config_dir = str(Path(args["config.file"]).parent)
    assert mounts[config_dir] == "./deploy/prometheus" and Path(args["config.file"]).name == "prometheus.yml"
    assert prom["image"].startswith("prom/prometheus:v")
    assert mounts[args["storage.tsdb.path"]] in (compose().get("volumes") or {}), "TSDB on a named volume"
    flower = services["flower"]
    broker = next(a.split("=", 1)[1] for a in flower["command"] if a.startswith("--broker="))
    assert broker == compose()["x-common-env"]["REDIS_URL"]
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"


# ----------------------------------------------------------------------------- Kubernetes


def k8s_helpers():
    spec = importlib.util.spec_from_file_location(
        "_moodtunes_deploy_k8s_prod", Path(__file__).with_name("test_k8s_production.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def k8s():
    prod = k8s_helpers()
    resources = {
        (doc["kind"], doc["metadata"]["name"]): doc
        for _, doc in prod.h.load_documents()
        if doc.get("kind") != "Kustomization"
    }
    return prod, resources


def kept_workload_and_port(job: dict) -> tuple[str, str]:
    """The (pod label app.kubernetes.io/name, container port name) a k8s job keeps."""
    (keep,) = [
        r
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
        and r["source_labels"]
        == ["__meta_kubernetes_pod_label_app_kubernetes_io_name", "__meta_kubernetes_pod_container_port_name"]
    ]
    workload, port = keep["regex"].split(";")
    return workload, port


@pytest.mark.parametrize("job", sorted(JOBS))
def test_k8s_jobs_keep_their_workloads_metrics_port(k8s, job):
    prod, resources = k8s
    config = jobs_of(k8s_config())[job]
    (sd,) = config["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["namespaces"] == {"own_namespace": True}
    workload, port_name = kept_workload_and_port(config)
    assert workload == JOB_WORKLOADS[job]
    deployment = resources[("Deployment", workload)]
    container = prod.h.container(resources, workload)
    port = prod.h.port_number(container, port_name)
    assert port == metrics_port_in_compose(job), "k8s and compose scrape different ports"
    if job in METRICS_PORT_JOBS:
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert int(env["METRICS_PORT"]) == port
    # The usual annotations say the same (for a cluster Prometheus that reads them)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == config["metrics_path"]
    assert any(r.get("regex") == "Running" for r in config["relabel_configs"]), "scrapes pods not running"


def test_k8s_prometheus_can_discover_pods_and_scrape_them(k8s):
    prod, resources = k8s
    dep = resources[("Deployment", "prometheus")]
    spec = prod.h.pod_spec(dep)
    account = spec["serviceAccountName"]
    binding = resources[("RoleBinding", "prometheus")]
    assert {"kind": "ServiceAccount", "name": account, "namespace": prod.namespace()} in binding["subjects"]
    role = resources[("Role", binding["roleRef"]["name"])]
    assert any("pods" in r["resources"] and {"list", "watch"} <= set(r["verbs"]) for r in role["rules"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in prod.h.container(resources, "prometheus")["volumeMounts"]}
    args = flags(prod.h.container(resources, "prometheus")["args"])
    config_dir = str(Path(args["config.file"]).parent)
    assert volumes[mounts[config_dir]]["configMap"]["name"] == "prometheus-config"
    assert "persistentVolumeClaim" in volumes[mounts[args["storage.tsdb.path"]]]
    assert dep["spec"]["strategy"]["type"] == "Recreate", "one ReadWriteOnce volume"
    # The network policies let this Prometheus, and not any pod, reach every metrics port.
    labels = prod.h.pod_labels(dep)
    for job in JOBS:
        workload, port_name = kept_workload_and_port(jobs_of(k8s_config())[job])
        port = prod.h.port_number(prod.h.container(resources, workload), port_name)
        assert prod.allowed(resources, labels, prod.namespace(), workload, port), f"{job}: blocked"
        if job in METRICS_PORT_JOBS:
            intruder = {"app.kubernetes.io/name": "intruder"}
            assert not prod.allowed(resources, intruder, prod.namespace(), workload, port)


# ----------------------------------------------------------------------------- the alert rules


def test_the_alerts_the_issue_asks_for_exist_with_a_severity():
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERT_NAMES
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"].get("summary"), rule["alert"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels'].get('reason', '')}")
def test_alert_rules_use_only_contract_metrics(rule):
    assert not contract_problems(rule["expr"]), contract_problems(rule["expr"])
    jobs = set(re.findall(r'job="([^"]+)"', rule["expr"]))
    for group in re.findall(r'job=~"([^"]+)"', rule["expr"]):
        jobs |= set(group.split("|"))
    assert jobs <= JOBS, f"{rule['alert']}: unknown jobs {jobs - JOBS}"


def _families(module) -> dict[str, tuple[str, tuple[str, ...]]]:
    from prometheus_client.metrics import MetricWrapperBase

    return {
        m._name: (m._type, tuple(m._labelnames))
        for m in vars(module).values()
        if isinstance(m, MetricWrapperBase)
    }


def _exposed(name: str, kind: str, labels: tuple[str, ...]) -> dict[str, set[str]]:
    return {"counter": _counter, "gauge": _gauge, "histogram": _histogram}[kind](name, *labels)


def test_the_contract_is_what_the_code_exports():
    """The workers', reconciler's and model server's metric objects, the gateway's rejections counter
    and collector gauges: each in CONTRACT with the same labels, and every contract name defined."""
    from moodtunes import observability
    from moodtunes_gateway import observability as gateway_observability
    from moodtunes_model_server import monitoring

    exported: dict[str, set[str]] = {"up": set()}
    for module in (observability, monitoring):
        for name, (kind, labels) in _families(module).items():
            exported.update(_exposed(name, kind, labels))
    source = Path(gateway_observability.__file__).read_text()
    # prometheus-fastapi-instrumentator's defaults, and the gateway's own metrics
    exported.update(_counter("http_requests", "handler", "method", "status"))
    exported.update(_histogram("http_request_duration_seconds", "handler", "method"))
    exported.update(_histogram("http_request_duration_highr_seconds"))
    for name in ("moodtunes_gateway_rejections", "moodtunes_queue_depth", "moodtunes_jobs_unfinished"):
        assert f'"{name}"' in source, f"the gateway no longer defines {name}"
    for name in ("moodtunes_gateway_rejections_total", "moodtunes_queue_depth", "moodtunes_jobs_unfinished"):
        exported[name] = CONTRACT[name]
    assert '"moodtunes_jobs_finished_last_hour"' in source
    exported["moodtunes_jobs_finished_last_hour"] = CONTRACT["moodtunes_jobs_finished_last_hour"]
    missing = {k: v for k, v in CONTRACT.items() if exported.get(k) != v}
    assert not missing, f"in CONTRACT, not (or with other labels) in the code: {missing}"


# ----------------------------------------------------------------------------- promtool

promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason=NO_PROMTOOL)


def run_promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@promtool
def test_promtool_checks_the_compose_config_and_its_rules():
    run = run_promtool("check", "config", str(COMPOSE_CONFIG))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 rule files found" in run.stdout + run.stderr


@promtool
def test_promtool_checks_the_rules():
    run = run_promtool("check", "rules", str(ALERTS))
    assert run.returncode == 0, run.stdout + run.stderr


@promtool
def test_promtool_rule_unit_tests_fire_every_alert():
    tested = set(re.findall(r"alertname:\s*(\w+)", ALERTS_TEST.read_text()))
    assert tested == ALERT_NAMES, f"alerts without a unit test: {ALERT_NAMES - tested}"
    run = run_promtool("test", "rules", str(ALERTS_TEST))
    assert run.returncode == 0, run.stdout + run.stderr


@promtool
def test_promtool_checks_the_k8s_config(tmp_path):
    """Debian's Prometheus is built without Kubernetes discovery, so promtool checks the ConfigMap's
    config with each job's pod discovery swapped for an empty static list: everything else (the
    relabelling, paths, intervals, rule file) as the cluster's Prometheus reads it."""
    config = copy.deepcopy(k8s_config())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": []}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "alerts.yml").write_text(k8s_config_files()["alerts.yml"])
    run = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert run.returncode == 0, run.stdout + run.stderr


@promtool
def test_promtool_rejects_a_broken_rule(tmp_path):
    """The check above would catch a typo: a rule with a bad expression fails."""
    broken = load(ALERTS)
    broken["groups"][0]["rules"][0]["expr"] = "max by (queue) (moodtunes_queue_depth > 100"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(broken))
    assert run_promtool("check", "rules", str(tmp_path / "alerts.yml")).returncode != 0
