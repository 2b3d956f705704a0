"""Static checks of docker-compose.yml and the TF Serving configs it mounts.

No Docker engine runs here, so the compose file is validated by reading it: these tests
must fail when it drifts from the Dockerfiles, the TF Serving configs or the export layout.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"

REQUIRED_SERVICES = {"redis", "postgres", "tfserving", "migrate", "gateway", "fer-worker", "recommender"}
APP_SERVICES = {"migrate", "gateway", "fer-worker", "recommender"}
# The services' database role, its password from the environment (or .env), with a laptop default.
APP_DATABASE_URL = (
    "postgresql://moodtunes_app:${MOODTUNES_DB_APP_PASSWORD:-moodtunes-app-local}@postgres:5432/moodtunes"
)
COMMON_ENV = {
    "DATABASE_URL": APP_DATABASE_URL,
    "REDIS_URL": "redis://redis:6379/0",
    "MODEL_SERVER": "tfserving:8500",
    "MODEL_NAME": "fer_vgg16",
    "MODEL_SIGNATURE": "serving_default",
    "MODELS_DIR": "/models",
}
# What each application service must be given.
NEEDED_ENV = {
    "migrate": {"DATABASE_URL", "DATABASE_OWNER_URL"},  # the owner migrates, then grants DATABASE_URL's role
    "gateway": {"DATABASE_URL", "REDIS_URL", "MODEL_SERVER"},  # /readyz checks the model server
    "fer-worker": {
        "DATABASE_URL",
        "REDIS_URL",
        "MODEL_SERVER",
        "MODEL_NAME",
        "MODEL_SIGNATURE",
        "MODELS_DIR",
    },
    "recommender": {"DATABASE_URL", "REDIS_URL"},
}
CELERY_QUEUES = {"fer-worker": "fer", "recommender": "recommend"}


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml is missing at the repository root"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_list(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def flags(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            key, val = arg[2:].split("=", 1)
            out[key] = val
    return out


INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """What compose makes of ${VAR}, ${VAR:-default} and ${VAR:?error} with ENV as the environment."""
    env = env or {}

    def one(m: re.Match) -> str:
        if env.get(m[1]):
            return env[m[1]]
        assert "?" not in m[0], f"{m[1]} is required and unset"
        return m[2] or ""

    return INTERPOLATION.sub(one, value)


def variables(value: str) -> set[str]:
    return {m[1] for m in INTERPOLATION.finditer(value)}


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each volume, short or long syntax."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            source, target = parts[0], parts[1]
            mode = parts[2] if len(parts) > 2 else "rw"
            mounts.append((source, target, "ro" in mode.split(",")))
        else:
            mounts.append((vol.get("source", ""), vol["target"], bool(vol.get("read_only"))))
    return mounts


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def host_path_for(service: dict, container_path: str) -> Path | None:
    """Map a container path back to the repository through the service's bind mounts."""
    best = None
    for source, target, _ in volume_mounts(service):
        if not is_bind(source):
            continue
        t = target.rstrip("/")
        inside = container_path == t or container_path.startswith(t + "/")
        if inside and (best is None or len(t) > len(best[1])):
            best = (source, t)
    if best is None:
        return None
    rest = container_path[len(best[1]) :].lstrip("/")
    host = (REPO / best[0]).resolve()
    return host / rest if rest else host


def image_tag(image: str) -> str | None:
    if "@sha256:" in image:
        return "@digest"
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else None


@functools.cache
def batching_parameters_class():
    """tensorflow.serving.BatchingParameters (session_bundle_config.proto), which the
    tensorflow-serving-api wheel does not ship: rebuilt here so the file parses strictly."""
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="moodtunes_tests/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    msg = fdp.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    fields = [
        ("max_batch_size", ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", ".google.protobuf.Int64Value"),
        ("num_batch_threads", ".google.protobuf.Int64Value"),
        ("thread_pool_name", ".google.protobuf.StringValue"),
    ]
    for number, (name, type_name) in enumerate(fields, start=1):
        msg.field.add(
            name=name, number=number, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE, type_name=type_name
        )
    msg.field.add(name="allowed_batch_sizes", number=6, label=F.LABEL_REPEATED, type=F.TYPE_INT64)
    msg.field.add(name="pad_variable_length_inputs", number=7, label=F.LABEL_OPTIONAL, type=F.TYPE_BOOL)
    pool.Add(fdp)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    return message_factory.GetMessageClass(descriptor)


