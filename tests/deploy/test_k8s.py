"""Static checks of deploy/k8s/: every manifest parses, is wired together, and says the same
as docker-compose.yml (images, commands, environment, TF Serving configs)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
TFSERVING_DIR = REPO / "deploy" / "tfserving"

API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "Job": "batch/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "Namespace": "v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}
COMPONENT_FILES = {
    "common-env.yaml",
    "redis.yaml",
    "postgres.yaml",
    "tfserving.yaml",
    "gateway.yaml",
    "fer-worker.yaml",
    "recommender.yaml",
    "migrate.yaml",
}
# k8s workload name -> compose service it mirrors
WORKLOADS = {
    "redis": "redis",
    "postgres": "postgres",
    "tfserving": "tfserving",
    "gateway": "gateway",
    "fer-worker": "fer-worker",
    "recommender": "recommender",
    "migrate": "migrate",
}
APP_WORKLOADS = {"gateway", "fer-worker", "recommender", "migrate"}
COMMON_ENV_CONFIGMAP = "moodtunes-env"


# ----------------------------------------------------------------------------- loading


def compose_helpers():
    """test_compose.py's helpers, loaded by path (works under any pytest import mode)."""
    spec = importlib.util.spec_from_file_location(
        "_moodtunes_deploy_compose", Path(__file__).with_name("test_compose.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


@pytest.fixture(scope="module")
def docs() -> list[tuple[str, dict]]:
    assert K8S.is_dir(), "deploy/k8s/ is missing"
    return load_documents()


@pytest.fixture(scope="module")
def resources(docs) -> dict[tuple[str, str], dict]:
    out = {}
    for _, doc in docs:
        if doc.get("kind") == "Kustomization":
            continue
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in out, f"duplicate {key}"
        out[key] = doc
    return out


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def workload(resources, name: str) -> dict:
    for kind in ("Deployment", "StatefulSet", "Job"):
        if (kind, name) in resources:
            return resources[(kind, name)]
    raise AssertionError(f"no Deployment/StatefulSet/Job named {name}")


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def container(resources, name: str) -> dict:
    containers = pod_spec(workload(resources, name))["containers"]
    return next((c for c in containers if c["name"] == name), containers[0])


def command_list(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def container_env(resources, c: dict) -> dict[str, str]:
    env = {}
    for source in c.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref:
            env.update({k: str(v) for k, v in resources[("ConfigMap", ref["name"])]["data"].items()})
    for item in c.get("env") or []:
        env[item["name"]] = str(item.get("value", ""))
    return env


def port_number(c: dict, port) -> int:
    if isinstance(port, int):
        return port
    for p in c.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {c['name']} has no port named {port!r}")


# ----------------------------------------------------------------------------- documents


def test_every_document_parses_with_a_valid_kind(docs):
    assert docs, "no manifests in deploy/k8s/"
    for filename, doc in docs:
        assert isinstance(doc, dict), f"{filename}: not a mapping"
        kind = doc.get("kind")
        assert kind in API_VERSIONS, f"{filename}: unexpected kind {kind!r}"
        assert doc.get("apiVersion") == API_VERSIONS[kind], (
            f"{filename}: {kind} must be apiVersion {API_VERSIONS[kind]}, not {doc.get('apiVersion')}"
        )
        if kind != "Kustomization":
            name = doc.get("metadata", {}).get("name", "")
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), f"{filename}: bad name {name!r}"


def test_one_file_per_component_and_kustomization_lists_them(docs):
    files = {p.name for p in K8S.glob("*.y*ml")}
    assert COMPONENT_FILES <= files, f"missing: {sorted(COMPONENT_FILES - files)}"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == files - {"kustomization.yaml"}, (
        "kustomization.yaml resources and the files in deploy/k8s/ differ"
    )


def test_workloads_exist(resources):
    for name in WORKLOADS:
        workload(resources, name)
    assert ("Job", "migrate") in resources


def test_selectors_match_pod_labels(resources):
    for (kind, name), obj in resources.items():
        if kind in ("Deployment", "StatefulSet"):
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector and selector.items() <= labels.items(), (
                f"{kind}/{name}: selector does not match its pods"
            )


def test_services_select_pods_and_ports(resources):
    pods = [
        (obj, pod_spec(obj)) for (kind, _), obj in resources.items() if kind in ("Deployment", "StatefulSet")
    ]
    for (kind, name), svc in resources.items():
        if kind != "Service":
            continue
        selector = svc["spec"]["selector"]
        matches = [
            (o, s) for o, s in pods if selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matches, f"Service/{name} selects no pods"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for _, spec in matches:
                assert any(
                    (
                        isinstance(target, int)
                        and any(p["containerPort"] == target for p in c.get("ports") or [])
                    )
                    or any(p.get("name") == target for p in c.get("ports") or [])
                    for c in spec["containers"]
                ), f"Service/{name}: targetPort {target} not on its pods"


def test_references_resolve(resources):
    for (kind, name), obj in resources.items():
        if kind not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = pod_spec(obj)
        for volume in spec.get("volumes") or []:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in resources, f"{name}: {volume}"
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in resources, f"{name}: no PVC {claim}"
        names = {v["name"] for v in spec.get("volumes") or []}
        for c in spec["containers"]:
            for mount in c.get("volumeMounts") or []:
                assert mount["name"] in names, f"{name}: mount of undeclared volume {mount['name']}"
            for source in c.get("envFrom") or []:
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in resources


def test_images_pinned_and_match_compose(resources, compose):
    for name, service in WORKLOADS.items():
        image = container(resources, name)["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: unpinned {image}"
        assert image == compose["services"][service]["image"], (
            f"{name}: image {image} differs from compose's {compose['services'][service]['image']}"
        )


# ----------------------------------------------------------------------------- environment


def test_common_env_configmap_matches_compose(resources, compose):
    data = resources[("ConfigMap", COMMON_ENV_CONFIGMAP)]["data"]
    expected = {k: str(v) for k, v in compose["x-common-env"].items()}
    assert {k: str(v) for k, v in data.items()} == expected


@pytest.mark.parametrize("name", sorted(APP_WORKLOADS))
def test_app_env_matches_compose(resources, compose, name):
    c = container(resources, name)
    refs = [s["configMapRef"]["name"] for s in c.get("envFrom") or [] if "configMapRef" in s]
    assert COMMON_ENV_CONFIGMAP in refs, f"{name} does not take envFrom {COMMON_ENV_CONFIGMAP}"
    assert container_env(resources, c) == compose_env(compose["services"][WORKLOADS[name]]), (
        f"{name}: environment differs from compose"
    )


def test_env_hosts_are_k8s_services(resources, compose):
    env = {k: str(v) for k, v in compose["x-common-env"].items()}
    targets = {
        "DATABASE_URL": re.search(r"@([^:/]+):(\d+)/", env["DATABASE_URL"]).groups(),
        "REDIS_URL": re.search(r"//([^:/]+):(\d+)", env["REDIS_URL"]).groups(),
        "MODEL_SERVER": tuple(env["MODEL_SERVER"].rsplit(":", 1)),
    }
    for var, (host, port) in targets.items():
        assert ("Service", host) in resources, f"{var} names host {host}, which is no Service"
        ports = [p["port"] for p in resources[("Service", host)]["spec"]["ports"]]
        assert int(port) in ports, f"{var}: Service {host} does not expose {port}"


def test_postgres_credentials_match_database_url(resources, compose):
    env = container_env(resources, container(resources, "postgres"))
    url = compose["x-common-env"]["DATABASE_URL"]
    user, password, db = re.search(r"//([^:]+):([^@]+)@[^/]+/(\w+)", url).groups()
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (user, password, db)


# ----------------------------------------------------------------------------- commands


@pytest.mark.parametrize("name", ["gateway", "fer-worker", "recommender", "migrate"])
def test_commands_match_compose(resources, compose, name):
    c = container(resources, name)
    k8s_cmd = command_list(c.get("command")) + command_list(c.get("args"))
    assert k8s_cmd == command_list(compose["services"][WORKLOADS[name]]["command"])


@pytest.mark.parametrize("name,queue", [("fer-worker", "fer"), ("recommender", "recommend")])
def test_celery_queues(resources, name, queue):
    cmd = command_list(container(resources, name).get("command"))
    assert cmd[cmd.index("-Q") + 1] == queue


def test_app_pods_run_as_the_image_user(resources):
    for name, svc_dir in (
        ("gateway", "gateway"),
        ("fer-worker", "fer"),
        ("recommender", "recommender"),
        ("migrate", "recommender"),
    ):
        ctx = pod_spec(workload(resources, name)).get("securityContext") or {}
        assert ctx.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        dockerfile = (REPO / "services" / svc_dir / "Dockerfile").read_text()
        uid = re.findall(r"^USER\s+(\d+)", dockerfile, re.MULTILINE)
        assert uid and ctx.get("runAsUser") == int(uid[-1]), f"{name}: runAsUser != Dockerfile USER"


# ----------------------------------------------------------------------------- tfserving


def test_tfserving_gpu_limit(resources):
    limits = container(resources, "tfserving").get("resources", {}).get("limits", {})
    assert str(limits.get("nvidia.com/gpu")) == "1", "tfserving needs limits nvidia.com/gpu: 1"
    image = container(resources, "tfserving")["image"]
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+-gpu", image)


def test_tfserving_matches_compose(resources, compose):
    c = container(resources, "tfserving")
    tfs = compose["services"]["tfserving"]
    assert command_list(c.get("command")) == command_list(tfs.get("entrypoint"))
    assert command_list(c.get("args")) == command_list(tfs.get("command"))
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {"/models", "/config"} <= set(mounts)
    assert all(mounts[p].get("readOnly") for p in ("/models", "/config"))
    volumes = {v["name"]: v for v in pod_spec(workload(resources, "tfserving"))["volumes"]}
    assert volumes[mounts["/config"]["name"]]["configMap"]["name"] == "tfserving-config"
    ports = {p["port"] for p in resources[("Service", "tfserving")]["spec"]["ports"]}
    assert 8500 in ports
    assert c.get("readinessProbe") and c.get("livenessProbe")


def test_tfserving_configmap_mirrors_deploy_tfserving(resources):
    from moodtunes_tfserving.proto.tensorflow_serving.config import model_server_config_pb2

    parse_batching_parameters = compose_helpers().parse_batching_parameters  # same strict parser

    data = resources[("ConfigMap", "tfserving-config")]["data"]
    assert set(data) == {"models.config", "batching.config"}
    k8s_models = text_format.Parse(data["models.config"], model_server_config_pb2.ModelServerConfig())
    assert k8s_models.model_config_list.config, "empty model_config_list"
    for model in k8s_models.model_config_list.config:
        assert model.base_path.startswith("/models/"), f"{model.name}: base_path outside /models"
    models_file = TFSERVING_DIR / "models.config"
    batching_file = TFSERVING_DIR / "batching.config"
    assert models_file.is_file() and batching_file.is_file(), "deploy/tfserving/*.config missing"
    file_models = text_format.Parse(models_file.read_text(), model_server_config_pb2.ModelServerConfig())
    assert k8s_models == file_models, (
        "tfserving-config models.config differs from deploy/tfserving/models.config"
    )
    k8s_batching = parse_batching_parameters(data["batching.config"])
    file_batching = parse_batching_parameters(batching_file.read_text())
    assert k8s_batching.SerializeToString(deterministic=True) == file_batching.SerializeToString(
        deterministic=True
    ), (
        f"tfserving-config batching.config differs from deploy/tfserving/batching.config:\n"
        f"{k8s_batching}\nvs\n{file_batching}"
    )


def test_models_volume_shared_by_tfserving_and_fer_workers(resources, compose):
    claims = {}
    for name in ("tfserving", "fer-worker"):
        spec = pod_spec(workload(resources, name))
        c = container(resources, name)
        volumes = {v["name"]: v for v in spec["volumes"]}
        models_dir = compose["x-common-env"]["MODELS_DIR"]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == models_dir)
        assert mount.get("readOnly"), f"{name}: models must be mounted read-only"
        claims[name] = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claims["tfserving"] == claims["fer-worker"]
    pvc = resources[("PersistentVolumeClaim", claims["tfserving"])]
    assert set(pvc["spec"]["accessModes"]) & {"ReadOnlyMany", "ReadWriteMany"}, (
        "several pods mount the models volume: it needs ReadOnlyMany or ReadWriteMany"
    )


# ----------------------------------------------------------------------------- probes, scale, job


def test_gateway_probes(resources):
    c = container(resources, "gateway")
    ready, live = c.get("readinessProbe"), c.get("livenessProbe")
    assert ready and ready["httpGet"]["path"] == "/readyz"
    assert live and live["httpGet"]["path"] == "/healthz"
    assert port_number(c, ready["httpGet"]["port"]) == 8000
    assert port_number(c, live["httpGet"]["port"]) == 8000
    svc_ports = resources[("Service", "gateway")]["spec"]["ports"]
    assert any(p["port"] == 8000 for p in svc_ports)


def test_infra_probes(resources):
    for name in ("redis", "postgres"):
        c = container(resources, name)
        assert c.get("readinessProbe") and c.get("livenessProbe"), f"{name}: probes"


def test_fer_worker_replicas(resources):
    assert workload(resources, "fer-worker")["spec"]["replicas"] == 2


def test_migrate_job(resources, compose):
    job = resources[("Job", "migrate")]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    env = container_env(resources, container(resources, "migrate"))
    assert env.get("CATALOGUE_PATH") == compose_env(compose["services"]["migrate"])["CATALOGUE_PATH"]
