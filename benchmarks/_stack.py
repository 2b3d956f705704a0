"""A throw-away local stack for benchmarks: `make up`'s own code (moodtunes_cli.localstack, under
supervisord) in a temporary var dir on free ports, so a benchmark never touches the user's stack."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class BenchStack:
    var: Path
    url: str
    model_server: str
    database_url: str
    owner_url: str
    redis_url: str

    def supervisor(self):
        from moodtunes_cli.supervision import Supervisor

        return Supervisor(self.var)


@contextlib.contextmanager
def temp_stack(
    fer_workers: int = 1, recommender_workers: int = 1, env: dict | None = None
) -> Iterator[BenchStack]:
    """Starts the whole stack (embedded PostgreSQL and Redis included); `env` reaches every service
    (e.g. limits raised for a load test). Stops it and removes its files on exit."""
    from moodtunes_cli import localstack

    # not under pytest's or the user's temp root: PostgreSQL runs as another user when we are root
    var = Path(tempfile.mkdtemp(prefix="moodtunes-bench-", dir="/tmp"))
    var.chmod(0o755)
    names = ("GATEWAY", "MODEL_SERVER", "POSTGRES", "REDIS")
    ports = dict(zip(names, localstack.free_ports(len(names)), strict=True))
    saved = dict(os.environ)
    os.environ.update({f"MOODTUNES_{k}_PORT": str(v) for k, v in ports.items()})
    os.environ.update(
        {"MOODTUNES_FER_WORKERS": str(fer_workers), "MOODTUNES_RECOMMENDER_WORKERS": str(recommender_workers)}
    )
    os.environ.update(env or {})
    for key in ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL"):
        os.environ.pop(key, None)
    try:
        localstack.up(var)
        db = localstack.database_env(var)
        stack = BenchStack(
            var=var,
            url=f"http://127.0.0.1:{ports['GATEWAY']}",
            model_server=f"127.0.0.1:{ports['MODEL_SERVER']}",
            database_url=db["DATABASE_URL"],
            owner_url=db["DATABASE_OWNER_URL"],
            redis_url=f"redis://127.0.0.1:{ports['REDIS']}/0",
        )
        os.environ.update({"DATABASE_URL": stack.database_url, "REDIS_URL": stack.redis_url})
        from moodtunes.config import get_settings

        get_settings.cache_clear()
        yield stack
    finally:
        try:
            localstack.down(var)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            shutil.rmtree(var, ignore_errors=True)