def parse_model_server_config(text: str):
    from moodtunes_tfserving.proto.tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def parse_batching_parameters(text: str):
    return text_format.Parse(text, batching_parameters_class()())


def tfserving_flags(compose: dict) -> dict[str, str]:
    return flags(command_list(compose["services"]["tfserving"].get("command")))


def models_config_path(compose: dict) -> Path:
    tfs = compose["services"]["tfserving"]
    path = host_path_for(tfs, tfserving_flags(compose)["model_config_file"])
    assert path is not None, "--model_config_file is not inside a bind mount of tfserving"
    return path


def batching_config_path(compose: dict) -> Path:
    tfs = compose["services"]["tfserving"]
    path = host_path_for(tfs, tfserving_flags(compose)["batching_parameters_file"])
    assert path is not None, "--batching_parameters_file is not inside a bind mount of tfserving"
    return path


def served_model(compose: dict):
    config = parse_model_server_config(models_config_path(compose).read_text())
    models = {m.name: m for m in config.model_config_list.config}
    name = compose["x-common-env"]["MODEL_NAME"]
    assert name in models, f"models.config does not configure MODEL_NAME={name!r} (has {sorted(models)})"
    return models[name]


def exported_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    )


# ----------------------------------------------------------------------------- structure


def test_compose_spec_has_no_version_key(compose):
    assert "version" not in compose, "the Compose spec has no top-level `version:`; remove it"


def test_required_services_exist(compose):
    missing = REQUIRED_SERVICES - set(compose["services"])
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_images_are_pinned(compose):
    for name, svc in compose["services"].items():
        image = svc.get("image")
        assert image or svc.get("build"), f"{name}: neither image nor build"
        if image:
            tag = image_tag(image)
            assert tag, f"{name}: image {image!r} has no tag"
            assert tag != "latest" and not tag.startswith("latest"), f"{name}: image {image!r} uses latest"


def test_infrastructure_images(compose):
    services = compose["services"]
    assert services["redis"]["image"].startswith("redis:7")
    assert re.fullmatch(r"pgvector/pgvector:(\d+\.\d+\.\d+-)?pg17(\S*)", services["postgres"]["image"])
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+-gpu", services["tfserving"]["image"]), (
        "tfserving must use a pinned GPU tag tensorflow/serving:<x.y.z>-gpu"
    )


def test_app_images_are_built_from_the_repo_root(compose):
    for name in ("gateway", "fer-worker", "recommender", "migrate"):
        build = compose["services"][name].get("build")
        assert isinstance(build, dict), f"{name}: build must name context and dockerfile"
        context = (REPO / build.get("context", ".")).resolve()
        assert context == REPO, f"{name}: build context must be the repo root"
        dockerfile = REPO / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {build['dockerfile']} does not exist"


# ----------------------------------------------------------------------------- TF Serving


def test_tfserving_has_an_nvidia_gpu_reservation(compose):
    devices = (
        compose["services"]["tfserving"]
        .get("deploy", {})
        .get("resources", {})
        .get("reservations", {})
        .get("devices")
        or []
    )
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in (d.get("capabilities") or [])
        and (d.get("count") == 1 or d.get("count") == "all" or d.get("device_ids"))
        for d in devices
    ), f"no nvidia GPU reservation on tfserving: {devices}"


def test_tfserving_command(compose):
    tfs = compose["services"]["tfserving"]
    f = tfserving_flags(compose)
    assert f.get("port") == "8500"
    assert f.get("rest_api_port") == "8501"
    assert f.get("enable_batching") == "true"
    assert f.get("model_config_file") == "/config/models.config"
    assert f.get("batching_parameters_file") == "/config/batching.config"
    assert int(f.get("file_system_poll_wait_seconds", "0")) > 0
    # The image's entrypoint script would add --model_name/--model_base_path: bypass it.
    assert command_list(tfs.get("entrypoint")) == ["tensorflow_model_server"]
    assert "healthcheck" in tfs


