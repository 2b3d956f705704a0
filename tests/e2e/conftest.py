"""The whole stack as real processes: model server (newest exported model), FER worker,
recommender worker, reconciler and gateway (localstack.service_processes, what `make up` supervises),
wired to the suite's PostgreSQL as the application role and to their own Redis database."""

from __future__ import annotations

import pytest

from moodtunes.config import REPO_ROOT
from moodtunes_cli.localstack import free_ports, service_processes, wait_ready

MODELS_DIR = REPO_ROOT / "models"


@pytest.fixture(scope="module")
def stack(database, redis_server, tmp_path_factory):
    if not any(p.name.isdigit() for p in (MODELS_DIR / "fer_vgg16").glob("*")):
        pytest.fail("no exported model under models/fer_vgg16/: run `moodtunes fer export`")
    run_dir = tmp_path_factory.mktemp("stack")
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/1",
        "MODELS_DIR": str(MODELS_DIR),
        "JOB_TIMEOUT_S": "180",
    }
    gateway_port, model_port = free_ports(2)
    procs = service_processes(run_dir, env, model_port=model_port, gateway_port=gateway_port)
    for p in procs:
        p.start()
    base = f"http://127.0.0.1:{gateway_port}"
    try:
        wait_ready(base, timeout_s=240, processes=procs)
        yield {"url": base, "processes": procs, "env": env}
    finally:
        for p in reversed(procs):
            p.stop()
        for p in procs:  # keep the logs visible when something failed
            if p.log.exists():
                print(f"----- {p.name} log (tail) -----\n{p.log.read_text(errors='replace')[-2000:]}")
