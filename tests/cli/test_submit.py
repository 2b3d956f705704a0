"""`moodtunes submit` against a gateway that is not there, or goes away while --wait polls: one line
on stderr and exit code 1, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from moodtunes_cli.localstack import free_port


@pytest.fixture
def photo(tmp_path, face_jpeg):
    path = tmp_path / "face.jpg"
    path.write_bytes(face_jpeg)
    return path


def moodtunes(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MOODTUNES_")}
    return subprocess.run(
        [sys.executable, "-m", "moodtunes_cli.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def closed_port() -> int:
    port = free_port()
    with socket.socket() as s:  # nothing listens there now
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_submit_to_a_stack_that_is_down(photo):
    port = closed_port()
    run = moodtunes("submit", str(photo), "--url", f"http://127.0.0.1:{port}")
    assert run.returncode == 1
    assert run.stderr.splitlines() == [f"gateway not reachable at http://127.0.0.1:{port}: run `make up`"]
    assert run.stdout == ""


def test_default_url_follows_the_gateway_port_setting(photo):
    port = closed_port()
    run = moodtunes("submit", str(photo), "--wait", MOODTUNES_GATEWAY_PORT=str(port))
    assert run.returncode == 1
    assert run.stderr.splitlines() == [f"gateway not reachable at http://127.0.0.1:{port}: run `make up`"]


def test_moodtunes_url_wins_over_the_port_setting(photo):
    port, other = closed_port(), closed_port()
    run = moodtunes(
        "submit", str(photo), MOODTUNES_URL=f"http://127.0.0.1:{port}", MOODTUNES_GATEWAY_PORT=str(other)
    )
    assert run.returncode == 1 and f":{port}:" in run.stderr and str(other) not in run.stderr


class DyingGateway(BaseHTTPRequestHandler):
    """Accepts the job, answers one poll, then the whole server goes away."""

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self._json(202, {"id": "j1", "status": "queued", "status_url": "/v1/jobs/j1"})

    def do_GET(self):
        self._json(200, {"id": "j1", "status": "detecting"})
        threading.Thread(target=self.server.shutdown).start()

    def log_message(self, *args):
        pass


def test_gateway_that_dies_while_waiting(photo):
    server = ThreadingHTTPServer(("127.0.0.1", 0), DyingGateway)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moodtunes_cli.cli", "submit", str(photo), "--wait", "--url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        thread.join(timeout=60)
        server.server_close()  # the port now refuses connections
        out, err = proc.communicate(timeout=60)
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()
    assert proc.returncode == 1
    assert err.splitlines() == [
        "... detecting",
        f"gateway not reachable at {url}: run `make up` (job j1 was queued)",
    ]
    assert out == ""


class RecordingGateway(BaseHTTPRequestHandler):
    """Accepts a job with a session cookie and answers polls as done; records what each request
    carried (the Authorization header, the cookie)."""

    seen: list = []
    paths: list = []
    finish_waited_posts = False  # answer a POST with ?wait= as a gateway whose job finished in it

    def _json(self, status: int, body: dict, cookie: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> None:
        self.seen.append((self.command, self.headers.get("Authorization"), self.headers.get("Cookie")))
        self.paths.append(self.path)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self._record()
        if self.finish_waited_posts and "wait=" in self.path:
            self._json(200, {"id": "j1", "status": "failed", "error": {"code": "no_face", "message": "none"}})
            return
        self._json(
            202,
            {"id": "j1", "status": "queued", "status_url": "/v1/jobs/j1"},
            cookie="moodtunes_session=signed-by-the-gateway; HttpOnly; Path=/; SameSite=lax",
        )

    def do_GET(self):
        self._record()
        self._json(200, {"id": "j1", "status": "failed", "error": {"code": "no_face", "message": "none"}})

    def log_message(self, *args):
        pass


@pytest.fixture
def recording_gateway():
    RecordingGateway.seen, RecordingGateway.paths, RecordingGateway.finish_waited_posts = [], [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingGateway)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", RecordingGateway.seen
    finally:
        server.shutdown()
        server.server_close()


def test_submit_sends_the_api_key_from_the_environment(photo, recording_gateway):
    url, seen = recording_gateway
    run = moodtunes("submit", str(photo), "--wait", "--url", url, MOODTUNES_API_KEY="mt_0123_secret")
    assert run.returncode == 1 and "no_face" in run.stdout  # the job failed: exit 1
    assert [(method, auth) for method, auth, _ in seen] == [
        ("POST", "Bearer mt_0123_secret"),
        ("GET", "Bearer mt_0123_secret"),
    ]


def test_submit_without_a_key_keeps_the_session_cookie_while_it_polls(photo, recording_gateway):
    url, seen = recording_gateway
    run = moodtunes("submit", str(photo), "--wait", "--url", url)
    assert run.returncode == 1 and "no_face" in run.stdout
    assert seen == [("POST", None, None), ("GET", None, "moodtunes_session=signed-by-the-gateway")]


def test_submit_wait_is_one_request_when_the_job_finishes_within_the_posts_own_wait(photo, recording_gateway):
    url, seen = recording_gateway
    RecordingGateway.finish_waited_posts = True
    run = moodtunes("submit", str(photo), "--wait", "--url", url)
    assert run.returncode == 1 and "no_face" in run.stdout
    assert seen == [("POST", None, None)]  # no status request
    assert RecordingGateway.paths == ["/v1/jobs?wait=2.0"]


def test_submit_without_wait_does_not_ask_the_post_to_wait(photo, recording_gateway):
    url, seen = recording_gateway
    RecordingGateway.finish_waited_posts = True
    run = moodtunes("submit", str(photo), "--url", url)
    assert run.returncode == 0 and "j1 queued" in run.stdout
    assert RecordingGateway.paths == ["/v1/jobs"]


@pytest.fixture
def real_gateway(clean_jobs, redis_server, monkeypatch):
    """The real gateway app on a real port (no workers: jobs stay queued), real PostgreSQL/Redis;
    patient with the database on this busy machine (tests/gateway/conftest.py says why)."""
    import redis

    from moodtunes.config import get_settings
    from moodtunes.db import connection

    monkeypatch.setenv("GATEWAY_DB_TIMEOUT_S", "10")
    get_settings.cache_clear()
    from moodtunes_gateway.main import create_app
    from tests.gateway.live import serve

    redis.Redis.from_url(redis_server.url).flushdb()
    with connection() as conn:
        conn.execute("DELETE FROM api_keys")  # row rights only: no TRUNCATE
    with serve(create_app(), free_port()) as url:
        yield url
    monkeypatch.undo()
    get_settings.cache_clear()


def only_job_owner() -> str:
    from moodtunes.db import connection

    with connection() as conn:
        (row,) = conn.execute("SELECT client_key FROM jobs").fetchall()
    return row["client_key"]


@pytest.mark.integration
def test_a_job_submitted_with_a_key_belongs_to_the_key(photo, real_gateway):
    from moodtunes import api_keys

    key, token = api_keys.create("cli test")
    run = moodtunes("submit", str(photo), "--url", real_gateway, MOODTUNES_API_KEY=token)
    assert run.returncode == 0, run.stderr
    assert only_job_owner() == key.owner


@pytest.mark.integration
def test_an_anonymous_submit_can_poll_its_own_job(photo, real_gateway):
    """No key: the job is the session's, and --wait polls it with the cookie (a poll without the
    cookie would be a 404, which the CLI reports as an error); no worker runs, so it stays queued."""
    run = moodtunes("submit", str(photo), "--wait", "--timeout", "1.5", "--url", real_gateway)
    assert run.returncode == 1
    assert run.stdout.strip().endswith("still queued") and "answered 404" not in run.stderr
    assert only_job_owner().startswith("session:")


@pytest.mark.integration
def test_a_revoked_key_is_refused(photo, real_gateway):
    from moodtunes import api_keys

    key, token = api_keys.create()
    api_keys.revoke(key.id)
    run = moodtunes("submit", str(photo), "--url", real_gateway, MOODTUNES_API_KEY=token)
    assert run.returncode == 1
    assert run.stderr.startswith("rejected (401): api_key_revoked:")


@pytest.mark.integration
def test_submit_drive_group_is_stored_with_the_job(photo, real_gateway):
    from moodtunes.db import connection

    run = moodtunes("submit", str(photo), "--drive", "group", "--url", real_gateway)
    assert run.returncode == 0, run.stderr
    with connection() as conn:
        (row,) = conn.execute("SELECT drive FROM jobs").fetchall()
    assert row["drive"] == "group"