def test_tfserving_mounts(compose):
    mounts = {target: (source, ro) for source, target, ro in volume_mounts(compose["services"]["tfserving"])}
    assert mounts.get("/models") == ("./models", True)
    assert mounts.get("/config") == ("./deploy/tfserving", True)


def test_models_config_points_at_the_export_layout(compose):
    path = models_config_path(compose)
    assert path == REPO / "deploy" / "tfserving" / "models.config"
    assert path.is_file(), f"{path.relative_to(REPO)} does not exist"
    model = served_model(compose)
    assert model.model_platform in ("", "tensorflow")
    assert model.base_path == f"/models/{model.name}"
    host = host_path_for(compose["services"]["tfserving"], model.base_path)
    assert host == REPO / "models" / model.name, f"base_path maps to {host}, not models/{model.name}"


def test_exported_model_exists(compose):
    """models/<MODEL_NAME>/<int version>/saved_model.pb, where base_path maps to on the host."""
    model = served_model(compose)
    host = host_path_for(compose["services"]["tfserving"], model.base_path)
    versions = exported_versions(host)
    assert versions, (
        f"no exported version under {host.relative_to(REPO)}: expected "
        f"{host.relative_to(REPO)}/<int version>/saved_model.pb"
    )


def test_served_versions_have_the_classifier_head(compose):
    """The FER worker reads <MODELS_DIR>/<MODEL_NAME>/<version>/head/ for the served version(s)."""
    model = served_model(compose)
    host = host_path_for(compose["services"]["tfserving"], model.base_path)
    versions = exported_versions(host)
    assert versions, f"no exported version under {host.relative_to(REPO)}"
    policy = model.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "specific":
        served = list(policy.specific.versions)
    elif kind == "all":
        served = versions
    else:  # default: latest, 1 version
        n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        served = versions[-n:]
    for version in served:
        head = host / str(version) / "head"
        assert head.is_dir() and any(head.iterdir()), f"{head.relative_to(REPO)} missing or empty"


def test_batching_config_parses(compose):
    path = batching_config_path(compose)
    assert path == REPO / "deploy" / "tfserving" / "batching.config"
    assert path.is_file(), f"{path.relative_to(REPO)} does not exist"
    params = parse_batching_parameters(path.read_text())
    assert params.HasField("max_batch_size") and params.max_batch_size.value >= 1
    if params.HasField("batch_timeout_micros"):
        assert params.batch_timeout_micros.value >= 0
    if params.HasField("num_batch_threads"):
        assert params.num_batch_threads.value >= 1
    if params.allowed_batch_sizes:
        assert list(params.allowed_batch_sizes) == sorted(params.allowed_batch_sizes)
        assert params.allowed_batch_sizes[-1] == params.max_batch_size.value


# ----------------------------------------------------------------------------- environment


def test_common_env_anchor(compose):
    assert re.search(r"^x-common-env:\s*&common-env\s*$", COMPOSE_FILE.read_text(), re.MULTILINE), (
        "the shared environment must be the YAML anchor `x-common-env: &common-env`"
    )
    assert {k: str(v) for k, v in compose["x-common-env"].items()} == COMMON_ENV


@pytest.mark.parametrize("name", sorted(NEEDED_ENV))
def test_app_services_get_the_environment_they_need(compose, name):
    env = env_of(compose["services"][name])
    missing = NEEDED_ENV[name] - set(env)
    assert not missing, f"{name} lacks {sorted(missing)}"
    for key in set(env) & set(COMMON_ENV):
        assert env[key] == COMMON_ENV[key], f"{name}: {key} diverges from x-common-env"


