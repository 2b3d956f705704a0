"""What makes deploy/k8s/ fit for production, checked on the manifests: resources on every container,
secrets only in Secrets, the GPU model server (placement, rollout, a readiness that means "model
AVAILABLE"), worker probes, queue-driven autoscaling, disruption budgets, stateful infrastructure,
TLS ingress and network policies. Two probes are also run for real: the model server's against a
stand-in HTTP server, the Celery workers' against a real worker and Redis."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from google.protobuf import text_format

from moodtunes.config import Settings


def k8s_helpers():
    spec = importlib.util.spec_from_file_location(
        "_moodtunes_deploy_k8s", Path(__file__).with_name("test_k8s.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


h = k8s_helpers()
WORKERS = {"fer-worker": "fer", "recommender": "recommend"}  # Deployment -> Celery queue
# Long-running containers without probes, and why.
NO_PROBES = {
    # A loop with nothing to ask: it logs and retries a failed round itself, and exits (and is
    # restarted) only if the process dies.
    "reconciler": "no endpoint; failures are retried inside the loop",
}
PDB_REQUIRED = {"gateway", "fer-worker", "recommender", "tfserving"}
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for _, doc in h.load_documents()
        if doc.get("kind") != "Kustomization"
    }


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist) against labels."""
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def long_running(resources) -> dict[str, dict]:
    return {name: obj for (kind, name), obj in resources.items() if kind in ("Deployment", "StatefulSet")}


def autoscalers(resources) -> dict[str, tuple[str, int, int]]:
    """Deployment name -> (autoscaler kind, min, max)."""
    out = {}
    for (kind, _), obj in resources.items():
        if kind == "HorizontalPodAutoscaler":
            ref = obj["spec"]["scaleTargetRef"]
            out.setdefault(ref["name"], []).append(
                (kind, obj["spec"].get("minReplicas", 1), obj["spec"]["maxReplicas"])
            )
        elif kind == "ScaledObject":
            ref = obj["spec"]["scaleTargetRef"]
            spec = obj["spec"]
            out.setdefault(ref["name"], []).append(
                (kind, spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100))
            )
    for name, found in out.items():
        assert len(found) == 1, f"{name} has several autoscalers: {found} (KEDA makes an HPA of its own)"
    return {name: found[0] for name, found in out.items()}


def min_replicas(resources, name: str) -> int:
    scaler = autoscalers(resources).get(name)
    return scaler[1] if scaler else long_running(resources)[name]["spec"].get("replicas", 1)


def namespace() -> str:
    return h.kustomization()["namespace"]


def probe_command(c: dict, probe: str) -> list[str]:
    return c[probe]["exec"]["command"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- resources and secrets


def test_every_container_has_cpu_and_memory_requests_and_limits(resources):
    for (kind, name), obj in h.workloads(resources).items():
        for c in h.all_containers(obj):
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in (res.get(part) or {}), (
                        f"{kind}/{name}/{c['name']}: no {part}.{resource}"
                    )


def test_no_secret_in_any_configmap(resources):
    for (kind, name), obj in resources.items():
        if kind != "ConfigMap":
            continue
        for key, value in (obj.get("data") or {}).items():
            assert not h.looks_secret(key, str(value)), f"ConfigMap {name}: {key} looks like a secret"
            for line in str(value).splitlines():
                for url in re.findall(r"\w+://\S+", line):
                    assert not urlsplit(url).password, f"ConfigMap {name}/{key}: a URL with a password"


def test_every_secret_reference_names_an_existing_key(resources):
    refs = []
    for (_, name), obj in h.workloads(resources).items():
        for c in h.all_containers(obj):
            refs += [(f"{name}/{i['name']}", h.secret_ref(i)) for i in c.get("env") or [] if h.secret_ref(i)]
    for (kind, name), obj in resources.items():
        if kind == "TriggerAuthentication":
            refs += [
                (f"TriggerAuthentication/{name}", (r["name"], r["key"]))
                for r in obj["spec"]["secretTargetRef"]
            ]
        if kind == "Ingress":
            for tls in obj["spec"].get("tls") or []:
                assert tls.get("secretName"), f"Ingress/{name}: TLS without a secretName"
    assert refs
    for where, (secret, key) in refs:
        data = (resources.get(("Secret", secret)) or {}).get("stringData") or {}
        assert key in data, f"{where} reads {secret}/{key}, which {h.SECRETS_EXAMPLE} does not define"


def test_credentials_come_from_secrets(resources):
    """Every env var that is or carries a credential, in any container, comes from a Secret."""
    for (_, name), obj in h.workloads(resources).items():
        for c in h.all_containers(obj):
            for item in c.get("env") or []:
                if "value" in item:
                    assert not h.looks_secret(item["name"], str(item["value"])), (
                        f"{name}: {item['name']} in plain text"
                    )


def test_services_connect_as_the_application_role(resources):
    """Only the migrate Job (and PostgreSQL itself) can read the owner's credentials."""
    for (_, name), obj in h.workloads(resources).items():
        for c in h.all_containers(obj):
            for item in c.get("env") or []:
                ref = h.secret_ref(item)
                if ref and ref[0] == "moodtunes-postgres":
                    assert name in ("migrate", "postgres"), f"{name} reads the owner's Secret ({ref[1]})"
                if item["name"] == "DATABASE_URL" and name != "postgres":
                    assert ref == ("moodtunes-app", "DATABASE_URL"), (
                        f"{name}: DATABASE_URL is not the app role's"
                    )
    assert h.secret_value(resources, "moodtunes-app", "SESSION_SECRET")
    gateway_env = {i["name"]: h.secret_ref(i) for i in h.container(resources, "gateway").get("env") or []}
    assert gateway_env.get("SESSION_SECRET") == ("moodtunes-app", "SESSION_SECRET")


# ----------------------------------------------------------------------------- the GPU model server


def served_model_names(resources) -> list[str]:
    from moodtunes_tfserving.proto.tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        resources[("ConfigMap", "tfserving-config")]["data"]["models.config"],
        model_server_config_pb2.ModelServerConfig(),
    )
    return [m.name for m in config.model_config_list.config]


