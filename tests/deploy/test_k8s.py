"""Static checks of deploy/k8s/: every manifest parses, is wired together, and says the same
as docker-compose.yml (images, commands, environment, TF Serving configs).

Kubernetes keeps secrets out of the environment compose spells out: a value that carries a password
(DATABASE_URL, REDIS_URL) or is one (SESSION_SECRET) comes from a Secret (secretKeyRef), described
with placeholder values by secrets.example.yaml, which kustomization.yaml does not apply. So a
variable compose gives in plain text must be, in k8s, either the same plain value or a secretKeyRef
whose example value names the same host, port and database. Schema validation is in
test_k8s_schemas.py, the production properties (probes, scaling, budgets, secrets) in
test_k8s_production.py; both load this file's helpers."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

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
    "ServiceAccount": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "Namespace": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "Ingress": "networking.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "ScaledObject": "keda.sh/v1alpha1",  # KEDA's CRDs
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}
COMPONENT_FILES = {
    "namespace.yaml",
    "common-env.yaml",
    "redis.yaml",
    "postgres.yaml",
    "models.yaml",
    "tfserving.yaml",
    "gateway.yaml",
    "ingress.yaml",
    "fer-worker.yaml",
    "recommender.yaml",
    "keda-auth.yaml",
    "reconciler.yaml",
    "migrate.yaml",
    "network-policy.yaml",
    "prometheus.yaml",
}
# The Secrets the manifests expect, with placeholder values; never applied (see the module docstring).
SECRETS_EXAMPLE = "secrets.example.yaml"
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
# In k8s only (compose may add a service for it; then it must agree): python -m moodtunes.reconciler
RECONCILER = "reconciler"
COMMON_ENV_CONFIGMAP = "moodtunes-env"
# Plain variables k8s sets that compose need not (the cluster is production by definition).
K8S_ONLY_PLAIN_ENV = {"ENVIRONMENT": "production"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$|^KEY$", re.IGNORECASE)


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
    """Every document of every deploy/k8s/*.yaml, secrets.example.yaml included."""
    docs = []
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


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


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def workload(resources, name: str) -> dict:
    for kind in WORKLOAD_KINDS:
        if (kind, name) in resources:
            return resources[(kind, name)]
    raise AssertionError(f"no Deployment/StatefulSet/Job named {name}")


def workloads(resources) -> dict[tuple[str, str], dict]:
    return {key: obj for key, obj in resources.items() if key[0] in WORKLOAD_KINDS}


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"].get("labels") or {}


def all_containers(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    return list(spec.get("initContainers") or []) + list(spec["containers"])


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


def secret_ref(item: dict) -> tuple[str, str] | None:
    """(Secret name, key) of an env item read from a Secret, else None."""
    ref = (item.get("valueFrom") or {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def secret_value(resources, name: str, key: str) -> str:
    """The example value of KEY in Secret NAME (secrets.example.yaml)."""
    secret = resources.get(("Secret", name))
    assert secret is not None, f"no Secret {name} in {SECRETS_EXAMPLE}"
    data = secret.get("stringData") or {}
    assert key in data, f"Secret {name} has no key {key} in {SECRETS_EXAMPLE}"
    return str(data[key])


def container_env(resources, c: dict) -> dict[str, str]:
    """The container's environment; a secretKeyRef reads as its example value."""
    env = {}
    for source in c.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref:
            env.update({k: str(v) for k, v in resources[("ConfigMap", ref["name"])]["data"].items()})
    for item in c.get("env") or []:
        ref = secret_ref(item)
        env[item["name"]] = secret_value(resources, *ref) if ref else str(item.get("value", ""))
    return env


def secret_env_names(c: dict) -> set[str]:
    return {item["name"] for item in c.get("env") or [] if secret_ref(item)}


def looks_secret(name: str, value: str) -> bool:
    """A variable that is or carries a credential: by its name, or a URL with a password."""
    if SECRET_NAME.search(name):
        return True
    try:
        return "://" in value and bool(urlsplit(value).password)
    except ValueError:
        return False


def same_endpoint(a: str, b: str) -> bool:
    """Two URLs naming the same scheme, host, port and path (database), whatever the credentials."""
    ua, ub = urlsplit(a), urlsplit(b)
    return (ua.scheme, ua.hostname, ua.port, ua.path) == (ub.scheme, ub.hostname, ub.port, ub.path)


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
    assert SECRETS_EXAMPLE in files
    assert set(kustomization()["resources"]) == files - {"kustomization.yaml", SECRETS_EXAMPLE}, (
        "kustomization.yaml resources and the files in deploy/k8s/ differ"
    )


def test_the_secrets_example_is_never_applied(docs):
    """Placeholders only, and not in kustomization.yaml: `kubectl apply -k` cannot install a known
    password; the real Secrets are created first (deploy/README.md)."""
    assert SECRETS_EXAMPLE not in kustomization()["resources"]
    example = [doc for name, doc in docs if name == SECRETS_EXAMPLE]
    assert example and all(doc["kind"] == "Secret" for doc in example)
    for doc in example:
        assert "data" not in doc, f"Secret {doc['metadata']['name']}: use stringData placeholders"
        for key, value in doc["stringData"].items():
            assert "CHANGE_ME" in str(value), f"Secret {doc['metadata']['name']}/{key}: not a placeholder"
    for name, doc in docs:
        if name != SECRETS_EXAMPLE:
            assert doc.get("kind") != "Secret", f"{name}: Secrets are created out of band, not applied"


def test_workloads_exist(resources):
    for name in WORKLOADS:
        workload(resources, name)
    assert ("Job", "migrate") in resources
    assert ("Deployment", RECONCILER) in resources
    assert ("StatefulSet", "postgres") in resources and ("StatefulSet", "redis") in resources


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
    for (_, name), obj in workloads(resources).items():
        spec = pod_spec(obj)
        for volume in spec.get("volumes") or []:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in resources, f"{name}: {volume}"
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in resources, f"{name}: {volume}"
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in resources, f"{name}: no PVC {claim}"
        names = {v["name"] for v in spec.get("volumes") or []}
        names |= {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates") or []}
        for c in all_containers(obj):
            for mount in c.get("volumeMounts") or []:
                assert mount["name"] in names, f"{name}: mount of undeclared volume {mount['name']}"
            for source in c.get("envFrom") or []:
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in resources
                assert "secretRef" not in source, (
                    f"{name}: envFrom a whole Secret; name each variable (secretKeyRef)"
                )
            for item in c.get("env") or []:
                ref = secret_ref(item)
                if ref:
                    secret_value(resources, *ref)  # the Secret and its key exist


def test_images_pinned_and_match_compose(resources, compose):
    for (_, name), obj in workloads(resources).items():
        for c in all_containers(obj):
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (
                f"{name}: unpinned {image}"
            )
    for name, service in WORKLOADS.items():
        image = container(resources, name)["image"]
        assert image == compose["services"][service]["image"], (
            f"{name}: image {image} differs from compose's {compose['services'][service]['image']}"
        )


# ----------------------------------------------------------------------------- environment


def secret_backed_env(resources) -> set[str]:
    """Variables some k8s workload reads from a Secret: in k8s they carry credentials (Redis has a
    password there, compose's has none)."""
    return {
        n for obj in workloads(resources).values() for c in all_containers(obj) for n in secret_env_names(c)
    }


def test_common_env_configmap_matches_compose(resources, compose):
    """The ConfigMap is compose's common environment less what k8s reads from Secrets (plus
    K8S_ONLY_PLAIN_ENV)."""
    data = {k: str(v) for k, v in resources[("ConfigMap", COMMON_ENV_CONFIGMAP)]["data"].items()}
    common = {k: str(v) for k, v in compose["x-common-env"].items()}
    secret = secret_backed_env(resources)
    expected = {k: v for k, v in common.items() if not looks_secret(k, v) and k not in secret}
    for key, value in K8S_ONLY_PLAIN_ENV.items():
        if key not in common:
            expected[key] = value
    assert data == expected


def compose_needed_env() -> dict[str, set[str]]:
    """What each application service must be given, as test_compose.py states it."""
    return {k: set(v) for k, v in compose_helpers().NEEDED_ENV.items()}


@pytest.mark.parametrize("name", sorted(APP_WORKLOADS))
def test_app_env_matches_compose(resources, compose, name):
    """Plain values equal compose's; secret ones (from a Secret) name the same endpoint. A variable
    compose gives may be left out only when it is secret and the workload does not need it."""
    c = container(resources, name)
    refs = [s["configMapRef"]["name"] for s in c.get("envFrom") or [] if "configMapRef" in s]
    assert COMMON_ENV_CONFIGMAP in refs, f"{name} does not take envFrom {COMMON_ENV_CONFIGMAP}"
    k8s, from_secrets = container_env(resources, c), secret_env_names(c)
    theirs = compose_env(compose["services"][WORKLOADS[name]])
    needed = compose_needed_env().get(WORKLOADS[name], set())
    assert needed <= set(k8s), f"{name}: missing {sorted(needed - set(k8s))}"
    secret = secret_backed_env(resources)
    for var, value in theirs.items():
        if var not in k8s:
            assert (looks_secret(var, value) or var in secret) and var not in needed, (
                f"{name}: compose gives {var}, k8s not"
            )
        elif var in from_secrets:
            if "://" in value:
                assert same_endpoint(k8s[var], value), f"{name}: {var} names another endpoint than compose"
        else:
            assert k8s[var] == value, f"{name}: {var}={k8s[var]!r}, compose {value!r}"
    for var in set(k8s) - set(theirs) - from_secrets:
        in_configmap = var in resources[("ConfigMap", COMMON_ENV_CONFIGMAP)]["data"]
        assert in_configmap, f"{name}: plain {var} is in k8s only"


@pytest.mark.parametrize("name", sorted(APP_WORKLOADS | {RECONCILER}))
def test_secrets_reach_apps_only_through_secret_refs(resources, name):
    c = container(resources, name)
    for item in c.get("env") or []:
        if "value" in item:
            assert not looks_secret(item["name"], str(item["value"])), (
                f"{name}: {item['name']} is a credential in plain text"
            )


def test_env_hosts_are_k8s_services(resources, compose):
    env = {k: str(v) for k, v in compose["x-common-env"].items()}
    targets = {
        "DATABASE_URL": (urlsplit(env["DATABASE_URL"]).hostname, urlsplit(env["DATABASE_URL"]).port),
        "REDIS_URL": (urlsplit(env["REDIS_URL"]).hostname, urlsplit(env["REDIS_URL"]).port),
        "MODEL_SERVER": tuple(env["MODEL_SERVER"].rsplit(":", 1)),
    }
    # The Secrets' URLs too: services, the migrate Job's owner URL.
    for (kind, secret), obj in resources.items():
        if kind == "Secret":
            for key, value in (obj.get("stringData") or {}).items():
                if "://" in str(value):
                    u = urlsplit(str(value))
                    targets[f"{secret}/{key}"] = (u.hostname, u.port)
    for var, (host, port) in targets.items():
        assert ("Service", host) in resources, f"{var} names host {host}, which is no Service"
        ports = [p["port"] for p in resources[("Service", host)]["spec"]["ports"]]
        assert int(port) in ports, f"{var}: Service {host} does not expose {port}"


def test_postgres_credentials_match_database_urls(resources, compose):
    """The server's owner role is the owner URL's; the services' role is another one; the database
    is compose's."""
    env = container_env(resources, container(resources, "postgres"))
    owner = urlsplit(secret_value(resources, "moodtunes-postgres", "DATABASE_OWNER_URL"))
    assert (owner.username, owner.password, owner.path.lstrip("/")) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )
    app = urlsplit(secret_value(resources, "moodtunes-app", "DATABASE_URL"))
    assert app.username and app.username != owner.username, "the services must not connect as the owner"
    assert app.password and app.password != owner.password
    assert app.path == owner.path == urlsplit(compose["x-common-env"]["DATABASE_URL"]).path
    compose_pg = compose_env(compose["services"]["postgres"])
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == (
        compose_pg["POSTGRES_USER"],
        compose_pg["POSTGRES_DB"],
    )


def test_redis_password_matches_redis_url(resources):
    url = urlsplit(secret_value(resources, "moodtunes-app", "REDIS_URL"))
    assert url.password == secret_value(resources, "moodtunes-redis", "REDIS_PASSWORD")
    args = command_list(container(resources, "redis").get("args"))
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {i["name"]: secret_ref(i) for i in container(resources, "redis").get("env") or []}
    assert env["REDIS_PASSWORD"] == ("moodtunes-redis", "REDIS_PASSWORD")


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


IMAGE_DIRS = {"moodtunes/gateway": "gateway", "moodtunes/fer": "fer", "moodtunes/recommender": "recommender"}


def test_app_pods_run_as_the_image_user(resources):
    for name in sorted(APP_WORKLOADS | {RECONCILER}):
        svc_dir = IMAGE_DIRS[container(resources, name)["image"].split(":", 1)[0]]
        ctx = pod_spec(workload(resources, name)).get("securityContext") or {}
        assert ctx.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        c_ctx = container(resources, name).get("securityContext") or {}
        assert c_ctx.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
        dockerfile = (REPO / "services" / svc_dir / "Dockerfile").read_text()
        uid = re.findall(r"^USER\s+(\d+)", dockerfile, re.MULTILINE)
        assert uid and ctx.get("runAsUser") == int(uid[-1]), f"{name}: runAsUser != Dockerfile USER"


def test_reconciler(resources, compose):
    """`python -m moodtunes.reconciler` from an image that installs moodtunes-common; as compose
    runs it, when compose has it."""
    c = container(resources, RECONCILER)
    assert command_list(c.get("command")) + command_list(c.get("args")) == [
        "python",
        "-m",
        "moodtunes.reconciler",
    ]
    dockerfile = (REPO / "services" / IMAGE_DIRS[c["image"].split(":", 1)[0]] / "Dockerfile").read_text()
    assert "packages/moodtunes-common" in dockerfile
    assert importlib.util.find_spec("moodtunes.reconciler") is not None, "no module moodtunes.reconciler"
    env = container_env(resources, c)
    assert {"DATABASE_URL", "REDIS_URL"} <= set(env)
    assert secret_ref(next(i for i in c["env"] if i["name"] == "DATABASE_URL")) == (
        "moodtunes-app",
        "DATABASE_URL",
    )
    if RECONCILER in compose["services"]:
        theirs = compose["services"][RECONCILER]
        assert c["image"] == theirs["image"]
        assert command_list(c.get("command")) == command_list(theirs.get("command"))


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
    assert set(data) == {"models.config", "batching.config", "monitoring.config"}
    monitoring = parse_monitoring_config(data["monitoring.config"])
    assert monitoring == parse_monitoring_config((TFSERVING_DIR / "monitoring.config").read_text()), (
        "tfserving-config monitoring.config differs from deploy/tfserving/monitoring.config"
    )
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


def parse_monitoring_config(text: str):
    """TF Serving's MonitoringConfig text proto, strictly (the model server's own parser)."""
    from moodtunes_model_server.monitoring import MonitoringConfigProto

    return text_format.Parse(text, MonitoringConfigProto())


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


def test_fer_worker_replicas_are_the_autoscalers(resources):
    """No fixed count: KEDA owns it (test_k8s_production.py checks the ScaledObject)."""
    assert "replicas" not in workload(resources, "fer-worker")["spec"]
    assert resources[("ScaledObject", "fer-worker")]["spec"]["minReplicaCount"] >= 2


def test_migrate_job(resources, compose):
    """The owner migrates (DATABASE_OWNER_URL); DATABASE_URL is the services' role, which the
    migrations grant row rights (test_k8s_migrate_roles.py runs it)."""
    job = resources[("Job", "migrate")]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    c = container(resources, "migrate")
    env = container_env(resources, c)
    assert env.get("CATALOGUE_PATH") == compose_env(compose["services"]["migrate"])["CATALOGUE_PATH"]
    refs = {i["name"]: secret_ref(i) for i in c.get("env") or []}
    assert refs["DATABASE_OWNER_URL"] == ("moodtunes-postgres", "DATABASE_OWNER_URL")
    assert refs["DATABASE_URL"] == ("moodtunes-app", "DATABASE_URL")
