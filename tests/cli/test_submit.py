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