def test_env_urls_point_at_compose_services(compose):
    services = compose["services"]
    pg_env = env_of(services["postgres"])
    for url in (COMMON_ENV["DATABASE_URL"], env_of(services["migrate"])["DATABASE_OWNER_URL"]):
        db = urlsplit(interpolate(url))
        assert db.hostname in services and db.hostname == "postgres" and (db.port or 5432) == 5432
        assert db.path.lstrip("/") == pg_env["POSTGRES_DB"]
    redis = urlsplit(COMMON_ENV["REDIS_URL"])
    assert redis.hostname == "redis" and (redis.port or 6379) == 6379
    host, port = env_of(services["fer-worker"])["MODEL_SERVER"].rsplit(":", 1)
    assert host == "tfserving" and port == tfserving_flags(compose)["port"]


def test_owner_and_application_database_roles(compose):
    """The migrate service alone has the owner's URL (POSTGRES_USER and POSTGRES_PASSWORD, whatever
    the environment sets); every service connects as another role, with its own password."""
    services = compose["services"]
    pg_env = env_of(services["postgres"])
    owner_url = env_of(services["migrate"])["DATABASE_OWNER_URL"]
    for env in ({}, {"MOODTUNES_DB_OWNER_PASSWORD": "o-secret", "MOODTUNES_DB_APP_PASSWORD": "a-secret"}):
        owner, app = urlsplit(interpolate(owner_url, env)), urlsplit(interpolate(APP_DATABASE_URL, env))
        assert (owner.username, owner.password) == (
            pg_env["POSTGRES_USER"],
            interpolate(pg_env["POSTGRES_PASSWORD"], env),
        )
        assert app.username and app.username != owner.username
        assert app.password and app.password != owner.password
    assert interpolate(APP_DATABASE_URL, {"MOODTUNES_DB_APP_PASSWORD": "a-secret"}).count("a-secret") == 1
    assert pg_env.get("POSTGRES_HOST_AUTH_METHOD", "scram-sha-256") not in ("trust", "password", "md5")
    for name, svc in services.items():
        if name != "migrate":
            assert "DATABASE_OWNER_URL" not in env_of(svc), f"{name} must not get the owner's credentials"


def test_passwords_come_from_the_environment(compose):
    """No password is written in the compose file: every one is a ${VARIABLE}, with at most a default."""
    for name, svc in compose["services"].items():
        for key, value in env_of(svc).items():
            secret = urlsplit(value).password if "://" in value else (value if "PASSWORD" in key else None)
            if secret:
                assert re.fullmatch(r"\$\{\w+(:-[^}]*)?\}", secret), f"{name}: {key} holds a literal password"
    for dockerfile in REPO.glob("services/*/Dockerfile"):
        text = dockerfile.read_text()
        assert not re.search(r"postgres(ql)?://[^\s/@]+:[^\s/@]+@", text), (
            f"{dockerfile}: credentials in an image"
        )
        assert "DATABASE_OWNER_URL" not in text and "PASSWORD" not in text, (
            f"{dockerfile}: a password in an image"
        )


def test_tfserving_model_name_matches_env(compose):
    assert served_model(compose).name == COMMON_ENV["MODEL_NAME"]
    # the healthcheck asks for the same model
    check = compose["services"]["tfserving"]["healthcheck"]["test"]
    assert f"/v1/models/{COMMON_ENV['MODEL_NAME']}" in " ".join(command_list(check))


# ----------------------------------------------------------------------------- workers


def test_fer_worker_mounts_the_models(compose):
    fer = compose["services"]["fer-worker"]
    models_dir = env_of(fer)["MODELS_DIR"]
    mounts = {target: (source, ro) for source, target, ro in volume_mounts(fer)}
    assert models_dir in mounts, f"fer-worker does not mount anything at MODELS_DIR={models_dir}"
    source, ro = mounts[models_dir]
    assert ro, "fer-worker must mount the models read-only"
    assert (REPO / source).resolve() == host_path_for(compose["services"]["tfserving"], "/models"), (
        "fer-worker and tfserving must see the same models directory"
    )


def test_fer_worker_is_scalable(compose):
    fer = compose["services"]["fer-worker"]
    assert "container_name" not in fer, "container_name prevents --scale fer-worker=N"
    assert not fer.get("ports"), "published host ports prevent --scale fer-worker=N"
    assert fer.get("deploy", {}).get("replicas") == 1


