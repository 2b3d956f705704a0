"""`moodtunes stack up` (`make up`) fails politely: a taken port is named with the setting that moves
it before anything starts, and a start that fails later stops what this run had started. And the
stack's PostgreSQL: password logins only, an application role with row rights and no DDL.
(Supervision itself, restarts and scaling: test_supervision.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from moodtunes_cli import localstack
from moodtunes_cli.localstack import APP_ROLE, Postgres, Process, free_port, free_ports
from moodtunes_cli.supervision import Supervisor

PORT_SETTINGS = [
    "MOODTUNES_GATEWAY_PORT",
    "MOODTUNES_MODEL_SERVER_PORT",
    "MOODTUNES_POSTGRES_PORT",
    "MOODTUNES_REDIS_PORT",
]
# Every other port `up` binds: metrics endpoints, Flower, Prometheus (when installed). Set to free
# ports in every run, so a stack on the default ports does not get in the way.
OTHER_PORT_SETTINGS = [
    "MOODTUNES_MODEL_SERVER_METRICS_PORT",
    "MOODTUNES_RECONCILER_METRICS_PORT",
    "MOODTUNES_RECOMMENDER_METRICS_PORT",
    "MOODTUNES_FER_METRICS_PORT",
    "MOODTUNES_FLOWER_PORT",
    "MOODTUNES_PROMETHEUS_PORT",
]


def stack_up(var: Path, **env: str) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MOODTUNES_") and k not in ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL")
    }
    given = [int(v) for k, v in env.items() if k.endswith("_PORT") and v.isdigit()]
    others = dict(
        zip(OTHER_PORT_SETTINGS, map(str, free_ports(len(OTHER_PORT_SETTINGS), avoid=given)), strict=True)
    )
    return subprocess.run(
        [sys.executable, "-m", "moodtunes_cli.cli", "stack", "up"],
        env={**base, "MOODTUNES_VAR": str(var), **others, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def started_anything(var: Path) -> list[Path]:
    return [p for p in var.rglob("*") if p.is_file()] if var.exists() else []


@pytest.mark.parametrize(
    "held_setting", [*PORT_SETTINGS, "MOODTUNES_FER_METRICS_PORT", "MOODTUNES_FLOWER_PORT"]
)
def test_a_taken_port_is_named_and_nothing_starts(tmp_path, held_setting):
    ports = dict(
        zip(
            [*PORT_SETTINGS, *OTHER_PORT_SETTINGS],
            free_ports(len(PORT_SETTINGS) + len(OTHER_PORT_SETTINGS)),
            strict=True,
        )
    )
    var = tmp_path / "var"
    with socket.socket() as holder:  # someone else's server on that port
        holder.bind(("127.0.0.1", ports[held_setting]))
        holder.listen()
        run = stack_up(var, **{k: str(v) for k, v in ports.items()})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert f"port {ports[held_setting]}" in lines[0] and held_setting in lines[0] and "in use" in lines[0]
    assert lines[-1] == "nothing was started"
    assert run.stdout == ""
    assert started_anything(var) == []
    assert not any(listening(p) for name, p in ports.items() if name != held_setting)


def test_every_taken_port_is_named_at_once(tmp_path):
    ports = dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True))
    holders = []
    try:
        for setting in ("MOODTUNES_GATEWAY_PORT", "MOODTUNES_REDIS_PORT"):
            s = socket.socket()
            s.bind(("127.0.0.1", ports[setting]))
            s.listen()
            holders.append(s)
        run = stack_up(tmp_path / "var", **{k: str(v) for k, v in ports.items()})
    finally:
        for s in holders:
            s.close()
    assert run.returncode == 1
    assert "MOODTUNES_GATEWAY_PORT" in run.stderr and "MOODTUNES_REDIS_PORT" in run.stderr
    assert "MOODTUNES_POSTGRES_PORT" not in run.stderr


def test_servers_given_by_url_need_no_embedded_port(tmp_path):
    """With DATABASE_URL and REDIS_URL set, the embedded servers' ports are not even checked."""
    ports = dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True))
    with socket.socket() as pg, socket.socket() as gw:
        pg.bind(("127.0.0.1", ports["MOODTUNES_POSTGRES_PORT"]))
        pg.listen()
        gw.bind(("127.0.0.1", ports["MOODTUNES_GATEWAY_PORT"]))
        gw.listen()
        run = stack_up(
            tmp_path / "var",
            DATABASE_URL="postgresql://x@127.0.0.1:1/x",
            REDIS_URL="redis://127.0.0.1:1/0",
            **{k: str(v) for k, v in ports.items()},
        )
    assert run.returncode == 1
    assert "MOODTUNES_GATEWAY_PORT" in run.stderr and "MOODTUNES_POSTGRES_PORT" not in run.stderr


