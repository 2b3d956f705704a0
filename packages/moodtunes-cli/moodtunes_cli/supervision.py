"""supervisord under the local stack: it restarts any program that exits, as Kubernetes restarts a pod.

The stack's programs (localstack.Process) become `[program:x]` sections of a config written under the
var dir; supervisord runs daemonized with a unix socket there, and `make up`/`make down`/`moodtunes
stack status` talk to it over its XML-RPC API. Every program runs in the foreground in its own process
group (stopasgroup/killasgroup: a worker's pool children go with it), logs to <var>/logs/<name>.log and
is restarted as soon as it exits (autorestart, startsecs=1). Programs have autostart=false: `up`
starts them in order, PostgreSQL and Redis first, the services once the database is migrated.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from moodtunes.config import REPO_ROOT

if TYPE_CHECKING:
    from moodtunes_cli.localstack import Process

UP_STATES = {"STARTING", "RUNNING"}
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux
NOT_FOR_SERVICES = ("DATABASE_OWNER_URL",)  # the owner's credentials stay with `up` (migrations)


def _escape(value: str) -> str:
    """supervisord expands %(name)s in its values: a literal % is written %%."""
    return str(value).replace("%", "%%")


def program_argv(p: Process) -> list[str]:
    """P's command; "{n}" stands for the copy's number. Copies of a program that reads METRICS_PORT
    each get their own port, the first copy's plus n - 1: supervisord gives every copy the same
    environment and can only paste the number into it, so a shell adds it and execs the program."""
    if p.metrics_env and p.metrics_port is not None and p.numprocs > 1:
        script = f'METRICS_PORT=$(({p.metrics_port} + {{n}} - 1)) exec "$@"'
        return ["/bin/sh", "-c", script, p.name, *p.argv]
    return list(p.argv)


def program_section(p: Process, logs: Path) -> str:
    """The `[program:NAME]` section that runs P under supervisord."""
    command = " ".join(shlex.quote(_escape(a)) for a in program_argv(p)).replace("{n}", "%(process_num)d")
    name = "%(program_name)s" + ("-%(process_num)d" if p.numprocs > 1 else "")
    env = p.environment
    for key, value in env.items():
        if '"' in str(value) or "\n" in str(value):
            raise ValueError(f"{p.name}: environment value of {key} holds a quote or a newline")
    lines = [
        f"[program:{p.name}]",
        f"command={command}",
        f"numprocs={p.numprocs}",
        "numprocs_start=1",
        f"process_name={name}",
        f"directory={_escape(str(REPO_ROOT))}",
        f"priority={p.priority}",
        "autostart=false",
        "autorestart=true",
        "startsecs=1",
        "startretries=10",
        f"stopsignal={signal.Signals(p.stopsignal).name.removeprefix('SIG')}",
        f"stopwaitsecs={p.stopwait_s}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={_escape(str(logs))}/{name}.log",
        "stdout_logfile_maxbytes=10MB",
        "stdout_logfile_backups=2",
    ]
    if p.user:
        lines.append(f"user={p.user}")
    if env:
        lines.append("environment=" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(env.items())))
    return "\n".join(lines) + "\n"


@dataclass
class Supervisor:
    """The supervisord of one var dir: its config, socket, pid file and logs all live there."""

    var: Path

    @property
    def conf(self) -> Path:
        return self.var / "supervisord.conf"

    @property
    def sock(self) -> Path:
        return self.var / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.var / "supervisord.pid"

    @property
    def logs(self) -> Path:
        return self.var / "logs"

    def config_text(self, programs: list[Process]) -> str:
        head = f"""; written by `moodtunes stack up` on every start (moodtunes_cli.supervision): edit the code
[unix_http_server]
file={_escape(str(self.sock))}
chmod=0700

