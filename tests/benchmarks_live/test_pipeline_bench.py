"""The pipeline benchmark's CPU accounting: the CPU time it charges to a program group is that of
the group's processes and all their descendants (Celery's pool children, PostgreSQL's backends)."""

import subprocess
import sys
import time

import pytest

from tests.benchmarks_live import import_benchmark

BURN_S = 0.6
# a parent that idles while its child burns CPU, as a Celery worker's main process idles while
# its pool child runs the task
CHILD = f"import time\nt = time.process_time()\nwhile time.process_time() - t < {BURN_S}: pass\n"
CHILD += "time.sleep(60)"
PARENT = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {CHILD!r}])\n"
PARENT += "time.sleep(60)"


@pytest.fixture(scope="module")
def bench():
    return import_benchmark("pipeline")


class FakeSupervisor:
    def __init__(self, procs):
        self.procs = procs

    def processes(self):
        return self.procs


def test_cpu_seconds_charges_a_programs_children_to_its_group(bench):
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        supervisor = FakeSupervisor(
            [
                {"group": "fer-worker", "pid": parent.pid},
                {"group": "redis", "pid": idle.pid},
                {"group": "flower", "pid": 0},  # not running: no entry
            ]
        )
        deadline = time.monotonic() + 20
        while bench.cpu_seconds(supervisor)["fer-worker"] < BURN_S * 0.9:  # the parent alone: ~0.05 s
            assert time.monotonic() < deadline, "the child's CPU time never reached its group"
            time.sleep(0.05)
        after = bench.cpu_seconds(supervisor)
        assert set(after) == {"fer-worker", "redis"}
        assert after["redis"] < 0.2
    finally:
        for p in (parent, idle):
            p.kill()
            p.wait()