def test_two_services_on_one_port(tmp_path):
    port, postgres_port, redis_port = free_ports(3)
    run = stack_up(
        tmp_path / "var",
        MOODTUNES_GATEWAY_PORT=str(port),
        MOODTUNES_MODEL_SERVER_PORT=str(port),
        MOODTUNES_POSTGRES_PORT=str(postgres_port),
        MOODTUNES_REDIS_PORT=str(redis_port),
    )
    assert run.returncode == 1
    assert f"port {port} is set for both" in run.stderr and "MOODTUNES_MODEL_SERVER_PORT" in run.stderr
    assert started_anything(tmp_path / "var") == []


def test_a_bad_port_value_names_its_setting(tmp_path):
    run = stack_up(tmp_path / "var", MOODTUNES_REDIS_PORT="70000")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) == 1 and "MOODTUNES_REDIS_PORT" in run.stderr


def _up_failing(var: Path, database: str, postgres, fake: list[Process], monkeypatch, redis_port: int) -> str:
    """`up` with the suite's PostgreSQL by URL (two roles), an embedded Redis and FAKE as the services;
    returns its StackError's message."""
    monkeypatch.setattr(localstack, "service_processes", lambda *a, **k: fake)
    monkeypatch.setattr(localstack, "monitor_processes", lambda *a, **k: [])
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setenv("DATABASE_OWNER_URL", postgres.owner_url)
    monkeypatch.setenv("MOODTUNES_REDIS_PORT", str(redis_port))
    monkeypatch.setenv("MOODTUNES_GATEWAY_PORT", str(free_ports(1, avoid=[redis_port])[0]))
    with pytest.raises(localstack.StackError) as failed:
        localstack.up(var)
    return str(failed.value)


SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASH = [sys.executable, "-c", "raise SystemExit(3)"]


@pytest.mark.integration
def test_a_failed_start_stops_what_this_run_started(tmp_path, database, postgres, monkeypatch):
    """One service program stays up, one dies at start: `up` fails naming the one that died, and
    stops supervisord with everything under it, since this run started it."""
    var, redis_port = tmp_path / "var", free_port()
    fake = [Process("sleeper", SLEEP, var / "run"), Process("crasher", CRASH, var / "run")]
    message = _up_failing(var, database, postgres, fake, monkeypatch, redis_port)
    assert "crasher exited during start-up" in message
    assert message.splitlines()[-1] == "stopped what this run had started: embedded Redis, sleeper, crasher"
    assert not Supervisor(var).running() and not (var / "supervisord.pid").exists()
    assert not listening(redis_port)


@pytest.mark.integration
def test_a_failed_start_leaves_an_earlier_program_running(tmp_path, database, postgres, monkeypatch):
    """Under a supervisord an earlier `up` started, a failed `up` stops only what it started itself:
    the embedded Redis and the live program it added; the earlier program keeps its process."""
    var = tmp_path / "var"
    redis_port = free_port()
    monkeypatch.setenv("SESSION_SECRET", "the-stack-secret")
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SESSION_SECRET": "the-stack-secret",
    }
    earlier = Process("earlier", SLEEP, var / "run", env)  # what `up` will configure, unchanged
    sup = Supervisor(var)
    sup.write_config([earlier])
    sup.start()
    try:
        sup.start_group("earlier", wait=True)
        pid = sup.group("earlier")[0]["pid"]
        fake = [
            Process("earlier", SLEEP, var / "run"),
            Process("sleeper", SLEEP, var / "run"),
            Process("crasher", CRASH, var / "run"),
        ]
        message = _up_failing(var, database, postgres, fake, monkeypatch, redis_port)
        assert (
            message.splitlines()[-1] == "stopped what this run had started: embedded Redis, sleeper, crasher"
        )
        states = {p["name"]: p for p in sup.processes()}
        assert states["earlier"]["statename"] == "RUNNING" and states["earlier"]["pid"] == pid
        assert states["sleeper"]["statename"] == "STOPPED" and states["redis"]["statename"] == "STOPPED"
        assert not listening(redis_port)
    finally:
        sup.shutdown()


# ----------------------------------------------------------------------------- database roles