@pytest.mark.parametrize("name,queue", sorted(CELERY_QUEUES.items()))
def test_celery_queue_names(compose, name, queue):
    cmd = command_list(compose["services"][name].get("command"))
    assert cmd[:1] == ["celery"] and "worker" in cmd, f"{name}: not a celery worker command: {cmd}"
    queues = None
    for i, arg in enumerate(cmd):
        if arg in ("-Q", "--queues"):
            queues = cmd[i + 1]
        elif arg.startswith("--queues="):
            queues = arg.split("=", 1)[1]
    assert queues is not None, f"{name}: no -Q"
    assert queues.split(",") == [queue]


@pytest.mark.parametrize("name", sorted(CELERY_QUEUES))
def test_workers_run_without_gossip_or_mingle_as_the_local_stack_does(compose, name):
    from moodtunes_cli.localstack import CELERY_WORKER_FLAGS, service_processes

    cmd = command_list(compose["services"][name].get("command"))
    assert set(CELERY_WORKER_FLAGS) <= set(cmd)
    local = next(p for p in service_processes(Path("/x"), {}) if p.name == name)
    assert set(CELERY_WORKER_FLAGS) <= set(local.argv)


def test_fer_worker_takes_one_task_at_a_time(compose):
    cmd = command_list(compose["services"]["fer-worker"].get("command"))
    assert cmd[cmd.index("--concurrency") + 1] == "1"
    assert cmd[cmd.index("--prefetch-multiplier") + 1] == "1"


def test_gateway_command_and_port(compose):
    gw = compose["services"]["gateway"]
    assert command_list(gw.get("command"))[:2] == ["uvicorn", "moodtunes_gateway.main:app"]
    assert "8000:8000" in [str(p) for p in gw.get("ports", [])]


def test_migrate_is_one_shot(compose):
    migrate = compose["services"]["migrate"]
    cmd = command_list(migrate.get("command"))
    assert cmd[:2] == ["sh", "-c"]
    assert cmd[2] == (
        "python -m moodtunes.migrations upgrade && python -m moodtunes_recommender.catalogue load --default"
    )
    assert str(migrate.get("restart")) == "no"
    assert env_of(migrate).get("CATALOGUE_PATH", "").endswith("tracks_catalogue.csv.gz")


# ----------------------------------------------------------------------------- ordering, volumes


def depends(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}


def test_depends_on_conditions(compose):
    services = compose["services"]
    for name in ("gateway", "fer-worker", "recommender"):
        deps = depends(services[name])
        assert deps.get("redis") == "service_healthy", f"{name} must wait for redis healthy"
        assert deps.get("postgres") == "service_healthy", f"{name} must wait for postgres healthy"
        assert deps.get("migrate") == "service_completed_successfully", f"{name} must wait for migrate"
    assert depends(services["migrate"]).get("postgres") == "service_healthy"
    # every service waited on as healthy has a healthcheck
    for name, svc in services.items():
        for dep, condition in depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck but {name} waits on it"


def test_infra_healthchecks(compose):
    services = compose["services"]
    assert "redis-cli" in " ".join(command_list(services["redis"]["healthcheck"]["test"]))
    assert "pg_isready" in " ".join(command_list(services["postgres"]["healthcheck"]["test"]))


def test_named_volumes(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for source, _, _ in volume_mounts(svc):
            if source and not is_bind(source):
                used.add(source)
                assert source in declared, f"{name} uses undeclared named volume {source!r}"
    redis_named = [
        s for s, t, _ in volume_mounts(compose["services"]["redis"]) if t == "/data" and not is_bind(s)
    ]
    pg_named = [
        s
        for s, t, _ in volume_mounts(compose["services"]["postgres"])
        if t == "/var/lib/postgresql/data" and not is_bind(s)
    ]
    assert redis_named and pg_named, "redis /data and postgres data must be named volumes"
    assert "--appendonly" in command_list(compose["services"]["redis"].get("command"))