[supervisord]
logfile={_escape(str(self.logs / "supervisord.log"))}
logfile_maxbytes=10MB
logfile_backups=2
pidfile={_escape(str(self.pidfile))}
directory={_escape(str(REPO_ROOT))}
identifier=moodtunes

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{_escape(str(self.sock))}
"""
        return "\n".join([head, *(program_section(p, self.logs) for p in programs)])

    def write_config(self, programs: list[Process]) -> None:
        """Mode 0600: the services' environment holds the application role's password."""
        if len(str(self.sock)) > SOCKET_PATH_MAX:
            raise ValueError(f"supervisord's socket path is too long for a unix socket: {self.sock}")
        self.logs.mkdir(parents=True, exist_ok=True)
        tmp = self.conf.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.config_text(programs))
        tmp.replace(self.conf)

    def rpc(self):
        """The `supervisor` namespace of supervisord's XML-RPC API, over the unix socket."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        if not self.sock.exists():
            return False
        try:
            return self.rpc().getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def pid(self) -> int:
        return self.rpc().getPID()

    def start(self, timeout_s: float = 20.0) -> None:
        """Starts supervisord daemonized (it loads the config written before) and waits for its API."""
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in NOT_FOR_SERVICES}
        out = self.logs / "supervisord.out"  # what it says before its own log is open
        with open(out, "ab") as f:
            started = subprocess.run(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                timeout=timeout_s,
            )
        if started.returncode != 0:
            said = out.read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"supervisord exited with {started.returncode}: {said[0] if said else ''}")
        deadline = time.monotonic() + timeout_s
        while not self.running():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"supervisord did not answer on {self.sock}: see {self.logs}/supervisord.log"
                )
            time.sleep(0.1)

    def update(self) -> None:
        """Applies a rewritten config to a running supervisord, like `supervisorctl update`: groups
        that changed (command, environment, numprocs) are stopped and replaced, removed ones stopped."""
        rpc = self.rpc()
        added, changed, removed = rpc.reloadConfig()[0]
        for name in [*changed, *removed]:
            rpc.stopProcessGroup(name, True)
            rpc.removeProcessGroup(name)
        for name in [*changed, *added]:
            rpc.addProcessGroup(name)

    def processes(self) -> list[dict]:
        return self.rpc().getAllProcessInfo()

    def group(self, name: str) -> list[dict]:
        return [p for p in self.processes() if p["group"] == name]

    def live_groups(self) -> set[str]:
        """Groups with every process starting or running."""
        groups: dict[str, bool] = {}
        for p in self.processes():
            groups[p["group"]] = groups.get(p["group"], True) and p["statename"] in UP_STATES
        return {name for name, up in groups.items() if up}

    def start_group(self, name: str, wait: bool = False) -> None:
        self.rpc().startProcessGroup(name, wait)

    def signal_group(self, name: str, signal_name: str) -> None:
        """Sends SIGNAL_NAME (e.g. "HUP") to every running process of group NAME."""
        try:
            self.rpc().signalProcessGroup(name, signal_name)
        except xmlrpc.client.Fault:  # not running
            pass

    def stop_group(self, name: str) -> None:
        try:
            self.rpc().stopProcessGroup(name, True)
        except xmlrpc.client.Fault:  # not there (never added) or already stopped
            pass

    def shutdown(self, timeout_s: float = 90.0) -> None:
        """Stops every program (reverse priority: the gateway first, PostgreSQL last), then supervisord."""
        try:
            pid = self.pid()
            self.rpc().shutdown()
        except (OSError, xmlrpc.client.Error):
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"supervisord (pid {pid}) still runs {timeout_s:.0f}s after shutdown")


@dataclass
class SupervisedGroup:
    """A supervised program seen like a localstack.Process by wait_ready: a name, alive(), a log.

    alive() is False once any of its processes exited, even when supervisord has already restarted
    it: during start-up that is a crash to report, not to wait out."""

    supervisor: Supervisor
    name: str
    numprocs: int = 1
    first_pids: dict[str, int] = field(default_factory=dict)

    def alive(self) -> bool:
        procs = self.supervisor.group(self.name)
        for p in procs:
            if not self.first_pids.get(p["name"]):
                self.first_pids[p["name"]] = p["pid"]
            if p["statename"] not in UP_STATES or p["pid"] != self.first_pids[p["name"]]:
                return False
        return len(procs) == self.numprocs

    @property
    def log(self) -> Path:
        procs = self.supervisor.group(self.name)
        down = [p for p in procs if p["statename"] not in UP_STATES] or procs
        return Path(down[0]["stdout_logfile"]) if down else self.supervisor.logs / f"{self.name}.log"