@pytest.mark.integration
def test_the_application_role_has_row_rights_and_no_ddl(database):
    """What every service and every test connects as: reads and writes rows, changes no schema."""
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == APP_ROLE
        attrs = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = %s",
            (APP_ROLE,),
        ).fetchone()
        assert attrs == (False, False, False, False)
        conn.execute("DELETE FROM jobs WHERE false")
        conn.execute("UPDATE tracks SET popularity = popularity WHERE false")
        conn.rollback()
    for statement in (
        "DROP TABLE jobs",
        "CREATE TABLE intruder (id integer)",
        "ALTER TABLE jobs ADD COLUMN intruder integer",
        "TRUNCATE jobs",
        "DELETE FROM alembic_version",
    ):
        with psycopg.connect(database, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('intruder')").fetchone()[0] is None


@pytest.mark.integration
def test_tables_a_later_migration_creates_are_covered(database, postgres):
    """Default privileges: a table (and its sequence) the owner creates after the grants is usable by
    the application role at once, with no new GRANT, and still not droppable by it."""
    with psycopg.connect(postgres.owner_url, autocommit=True) as owner:
        owner.execute("CREATE TABLE later_migration_probe (id serial PRIMARY KEY, note text)")
    try:
        with psycopg.connect(database, autocommit=True) as app:
            app.execute("INSERT INTO later_migration_probe (note) VALUES ('x')")
            assert app.execute("SELECT note FROM later_migration_probe").fetchall() == [("x",)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("DROP TABLE later_migration_probe")
    finally:
        with psycopg.connect(postgres.owner_url, autocommit=True) as owner:
            owner.execute("DROP TABLE later_migration_probe")


@pytest.mark.integration
def test_logins_need_the_right_password(postgres):
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    app = conninfo_to_dict(postgres.app_url)
    for password in ("wrong", None):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(make_conninfo(**{**app, "password": password}), connect_timeout=3)
    with psycopg.connect(postgres.app_url, connect_timeout=3) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    hba = (postgres.data / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)


@pytest.mark.integration
def test_generated_passwords_are_private_and_kept(servers_root):
    """Generated on the first start (0600 files in a 0700 folder), reused on the next; an owner password
    lost from the var dir is replaced (set in single-user mode), as for a cluster from before the roles."""
    pg = Postgres(servers_root / "passwords-check", free_port())
    pg.start()
    try:
        assert oct(pg.secrets.stat().st_mode & 0o777) == "0o700"
        first = {}
        for role in ("moodtunes", APP_ROLE):
            path = pg.secrets / f"{role}.password"
            assert oct(path.stat().st_mode & 0o777) == "0o600"
            first[role] = path.read_text()
    finally:
        pg.stop()
    pg.start()
    try:
        assert {r: (pg.secrets / f"{r}.password").read_text() for r in first} == first
        psycopg.connect(pg.owner_url, connect_timeout=3).close()
    finally:
        pg.stop()
    (pg.secrets / "moodtunes.password").unlink()
    pg.start()
    try:
        assert (pg.secrets / "moodtunes.password").read_text() != first["moodtunes"]
        psycopg.connect(pg.owner_url, connect_timeout=3).close()
    finally:
        pg.stop()


class _Stop(Exception):
    pass


def test_model_server_batching_is_on_unless_the_setting_turns_it_off(tmp_path, monkeypatch):
    """MOODTUNES_MODEL_SERVER_BATCHING=false starts the model server without server-side batching
    (benchmarks/pipeline.py --no-batching compares the two)."""

    def model_server_argv(**kw) -> list[str]:
        procs = localstack.service_processes(Path("/x"), {}, **kw)
        return next(p.argv for p in procs if p.name == "model-server")

    on, off = model_server_argv(), model_server_argv(batching=False)
    assert "--enable_batching" in on
    assert f"--batching_parameters_file={localstack.REPO_ROOT / 'deploy/tfserving/batching.config'}" in on
    assert [a for a in off if "batching" in a] == []

    passed = {}

    def capture(*args, **kw):
        passed.update(kw)
        raise _Stop  # before anything starts

    monkeypatch.setattr(localstack, "service_processes", capture)
    for value, expected in (("false", False), ("true", True)):
        monkeypatch.setenv("MOODTUNES_MODEL_SERVER_BATCHING", value)
        with pytest.raises(_Stop):
            localstack.up(tmp_path / "var")
        assert passed["batching"] is expected


def test_the_embedded_postgres_takes_its_shared_buffers_from_the_setting(tmp_path, monkeypatch):
    """MOODTUNES_POSTGRES_SHARED_BUFFERS sizes the embedded server's page cache (a 10M-track
    catalogue's graphs need ~3.1 GB of it); a value PostgreSQL would refuse is a StackError naming
    the setting, before anything starts."""
    argvs: list[list[str]] = []
    real_process = localstack.Postgres.process

    def recorded(self):
        process = real_process(self)
        argvs.append(process.argv)
        return process

    def stop(*args, **kwargs):
        raise _Stop  # before anything starts

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(localstack.Postgres, "process", recorded)
    monkeypatch.setattr(localstack, "service_processes", stop)
    for value, expected in ((None, "256MB"), ("6GB", "6GB")):
        if value:
            monkeypatch.setenv("MOODTUNES_POSTGRES_SHARED_BUFFERS", value)
        with pytest.raises(_Stop):
            localstack.up(tmp_path / "var")
        assert f"shared_buffers={expected}" in argvs[-1]
    monkeypatch.setenv("MOODTUNES_POSTGRES_SHARED_BUFFERS", "lots")
    with pytest.raises(localstack.StackError, match="MOODTUNES_POSTGRES_SHARED_BUFFERS"):
        localstack.up(tmp_path / "var")
