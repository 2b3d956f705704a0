"""The pipeline benchmark's CPU accounting: the CPU time it charges to a program group is that of
the group's processes and all their descendants (Celery's pool children, PostgreSQL's backends)."""

import contextlib
import http.server
import json
import subprocess
import sys
import threading
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


def test_the_pre_encoded_upload_is_the_photo_and_mode_as_a_form(bench, face_jpeg):
    """The body encoded once and sent by every job parses back (as the gateway parses it) into the
    photo, byte for byte, and the benchmark's mode."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    async def echo(request):
        form = await request.form()
        image = form["image"]
        data = await image.read()
        return JSONResponse(
            {
                "filename": image.filename,
                "type": image.content_type,
                "same": data == face_jpeg,
                "mode": form["mode"],
            }
        )

    body, headers = bench.job_upload("http://testserver", face_jpeg)
    with TestClient(Starlette(routes=[Route("/v1/jobs", echo, methods=["POST"])])) as client:
        got = client.post("/v1/jobs", content=body, headers=headers).json()
    assert got == {"filename": "face.jpg", "type": "image/jpeg", "same": True, "mode": bench.MODE}


class FakeGateway(http.server.BaseHTTPRequestHandler):
    """A stand-in gateway for the benchmark's client: subclasses answer POST/GET with `answer`."""

    protocol_version = "HTTP/1.1"

    def answer(self, status: int, payload: dict, cookie: str | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if cookie:
            self.send_header("set-cookie", f"{cookie}; Path=/; HttpOnly; SameSite=Lax")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def job_client_of(bench, handler: type[FakeGateway]):
    """The benchmark's JobClient, talking to `handler` served on a free port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = bench.JobClient(f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield client
    finally:
        client.close()
        server.shutdown()


def test_a_job_client_sends_back_the_session_cookie_it_was_given(bench):
    """The gateway shows a job to the session that made it: the client keeps the cookie its first
    POST got and sends it with the long polls that follow."""
    seen = []

    class Gateway(FakeGateway):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            seen.append((self.path, self.headers.get("cookie")))
            self.answer(202, {"status": "queued", "status_url": "/v1/jobs/j1"}, cookie="moodtunes_session=s1")

        def do_GET(self):
            seen.append((self.path, self.headers.get("cookie")))
            ok = self.headers.get("cookie") == "moodtunes_session=s1"
            self.answer(
                200 if ok else 404, {"status": "failed" if ok else "unknown", "error": {"code": "no_face"}}
            )

    with job_client_of(bench, Gateway) as client:
        result = bench.one_job(client, (b"photo", {"content-type": "image/jpeg"}))
    assert result == {"ok": False, "error": "no_face", "ms": result["ms"]}
    assert seen == [
        (f"/v1/jobs?wait={bench.LONG_POLL_S}", None),  # the POST waits first ...
        (f"/v1/jobs/j1?wait={bench.LONG_POLL_S}", "moodtunes_session=s1"),  # ... then a long poll
    ]


def test_a_job_finished_within_the_posts_wait_is_one_request(bench):
    """A gateway that answers the waiting POST with the finished job (200) gets no status request;
    the job's own timestamps give its stage times."""
    seen = []
    done = {
        "status": "done",
        "created_at": "2026-12-06T10:00:00.000+00:00",
        "started_at": "2026-12-06T10:00:00.010+00:00",
        "finished_at": "2026-12-06T10:00:00.090+00:00",
    }

    class Gateway(FakeGateway):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            seen.append(self.path)
            self.answer(200, done)

    with job_client_of(bench, Gateway) as client:
        result = bench.one_job(client, (b"photo", {"content-type": "image/jpeg"}))
    assert result["ok"] and seen == [f"/v1/jobs?wait={bench.LONG_POLL_S}"]
    assert result["stages"]["queued_ms"] == pytest.approx(10.0)
    assert result["stages"]["server_total_ms"] == pytest.approx(90.0)


def test_each_client_of_the_closed_loop_has_one_job_in_flight_at_a_time(bench, monkeypatch):
    """c clients, c threads: a client's next job starts when its last is done (a connection is
    never shared by two requests), and the level runs exactly n jobs."""
    from concurrent.futures import ThreadPoolExecutor

    in_flight: dict = {}
    overlaps = []
    lock = threading.Lock()

    def fake_job(client, upload):
        with lock:
            in_flight[client] = in_flight.get(client, 0) + 1
            overlaps.append(in_flight[client] > 1)
        time.sleep(0.002)
        with lock:
            in_flight[client] -= 1
        return {"ok": True, "ms": 2.0, "stages": {}}

    monkeypatch.setattr(bench, "one_job", fake_job)
    clients = [f"client-{i}" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        jobs = [
            j for part in pool.map(bench.closed_loop(37, None, time.perf_counter()), clients) for j in part
        ]
    assert len(jobs) == 37 and not any(overlaps)
    assert all(j["finished_s"] >= j["sent_s"] for j in jobs)


def test_the_steady_rate_counts_only_while_every_client_is_busy(bench):
    """2 clients; the window runs from the second job done (1.0 s) to the last job sent (3.0 s):
    the jobs done at 2.0 and 3.0 s count, the one done later (the drain) does not."""
    jobs = [
        {"ok": True, "sent_s": 0.0, "finished_s": 0.5},
        {"ok": True, "sent_s": 0.0, "finished_s": 1.0},
        {"ok": True, "sent_s": 0.5, "finished_s": 2.0},
        {"ok": True, "sent_s": 1.0, "finished_s": 3.0},
        {"ok": True, "sent_s": 3.0, "finished_s": 9.0},
    ]
    assert bench.steady_rate(jobs, 2) == 1.0  # 2 jobs in 2 s
    assert bench.steady_rate(jobs[:2], 2) is None  # no job done after every client's first


def test_the_ratio_pools_paired_runs_taken_in_alternating_order(bench, capsys):
    """Three rounds: floor then pipeline, pipeline then floor, floor then pipeline. Each side's
    rate pools its runs (all jobs over all seconds), so a slow round weighs by its length."""
    calls = []
    floor_runs = iter([(240, 15.0), (240, 16.0), (240, 17.0)])
    pipeline_runs = iter([(240, 20.0), (240, 18.0), (239, 22.0)])

    def run_floor():
        calls.append("floor")
        return next(floor_runs)

    def run_pipeline():
        calls.append("pipeline")
        return next(pipeline_runs)

    paired = bench.paired_ratio(run_floor, run_pipeline, rounds=3)
    assert calls == ["floor", "pipeline", "pipeline", "floor", "floor", "pipeline"]
    assert [r["first"] for r in paired["rounds"]] == ["floor", "pipeline", "floor"]
    assert [r["ratio"] for r in paired["rounds"]] == [0.75, 0.889, 0.77]
    assert paired["floor_jobs_per_s"] == 15.0  # 720 jobs in 48 s
    assert paired["pipeline_jobs_per_s"] == 11.98  # 719 jobs in 60 s
    assert paired["ratio"] == round((719 / 60) / 15.0, 3)


def test_paired_runs_charge_each_sides_cpu_to_its_programs(bench, monkeypatch):
    """The probe is read around every run: what a program spent during the floor's runs is the
    floor's, per floor job; the benchmark process's own CPU is reported as "benchmark"."""
    spent = {"fer-worker": 0.0, "postgres": 0.0}
    side = {}

    def run_floor():
        spent["postgres"] += 0.2  # the floor's playlist queries
        side["now"] = "floor"
        return 100, 10.0

    def run_pipeline():
        spent["fer-worker"] += 10.0
        spent["postgres"] += 0.5
        side["now"] = "pipeline"
        return 80, 10.0

    ticks = iter(range(100))
    monkeypatch.setattr(bench.time, "process_time", lambda: float(next(ticks)))
    paired = bench.paired_ratio(run_floor, run_pipeline, rounds=2, cpu_probe=lambda: dict(spent))
    floor, pipeline = paired["cpu_ms_per_job"]["floor"], paired["cpu_ms_per_job"]["pipeline"]
    assert (floor["fer-worker"], floor["postgres"]) == (0.0, 2.0)  # 0.4 s over 200 jobs
    assert (pipeline["fer-worker"], pipeline["postgres"]) == (125.0, 6.2)  # 20 s, 1 s over 160
    assert floor["benchmark"] == 10.0  # one tick (1 s) per run: 2 s over 200 jobs
