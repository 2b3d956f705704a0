"""The gateway API against the real PostgreSQL and Redis (in-process app, real servers)."""

from __future__ import annotations

import io
import time
import uuid

import pytest
import redis
from PIL import Image

from moodtunes import jobs
from moodtunes.config import get_settings
from moodtunes.db import connection

pytestmark = pytest.mark.integration


def png(width: int, height: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, "PNG")
    return buf.getvalue()


def post(client, content: bytes, name="photo.jpg", **form):
    return client.post(
        "/v1/jobs", files={"image": (name, content)}, data={k: str(v) for k, v in form.items()}
    )


def assert_error(r, status: int, code: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


def test_accepts_a_photo_stores_the_job_and_enqueues_it(client, face_jpeg, redis_server):
    r = post(client, face_jpeg, mode="match", limit=5)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert r.headers["Location"] == body["status_url"] == f"/v1/jobs/{body['id']}"
    row = jobs.get(body["id"])
    assert (row["status"], row["mode"], row["track_limit"], row["image_type"]) == (
        "queued",
        "match",
        5,
        "image/jpeg",
    )
    assert jobs.image(body["id"]) == face_jpeg
    assert redis.Redis.from_url(redis_server.url).llen(get_settings().fer_queue) == 1
    polled = client.get(body["status_url"]).json()
    assert polled["status"] == "queued" and polled["limit"] == 5 and polled["image"]["width"] == 512


def test_defaults_mode_match_and_limit_10(client, face_jpeg):
    job = jobs.get(post(client, face_jpeg).json()["id"])
    assert (job["mode"], job["track_limit"]) == ("match", 10)


@pytest.mark.parametrize(
    "content,status,code",
    [
        (b"", 422, "empty_file"),
        (b"this is not an image at all", 422, "invalid_image"),
        (b"GIF89a" + b"\x00" * 64, 422, "invalid_image"),
    ],
)
def test_rejects_non_images(client, content, status, code):
    assert_error(post(client, content), status, code)


def test_rejects_truncated_jpeg(client, face_jpeg):
    assert_error(post(client, face_jpeg[: len(face_jpeg) // 2]), 422, "invalid_image")


def test_rejects_unsupported_format(client):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "GIF")
    assert_error(post(client, buf.getvalue(), name="a.gif"), 415, "unsupported_image_format")


def test_rejects_decompression_bomb(client):
    # 8000 x 8000 = 64 Mpx of zeros compresses to a few KB: over the default 40 Mpx limit
    assert_error(post(client, png(8000, 8000)), 422, "image_too_many_pixels")


def test_rejects_files_over_the_size_limit(client, face_jpeg, monkeypatch):
    monkeypatch.setenv("MAX_UPLOAD_BYTES", str(len(face_jpeg) - 1))
    get_settings.cache_clear()
    try:
        assert_error(post(client, face_jpeg), 413, "file_too_large")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.parametrize(
    "form,code",
    [
        ({"mode": "party"}, "invalid_mode"),
        ({"limit": 0}, "invalid_limit"),
        ({"limit": 51}, "invalid_limit"),
        ({"limit": "ten"}, "invalid_limit"),
    ],
)
def test_rejects_bad_parameters(client, face_jpeg, form, code):
    assert_error(post(client, face_jpeg, **form), 422, code)
    with connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0


def test_missing_image_field(client):
    assert_error(client.post("/v1/jobs", data={"mode": "match"}), 422, "missing_image")


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_job_is_404(client, job_id):
    assert_error(client.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")


def test_queue_down_fails_the_job_with_503_not_a_lost_job(client, face_jpeg, monkeypatch):
    from moodtunes import queue
    from moodtunes_cli.localstack import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    monkeypatch.setattr(queue, "_producer", None)
    try:
        r = post(client, face_jpeg)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        queue._producer = None
    assert_error(r, 503, "queue_unavailable")
    with connection() as conn:
        row = conn.execute("SELECT status, error_code FROM jobs").fetchone()
    assert row == {"status": "failed", "error_code": "queue_unavailable"}


def test_a_stuck_job_ends_failed_with_timeout(client, face_jpeg):
    job_id = post(client, face_jpeg).json()["id"]
    with connection() as conn:
        conn.execute("UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE id = %s", (job_id,))
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "failed" and body["error"]["code"] == "timeout"
    assert jobs.image(job_id) is None


def test_stale_jobs_are_failed_even_when_nobody_polls(clean_jobs, redis_server, face_jpeg, monkeypatch):
    from fastapi.testclient import TestClient

    from moodtunes_gateway.main import create_app

    monkeypatch.setenv("STALE_SWEEP_INTERVAL_S", "0.1")
    get_settings.cache_clear()
    try:
        with TestClient(create_app()) as c:
            job_id = post(c, face_jpeg).json()["id"]
            with connection() as conn:
                conn.execute(
                    "UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE id = %s", (job_id,)
                )
            deadline = time.monotonic() + 10
            while jobs.get(job_id)["status"] != "failed" and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    row = jobs.get(job_id)
    assert (row["status"], row["error_code"]) == ("failed", "timeout")


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")  # no model server in this test: not ready, and says why
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["postgres"] == "ok" and checks["redis"] == "ok"
    assert checks["model_server"].startswith("unavailable")


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]


def test_the_api_documents_the_job_stores_statuses_and_result_schema(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert tuple(schemas["Job"]["properties"]["status"]["enum"]) == jobs.STATUSES
    assert {"Face", "ModelRef", "Recommendation", "Track", "Filters"} <= set(schemas)


def test_an_exif_rotated_photo_is_recorded_upright(client):
    """The gateway measures the photo as the worker will see it (one decoder for both)."""
    upright = Image.new("L", (40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", exif=exif.tobytes())
    body = client.get(post(client, buf.getvalue()).json()["status_url"]).json()
    assert (body["image"]["width"], body["image"]["height"]) == (40, 60)
