"""/v1/sessions on the in-process gateway against the real PostgreSQL and Redis: open, frames
(same image rules as jobs, queued as FER work naming their session), backpressure, read, close."""

import pytest
import redis

from moodtunes import jobs
from moodtunes.config import get_settings
from tests.gateway.test_jobs_api import assert_error

pytestmark = pytest.mark.integration


def open_session(client, **body):
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def send(client, session, content, name="frame.jpg"):
    return client.post(session["frames_url"], files={"image": (name, content)})


def test_open_send_read_and_close(client, face_jpeg, redis_server):
    session = open_session(client, mode="uplift", limit=5, window_s=30, genres=["rock"])
    assert session["status_url"] == f"/v1/sessions/{session['id']}"
    assert (session["mode"], session["limit"], session["window_s"]) == ("uplift", 5, 30.0)
    r = send(client, session, face_jpeg)
    assert r.status_code == 202, r.text
    frame = r.json()
    assert (frame["session_id"], frame["status"], frame["superseded"]) == (session["id"], "queued", [])
    row = jobs.get(frame["frame_id"])
    assert str(row["session_id"]) == session["id"] and row["mode"] == "uplift" and row["track_limit"] == 5
    assert row["filters"] == {"genres": ["rock"]}
    assert redis.Redis.from_url(redis_server.url).llen(get_settings().fer_queue) == 1
    body = client.get(session["status_url"]).json()
    assert body["frames_received"] == 1 and body["frames_processed"] == 0 and body["frames"] == []
    assert body["latest_frame"]["id"] == frame["frame_id"] and body["latest_frame"]["status"] == "queued"
    assert body["smoothing"] == {"alpha": 0.35, "hysteresis": 0.15}
    assert body["smoothed"] is None and body["playlist"] is None
    assert client.get(f"/v1/jobs/{frame['frame_id']}").json()["session_id"] == session["id"]
    assert client.delete(session["status_url"]).status_code == 204
    assert jobs.get(frame["frame_id"]) is None  # a closed session's frames go with it
    assert_error(send(client, session, face_jpeg), 409, "session_closed")
    assert client.get(session["status_url"]).json()["closed_at"] is not None


def test_a_faster_client_gets_its_newest_frame_processed_not_a_queue(client, face_jpeg):
    session = open_session(client)
    sent = [send(client, session, face_jpeg).json() for _ in range(4)]
    assert [f["superseded"] for f in sent] == [
        [],
        [sent[0]["frame_id"]],
        [sent[1]["frame_id"]],
        [sent[2]["frame_id"]],
    ]
    assert sent[-1]["frames_dropped"] == 3
    states = [jobs.get(f["frame_id"])["status"] for f in sent]
    assert states == ["failed", "failed", "failed", "queued"]
    assert jobs.get(sent[0]["frame_id"])["error_code"] == "superseded"


def test_frames_follow_the_image_rules_of_jobs(client):
    session = open_session(client)
    assert_error(send(client, session, b"this is not an image at all", "frame.txt"), 422, "invalid_image")
    assert client.get(session["status_url"]).json()["frames_received"] == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"mode": "nope"}, "mode"),
        ({"limit": 0}, "limit"),
        ({"window_s": 1}, "window_s"),
        ({"year_min": 2001, "year_max": 1990}, None),
    ],
)
def test_bad_session_options_are_422(client, body, field):
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == 422, r.text
    if field:
        assert field in r.text


def test_a_session_is_its_owners_only(client, face_jpeg):
    from fastapi.testclient import TestClient

    session = open_session(client)
    stranger = TestClient(client.app)
    for r in (
        stranger.get(session["status_url"]),
        stranger.post(session["frames_url"], files={"image": ("f.jpg", face_jpeg)}),
        stranger.delete(session["status_url"]),
    ):
        assert_error(r, 404, "session_not_found")
    assert_error(client.get("/v1/sessions/not-a-uuid"), 404, "session_not_found")


def test_frames_are_rate_limited_per_client(client, face_jpeg, settings_env):
    settings_env(RATE_LIMIT_FRAMES="2/minute")
    session = open_session(client)
    assert send(client, session, face_jpeg).status_code == 202
    assert send(client, session, face_jpeg).status_code == 202
    r = send(client, session, face_jpeg)
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1
