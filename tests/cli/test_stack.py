"""`moodtunes stack up` (`make up`) fails politely: a taken port is named with the setting that moves
it before anything starts, and a start that fails later stops what this run had started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from moodtunes_cli import localstack
from moodtunes_cli.localstack import Process, free_port

PORT_SETTINGS = [
    "MOODTUNES_GATEWAY_PORT",
    "MOODTUNES_MODEL_SERVER_PORT",
    "MOODTUNES_POSTGRES_PORT",
    "MOODTUNES_REDIS_PORT",
]


def stack_up(var: Path, **env: str) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MOODTUNES_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return subprocess.run(
        [sys.executable, "-m", "moodtunes_cli.cli", "stack", "up"],
        env={**base, "MOODTUNES_VAR": str(var), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def started_anything(var: Path) -> list[Path]:
    return [p for p in var.rglob("*") if p.is_file()] if var.exists() else []


@pytest.mark.parametrize("held_setting", PORT_SETTINGS)
def test_a_taken_port_is_named_and_nothing_starts(tmp_path, held_setting):
    ports = {name: free_port() for name in PORT_SETTINGS}
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
    ports = {name: free_port() for name in PORT_SETTINGS}
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
    ports = {name: free_port() for name in PORT_SETTINGS}
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
    port = free_port()
    run = stack_up(
        tmp_path / "var",
        MOODTUNES_GATEWAY_PORT=str(port),
        MOODTUNES_MODEL_SERVER_PORT=str(port),
        MOODTUNES_POSTGRES_PORT=str(free_port()),
        MOODTUNES_REDIS_PORT=str(free_port()),
    )
    assert run.returncode == 1
    assert f"port {port} is set for both" in run.stderr and "MOODTUNES_MODEL_SERVER_PORT" in run.stderr
    assert started_anything(tmp_path / "var") == []


def test_a_bad_port_value_names_its_setting(tmp_path):
    run = stack_up(tmp_path / "var", MOODTUNES_REDIS_PORT="70000")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) == 1 and "MOODTUNES_REDIS_PORT" in run.stderr


@pytest.mark.integration
def test_a_failed_start_stops_what_this_run_started(tmp_path, database, monkeypatch):
    """The suite's PostgreSQL by URL, an embedded Redis started by this run, two service processes:
    one stays up, one dies at start. `up` fails, stops Redis and the live process it started, and
    leaves alone the process that was already running before it."""
    var, run_dir = tmp_path / "var", tmp_path / "var" / "run"
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    earlier = Process("earlier", sleep, run_dir).start()  # from an earlier `make up`
    fake = [
        Process("earlier", sleep, run_dir),
        Process("sleeper", sleep, run_dir),
        Process("crasher", [sys.executable, "-c", "raise SystemExit(3)"], run_dir),
    ]
    monkeypatch.setattr(localstack, "service_processes", lambda *a, **k: fake)
    redis_port = free_port()
    saved = dict(os.environ)
    try:
        os.environ.pop("REDIS_URL", None)
        os.environ.update(
            DATABASE_URL=database,
            MOODTUNES_REDIS_PORT=str(redis_port),
            MOODTUNES_GATEWAY_PORT=str(free_port()),
        )
        with pytest.raises(localstack.StackError) as failed:
            localstack.up(var)
        message = str(failed.value)
        assert "crasher exited during start-up" in message
        assert message.splitlines()[-1] == (
            "stopped what this run had started: embedded Redis, sleeper, crasher"
        )
        assert not listening(redis_port) and not (var / "redis" / "redis.pid").exists()
        assert not (run_dir / "sleeper.pid").exists()
        assert earlier.alive()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        from moodtunes.config import get_settings

        get_settings.cache_clear()
        earlier.stop()
