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


def post(client, content: bytes, name="photo.jpg", headers=None, **form):
    return client.post(
        "/v1/jobs",
        files={"image": (name, content)},
        data={k: str(v) for k, v in form.items()},
        headers=headers or {},
    )


def assert_error(r, status: int, code: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def owner_of(job_id: str) -> str:
    """Who the job store says owns a job (jobs.client_key)."""
    return jobs.get(job_id)["client_key"]


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


def test_queue_down_is_a_fast_503_and_no_job_is_made(client, face_jpeg, settings_env):
    """The queue-depth check finds Redis down before the photo is decoded or a row written."""
    from moodtunes_cli.localstack import free_port

    settings_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    r = post(client, face_jpeg)
    assert time.monotonic() - started < 3  # one refused connection, no retry loop
    assert_error(r, 503, "queue_unavailable")
    assert r.headers["Retry-After"] == "5"
    with connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0


def test_queue_down_at_publish_fails_the_job_with_503_not_a_lost_job(client, face_jpeg, settings_env):
    """Redis gone between the check and the publish (the check is off here): the job that was
    stored is failed at once, never left queued, and the answer still comes fast."""
    from moodtunes_cli.localstack import free_port

    settings_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", FER_QUEUE_MAX_DEPTH=0)
    started = time.monotonic()
    r = post(client, face_jpeg)
    assert time.monotonic() - started < 3  # the workers' producer sleeps ~2 s in its reconnect loop
    assert_error(r, 503, "queue_unavailable")
    with connection() as conn:
        row = conn.execute("SELECT status, error_code FROM jobs").fetchone()
    assert row == {"status": "failed", "error_code": "queue_unavailable"}


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
