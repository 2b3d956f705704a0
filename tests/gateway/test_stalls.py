"""A gateway that never stalls: blocking work runs off the event loop, a dead database is a fast
503, and an oversized upload is refused while it arrives, never buffered whole."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from moodtunes import db
from moodtunes.config import Settings
from moodtunes_cli.localstack import free_port
from tests.gateway.live import serve
from tests.gateway.test_jobs_api import assert_error, bearer, post

pytestmark = pytest.mark.integration


@pytest.fixture
def database_down(client, settings_env):
    """DATABASE_URL points at a port where no PostgreSQL listens, as after it stopped; the gateway
    waits for a connection as long as it does by default."""
    default_wait = Settings.model_fields["gateway_db_timeout_s"].default
    settings_env(
        DATABASE_URL=f"postgresql://moodtunes@127.0.0.1:{free_port()}/moodtunes",
        GATEWAY_DB_TIMEOUT_S=default_wait,
    )
    yield
    db.close_pools()  # the dead URL's pool keeps trying to connect otherwise


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def test_post_with_the_database_down_is_a_fast_503(client, database_down, face_jpeg):
    r, seconds = timed(lambda: post(client, face_jpeg))
    assert_error(r, 503, "database_unavailable")
    assert r.headers["Retry-After"] == "5"
    assert seconds < 3  # the shared pool would wait 10 s for a connection; a request waits 0.5 s
    assert Settings.model_fields["gateway_db_timeout_s"].default <= 0.5


def test_polls_and_keys_with_the_database_down_are_fast_503s(client, database_down):
    job = "00000000-0000-0000-0000-000000000000"
    client.cookies.set("moodtunes_session", client.app.state.sessions.new()[1])
    r, seconds = timed(lambda: client.get(f"/v1/jobs/{job}"))
    assert_error(r, 503, "database_unavailable")
    assert seconds < 3
    key = "mt_000000000000_" + "x" * 43  # checking a key needs the database too
    r, seconds = timed(lambda: client.get(f"/v1/jobs/{job}", headers=bearer(key)))
    assert_error(r, 503, "database_unavailable")
    assert seconds < 3


async def drive(app, headers: list[tuple[bytes, bytes]], chunks, pulled: list[int]) -> dict:
    """One HTTP request straight through the ASGI app; counts the body chunks the app pulls."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/jobs",
        "raw_path": b"/v1/jobs",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    chunks = iter(chunks)
    answer: dict = {"body": b""}

    async def receive():
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = dict(message["headers"])
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer


MB = 1 << 20
MULTIPART = (b"content-type", b"multipart/form-data; boundary=xyz")


def endless_upload(total: int):
    """A multipart body of `total` bytes, 1 MB at a time, generated as it is pulled."""
    yield b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
    for _ in range(total // MB):
        yield b"\xff" * MB


def test_a_declared_oversized_body_is_refused_before_it_is_read(client):
    pulled: list[int] = []
    answer = asyncio.run(drive(client.app, [MULTIPART, (b"content-length", b"209715200")], [], pulled))
    assert answer["status"] == 413
    assert json.loads(answer["body"])["error"]["code"] == "file_too_large"
    assert pulled == []  # not one byte of the 200 MB was asked for
    assert b"content-security-policy" in answer["headers"]  # refused early, still with the headers
    assert b"connection" not in answer["headers"]  # kept open: the client reads the 413, not a reset


def test_an_undeclared_oversized_body_is_cut_off_at_the_limit(client, settings_env):
    settings_env(MAX_UPLOAD_BYTES=2 * MB)
    pulled: list[int] = []
    answer = asyncio.run(drive(client.app, [MULTIPART], endless_upload(200 * MB), pulled))
    assert answer["status"] == 413
    assert json.loads(answer["body"])["error"]["code"] == "file_too_large"
    assert sum(pulled) <= 2 * MB + 64 * 1024 + MB  # stopped within a chunk of the limit, not at 200 MB
    assert answer["headers"][b"connection"] == b"close"  # and the sender is cut off


def test_a_real_server_answers_413_to_the_headers_alone(client, face_jpeg, settings_env):
    """Over a socket: the 413 comes back although the client never sends the body it announced;
    and a client that does send its too-large photo whole (as a browser does) reads the 413."""
    settings_env(MAX_UPLOAD_BYTES=len(face_jpeg) // 4)
    port = free_port()
    with serve(client.app, port) as url:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            s.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                b"Content-Length: 209715200\r\n\r\n"
            )
            head = s.recv(65536).split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 413")
        big = face_jpeg * 2  # well past the limit and its form allowance
        r = httpx.post(f"{url}/v1/jobs", files={"image": ("big.jpg", big)}, timeout=30)
        assert_error(r, 413, "file_too_large")


def test_blocking_work_does_not_stall_other_requests(client, face_jpeg, monkeypatch):
    """While a job's photo is being decoded (held here until the test lets go), /healthz and the
    API keep answering: the decode runs in the thread pool, not on the event loop."""
    from moodtunes_gateway.routes import jobs as routes

    decoding, release = threading.Event(), threading.Event()
    real_check = routes.check_image

    def slow_check(*args, **kwargs):
        decoding.set()
        release.wait(30)
        return real_check(*args, **kwargs)

    monkeypatch.setattr(routes, "check_image", slow_check)
    with serve(client.app, free_port()) as url:
        result = {}

        def upload_photo():
            result["r"] = httpx.post(f"{url}/v1/jobs", files={"image": ("a.jpg", face_jpeg)}, timeout=60)

        upload = threading.Thread(target=upload_photo)
        upload.start()
        try:
            assert decoding.wait(30), "the upload never reached the decoder"
            health = httpx.get(f"{url}/healthz", timeout=5)  # would time out with the loop blocked
            modes = httpx.get(f"{url}/v1/modes", timeout=5)
            assert health.json() == {"status": "ok"} and modes.status_code == 200
            assert upload.is_alive()  # the upload was still being decoded meanwhile
        finally:
            release.set()
            upload.join(60)
    assert result["r"].status_code == 202


def test_photo_decodes_are_capped_so_the_event_loop_keeps_a_core(
    client, face_jpeg, monkeypatch, settings_env
):
    """GATEWAY_DECODE_CONCURRENCY (default: cores - 1) caps how many uploads are decoded at once;
    the others wait for a slot, and every upload is still accepted."""
    from moodtunes_gateway.routes import jobs as routes

    settings_env(GATEWAY_DECODE_CONCURRENCY=1)
    routes.decode_slots.cache_clear()
    monkeypatch.setattr(routes.os, "cpu_count", lambda: 8)
    real_check, lock = routes.check_image, threading.Lock()
    state = {"now": 0, "most": 0}

    def counting_check(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.2)  # a slow decode: the other uploads arrive meanwhile
        with lock:
            state["now"] -= 1
        return real_check(*args, **kwargs)

    monkeypatch.setattr(routes, "check_image", counting_check)
    try:
        with serve(client.app, free_port()) as url:

            def upload(_):
                return httpx.post(
                    f"{url}/v1/jobs", files={"image": ("a.jpg", face_jpeg)}, timeout=60
                ).status_code

            with ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(upload, range(4)))
        assert codes == [202] * 4
        assert state["most"] == 1  # without the cap, all four decode at once
        settings_env(GATEWAY_DECODE_CONCURRENCY=0)
        routes.decode_slots.cache_clear()
        slots = routes.decode_slots()  # the default on an 8-core machine: 7 at once
        assert all(slots.acquire(blocking=False) for _ in range(7)) and not slots.acquire(blocking=False)
    finally:
        routes.decode_slots.cache_clear()