def test_model_server_runs_on_gpu_nodes(resources):
    dep = resources[("Deployment", "tfserving")]
    spec = h.pod_spec(dep)
    res = h.container(resources, "tfserving")["resources"]
    assert str(res["limits"].get(GPU)) == "1", "tfserving: limits nvidia.com/gpu: 1"
    assert str(res["requests"].get(GPU, res["limits"][GPU])) == "1", "GPU requests must equal limits"
    assert spec.get("nodeSelector"), "tfserving: no nodeSelector for GPU nodes"
    assert any(
        t.get("key") == GPU and t.get("effect") in (None, "NoSchedule") for t in spec.get("tolerations") or []
    ), "tfserving: no toleration for the GPU nodes' taint"
    for (_, name), obj in h.workloads(resources).items():
        if name != "tfserving":
            for c in h.all_containers(obj):
                assert GPU not in ((c.get("resources") or {}).get("limits") or {}), f"{name} asks for a GPU"


def test_model_server_rollout_keeps_serving(resources):
    dep = resources[("Deployment", "tfserving")]
    strategy = dep["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert str(strategy["rollingUpdate"]["maxUnavailable"]) in ("0", "0%")
    assert str(strategy["rollingUpdate"]["maxSurge"]) not in ("0", "0%")
    assert dep["spec"]["replicas"] >= 2, "one replica: a node drain or a crash stops every FER job"


def test_model_server_probes_wait_for_the_model(resources):
    c = h.container(resources, "tfserving")
    names = served_model_names(resources)
    for probe in ("startupProbe", "readinessProbe"):
        script = " ".join(probe_command(c, probe))
        assert "AVAILABLE" in script, f"{probe} does not check the model state"
        assert any(f"/v1/models/{n}" in script for n in names), (
            f"{probe} asks about another model than {names}"
        )
        assert "8501" in script and any(p["containerPort"] == 8501 for p in c["ports"])
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, (
        "under 5 minutes to load and warm up"
    )
    assert c.get("livenessProbe"), "tfserving: no liveness probe"


class _FakeTfServing(http.server.BaseHTTPRequestHandler):
    body: bytes = b""
    status: int = 200
    model: str = "fer_vgg16"

    def do_GET(self):
        if self.path != f"/v1/models/{self.model}":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{ "error": "Could not find any versions of model" }')
            return
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def status_json(state: str, error_code: str = "OK", pretty: bool = True) -> bytes:
    """TF Serving's GetModelStatus answer (REST), as its JSON printer writes it."""
    answer = {
        "model_version_status": [
            {"version": "3", "state": state, "status": {"error_code": error_code, "error_message": ""}}
        ]
    }
    return (json.dumps(answer, indent=1) if pretty else json.dumps(answer, separators=(",", ":"))).encode()


@pytest.mark.parametrize(
    "body,status,ok",
    [
        (status_json("AVAILABLE"), 200, True),
        (status_json("AVAILABLE", pretty=False), 200, True),
        (status_json("LOADING"), 200, False),
        (status_json("START"), 200, False),
        # A version that failed to load: the error code reads UNAVAILABLE, the state is END.
        (status_json("END", error_code="UNAVAILABLE"), 200, False),
        (b'{ "error": "Servable not found" }', 404, False),
    ],
    ids=["available", "available-compact", "loading", "start", "failed-load", "not-found"],
)
def test_model_server_readiness_probe_runs(resources, body, status, ok):
    """The probe's own command (bash, /dev/tcp, grep), pointed at a stand-in server's port."""
    handler = type(
        "Handler",
        (_FakeTfServing,),
        {"body": body, "status": status, "model": served_model_names(resources)[0]},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        command = [
            part.replace("/8501", f"/{server.server_port}")
            for part in probe_command(h.container(resources, "tfserving"), "readinessProbe")
        ]
        run = subprocess.run(command, capture_output=True, text=True, timeout=20)
        assert (run.returncode == 0) == ok, f"probe exit {run.returncode}: {run.stderr}"
    finally:
        server.shutdown()
        server.server_close()


def test_model_server_readiness_probe_fails_when_nothing_listens(resources):
    port = free_port()
    command = [
        p.replace("/8501", f"/{port}")
        for p in probe_command(h.container(resources, "tfserving"), "readinessProbe")
    ]
    assert subprocess.run(command, capture_output=True, timeout=20).returncode != 0


# ----------------------------------------------------------------------------- workers


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_workers_have_probes_on_their_own_celery_node(resources, name):
    c = h.container(resources, name)
    ready, live = probe_command(c, "readinessProbe"), probe_command(c, "livenessProbe")
    assert ready[:2] == ["python", "-c"] and ready[-1] == "ready"
    assert live[:2] == ["python", "-c"] and live[-1] == "live"
    assert ready[2] == live[2], "readiness and liveness run different scripts"
    # The probe pings celery@<hostname>, Celery's default node name: the command must not rename it.
    cmd = h.command_list(c.get("command")) + h.command_list(c.get("args"))
    assert not {"-n", "--hostname"} & set(cmd), "the worker sets a node name the probe does not ask for"
    assert "celery@{socket.gethostname()}" in ready[2]
    assert c["livenessProbe"]["timeoutSeconds"] > 5 and c["readinessProbe"]["timeoutSeconds"] > 5


def test_both_workers_share_one_probe(resources):
    scripts = {probe_command(h.container(resources, n), "readinessProbe")[2] for n in WORKERS}
    assert len(scripts) == 1


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_worker_shutdown_outlasts_the_longest_task(resources, name):
    from moodtunes import queue

    if not hasattr(queue, "longest_task_s"):
        pytest.skip("moodtunes.queue has no longest_task_s")
    grace = h.pod_spec(resources[("Deployment", name)]).get("terminationGracePeriodSeconds", 30)
    assert grace > queue.longest_task_s(Settings()), f"{name}: SIGKILL may cut a task short"


@pytest.mark.integration
def test_worker_probe_against_a_real_worker(resources, redis_server, tmp_path):
    """The manifests' probe script and fer-worker command, run for real: ready and alive once the
    worker is up; without Redis not ready but alive; with the worker gone, not alive."""
    c = h.container(resources, "fer-worker")
    script = probe_command(c, "readinessProbe")[2]
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(REDIS_URL=redis_server.url, PATH=f"{Path(py).parent}{os.pathsep}{env.get('PATH', '')}")

    def probe(mode: str, **extra) -> subprocess.CompletedProcess:
        return subprocess.run(
            [py, "-c", script, mode], env={**env, **extra}, capture_output=True, text=True, timeout=60
        )

    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    assert probe("ready", REDIS_URL=dead_broker).returncode == 1
    assert probe("live", REDIS_URL=dead_broker).returncode == 0, "a Redis outage must not restart workers"
    assert probe("live").returncode == 1, "no worker runs yet, and the probe says alive"

    command = h.command_list(c.get("command"))
    worker = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while (result := probe("ready")).returncode != 0:
            assert worker.poll() is None, f"the worker exited: {worker.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"never ready: {result.stdout} {result.stderr}"
            time.sleep(1)
        assert probe("live").returncode == 0
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert probe("live").returncode == 1


# ----------------------------------------------------------------------------- autoscaling


@pytest.mark.parametrize("name,queue", sorted(WORKERS.items()))
def test_scaled_object_reads_the_workers_queue(resources, name, queue):
    so = resources[("ScaledObject", name)]
    ref = so["spec"]["scaleTargetRef"]
    assert ref.get("kind", "Deployment") == "Deployment" and ref.get("apiVersion", "apps/v1") == "apps/v1"
    dep = resources[("Deployment", ref["name"])]
    assert ref["name"] == name
    assert "replicas" not in dep["spec"], f"{name}: a fixed replicas fights the autoscaler on every apply"
    cmd = h.command_list(h.container(resources, name).get("command"))
    assert cmd[cmd.index("-Q") + 1] == queue
    settings_queue = {"fer": Settings().fer_queue, "recommend": Settings().recommend_queue}[queue]
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis"
    assert meta["listName"] == queue == settings_queue
    assert int(meta["listLength"]) >= 1
    host, port = meta["address"].rsplit(":", 1)
    # The KEDA operator connects from its own namespace: the address must be fully qualified.
    assert host == f"redis.{namespace()}.svc.cluster.local"
    assert int(port) in [p["port"] for p in resources[("Service", "redis")]["spec"]["ports"]]
    redis_url = urlsplit(h.secret_value(resources, "moodtunes-app", "REDIS_URL"))
    assert meta.get("databaseIndex", "0") == (redis_url.path.lstrip("/") or "0")
    auth = resources[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    params = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert h.secret_value(resources, *params["password"]) == redis_url.password
    spec = so["spec"]
    assert 2 <= spec["minReplicaCount"] < spec["maxReplicaCount"]


def test_scaling_reaches_its_maximum_before_the_gateway_refuses_work(resources):
    """KEDA asks for maxReplicaCount once maxReplicaCount x listLength jobs wait; the gateway
    answers 503 queue_full past FER_QUEUE_MAX_DEPTH waiting: the first must come first."""
    depth = getattr(Settings(), "fer_queue_max_depth", None)
    if not depth:
        pytest.skip("the gateway has no FER queue limit")
    spec = resources[("ScaledObject", "fer-worker")]["spec"]
    assert spec["maxReplicaCount"] * int(spec["triggers"][0]["metadata"]["listLength"]) <= depth


def test_gateway_scales_on_cpu(resources):
    hpa = resources[("HorizontalPodAutoscaler", "gateway")]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "gateway") and ("Deployment", "gateway") in resources
    assert "replicas" not in resources[("Deployment", "gateway")]["spec"]
    assert hpa["spec"]["minReplicas"] >= 2
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in h.container(resources, "gateway")["resources"]["requests"], (
        "CPU utilization needs a request"
    )


def test_every_deployment_without_replicas_has_one_autoscaler(resources):
    scaled = autoscalers(resources)
    for target in scaled:
        assert ("Deployment", target) in resources, f"an autoscaler targets a missing Deployment {target}"
    for name, obj in long_running(resources).items():
        if obj["kind"] == "Deployment" and "replicas" not in obj["spec"]:
            assert name in scaled, f"{name}: no replicas and no autoscaler (one pod)"


# ----------------------------------------------------------------------------- disruption budgets


def test_disruption_budgets_cover_the_serving_path_and_allow_drains(resources):
    pdbs = {name: obj for (kind, name), obj in resources.items() if kind == "PodDisruptionBudget"}
    covered = set()
    for name, pdb in pdbs.items():
        matched = [
            n
            for n, obj in long_running(resources).items()
            if selects(pdb["spec"]["selector"], h.pod_labels(obj))
        ]
        assert matched, f"PodDisruptionBudget {name} selects no pods"
        for target in matched:
            covered.add(target)
            lowest = min_replicas(resources, target)
            if "minAvailable" in pdb["spec"]:
                assert int(pdb["spec"]["minAvailable"]) < lowest, (
                    f"{name}: no pod of {target} could ever be evicted"
                )
            else:
                assert str(pdb["spec"]["maxUnavailable"]) not in ("0", "0%"), f"{name}: blocks every drain"
    assert PDB_REQUIRED <= covered, f"no PodDisruptionBudget for {sorted(PDB_REQUIRED - covered)}"


# ----------------------------------------------------------------------------- probes everywhere


def test_long_running_containers_have_probes(resources):
    for name, obj in long_running(resources).items():
        if name in NO_PROBES:
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{name}/{c['name']}: probes"


# ----------------------------------------------------------------------------- stateful infrastructure


@pytest.mark.parametrize("name,data_dir", [("postgres", "/var/lib/postgresql/data"), ("redis", "/data")])
def test_databases_are_statefulsets_with_their_own_volumes(resources, name, data_dir):
    sts = resources[("StatefulSet", name)]
    templates = {t["metadata"]["name"]: t for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in h.container(resources, name)["volumeMounts"]}
    assert mounts.get(data_dir) in templates, f"{name}: {data_dir} is not on a volumeClaimTemplate"
    assert templates[mounts[data_dir]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    svc = resources[("Service", sts["spec"]["serviceName"])]
    assert svc["spec"].get("clusterIP") == "None", f"{name}: its governing Service must be headless"
    assert selects({"matchLabels": svc["spec"]["selector"]}, h.pod_labels(sts))
    if name == "postgres":
        pgdata = next(e["value"] for e in h.container(resources, name)["env"] if e["name"] == "PGDATA")
        assert pgdata.startswith(data_dir + "/")


def test_namespace_is_one_everywhere(resources):
    ns = namespace()
    assert ("Namespace", ns) in resources
    for (kind, name), obj in resources.items():
        assert obj["metadata"].get("namespace") in (None, ns), f"{kind}/{name} pins another namespace"


# ----------------------------------------------------------------------------- ingress


def test_ingress_terminates_tls_for_the_gateway(resources):
    ing = resources[("Ingress", "gateway")]
    tls_hosts = {host for tls in ing["spec"]["tls"] for host in tls["hosts"]}
    rule_hosts = {rule["host"] for rule in ing["spec"]["rules"]}
    assert rule_hosts and rule_hosts <= tls_hosts, "a host served without TLS"
    for rule in ing["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            svc = resources[("Service", backend["name"])]
            port = backend["port"]
            assert any(
                p.get("name") == port.get("name") or p["port"] == port.get("number")
                for p in svc["spec"]["ports"]
            )
    size = ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()
    limit = int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    assert limit >= Settings().max_upload_bytes, "the ingress refuses uploads the gateway accepts"


# ----------------------------------------------------------------------------- network policies


def allowed(resources, src_labels: dict | None, src_namespace: str, dst: str, port: int) -> bool:
    """Whether the NetworkPolicies let a pod (SRC_LABELS in SRC_NAMESPACE) reach workload DST:PORT."""
    dst_labels = h.pod_labels(
        resources[next(k for k in resources if k[1] == dst and k[0] in ("Deployment", "StatefulSet"))]
    )
    policies = [
        p
        for (kind, _), p in resources.items()
        if kind == "NetworkPolicy"
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], dst_labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            for peer in rule.get("from") or [{}]:
                ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
                if ns_sel is not None:
                    ns_ok = selects(ns_sel, {"kubernetes.io/metadata.name": src_namespace})
                else:
                    ns_ok = src_namespace == namespace()
                pod_ok = pod_sel is None or (src_labels is not None and selects(pod_sel, src_labels))
                if peer == {} or (ns_ok and pod_ok):
                    return True
    return False


def test_network_policies_deny_by_default_and_allow_every_real_flow(resources):
    ns = namespace()
    assert any(
        kind == "NetworkPolicy" and obj["spec"]["podSelector"] == {} and not obj["spec"].get("ingress")
        for (kind, _), obj in resources.items()
    ), "no default-deny policy"
    flows = []
    needs_model = {n for n, env in h.compose_needed_env().items() if "MODEL_SERVER" in env}
    for _, name in h.workloads(resources):
        env = h.container_env(resources, h.container(resources, name))
        for var in ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL"):
            if var in env and name not in ("postgres", "redis"):
                u = urlsplit(env[var])
                flows.append((name, u.hostname, u.port))
        if "MODEL_SERVER" in env and name in needs_model:
            host, port = env["MODEL_SERVER"].rsplit(":", 1)
            flows.append((name, host, int(port)))
    assert flows
    for src, dst, port in flows:
        src_labels = h.pod_labels(next(obj for (k, n), obj in h.workloads(resources).items() if n == src))
        assert allowed(resources, src_labels, ns, dst, port), f"NetworkPolicy blocks {src} -> {dst}:{port}"
    assert not allowed(resources, {"app.kubernetes.io/name": "intruder"}, ns, "postgres", 5432)
    assert not allowed(resources, None, "default", "gateway", 8000)
    assert allowed(resources, None, "ingress-nginx", "gateway", 8000), (
        "the ingress controller cannot reach the gateway"
    )
    keda_port = int(
        resources[("ScaledObject", "fer-worker")]["spec"]["triggers"][0]["metadata"]["address"].rsplit(
            ":", 1
        )[1]
    )
    assert allowed(resources, None, "keda", "redis", keda_port), "KEDA cannot read the queue lengths"
