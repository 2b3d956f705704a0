"""Modes, filters and feedback through the gateway (real PostgreSQL and Redis)."""

import base64
import json
import uuid

import pytest
import redis

from moodtunes import jobs
from moodtunes.config import get_settings
from moodtunes.events import FerJob, from_json, job_options
from moodtunes.results import Recommendation, Track
from tests.gateway.test_jobs_api import assert_error, owner_of, post

pytestmark = pytest.mark.integration


def test_modes_are_listed(client):
    body = client.get("/v1/modes").json()
    assert [m["name"] for m in body["modes"]] == ["match", "uplift", "calm"]
    assert all(m["description"] for m in body["modes"])
    # the web page checks a photo against these before sending it
    s = get_settings()
    assert body["upload"] == {
        "max_bytes": s.max_upload_bytes,
        "max_pixels": s.max_image_pixels,
        "max_side": s.max_image_side,
        "formats": ["image/jpeg", "image/png", "image/webp", "image/tiff"],
    }


@pytest.mark.parametrize("mode", ["uplift", "calm"])
def test_accepts_every_mode(client, face_jpeg, mode):
    r = post(client, face_jpeg, mode=mode)
    assert r.status_code == 202 and jobs.get(r.json()["id"])["mode"] == mode


def test_filters_are_stored(client, face_jpeg):
    r = post(
        client,
        face_jpeg,
        year_min=1990,
        year_max=1999,
        genres="rock, pop ,",
        min_popularity=40,
        exclude_explicit="true",
        diversity=0.5,
    )
    job = jobs.get(r.json()["id"])
    assert job["filters"] == {
        "year_min": 1990,
        "year_max": 1999,
        "genres": ["rock", "pop"],
        "min_popularity": 40,
        "exclude_explicit": True,
    }
    assert job["diversity"] == 0.5 and job["client_key"].startswith("session:")
    assert job["drive"] == "face"  # the default: the largest face drives the music


def test_drive_group_is_stored_queued_and_shown(client, face_jpeg, redis_server):
    r = post(client, face_jpeg, drive="group")
    assert jobs.get(r.json()["id"])["drive"] == "group"
    raw = json.loads(redis.Redis.from_url(redis_server.url).lpop(get_settings().fer_queue))
    args, _, _ = json.loads(base64.b64decode(raw["body"]))
    assert from_json(args[0], FerJob).options.drive == "group"
    assert client.get(r.json()["status_url"]).json()["drive"] == "group"


def test_the_queued_work_item_carries_the_options(client, face_jpeg, redis_server):
    """The FER worker, and after it the recommender, get the options from the message."""
    r = post(
        client,
        face_jpeg,
        mode="calm",
        limit=4,
        year_min=1990,
        genres="rock",
        diversity=0.25,
    )
    raw = json.loads(redis.Redis.from_url(redis_server.url).lpop(get_settings().fer_queue))
    args, _, _ = json.loads(base64.b64decode(raw["body"]))
    message = from_json(args[0], FerJob)
    assert message.job_id == r.json()["id"]
    # Flower and Celery's logs show the job, not the event's JSON (nor Celery's repr of it)
    assert (raw["headers"]["argsrepr"], raw["headers"]["kwargsrepr"]) == (f"[job {message.job_id}]", "{}")
    assert message.options == job_options(
        mode="calm",
        limit=4,
        diversity=0.25,
        client_key=owner_of(r.json()["id"]),  # the owner, so the recommender knows whose dislikes
        filters={"year_min": 1990, "genres": ["rock"]},
    )


@pytest.mark.parametrize(
    "form,code",
    [
        ({"year_min": 2000, "year_max": 1990}, "invalid_filter"),
        ({"year_min": 1500}, "invalid_filter"),
        ({"min_popularity": 101}, "invalid_filter"),
        ({"genres": ",".join(f"g{i}" for i in range(11))}, "invalid_filter"),
        ({"exclude_explicit": "maybe"}, "invalid_filter"),
        ({"diversity": 1.5}, "invalid_diversity"),
        ({"drive": "crowd"}, "invalid_drive"),
    ],
)
def test_rejects_bad_options(client, face_jpeg, form, code):
    assert_error(post(client, face_jpeg, **form), 422, code)


def test_anonymous_clients_keep_one_session(client, face_jpeg):
    r = post(client, face_jpeg)
    assert r.cookies.get("moodtunes_session")
    owner = owner_of(r.json()["id"])
    assert owner.startswith("session:")
    r2 = post(client, face_jpeg)  # the client sends the cookie back: same owner, no new cookie
    assert owner_of(r2.json()["id"]) == owner and "set-cookie" not in r2.headers


FEATURES = {"danceability": 0.5, "energy": 0.6, "valence": 0.7, "tempo": 120.0, "mode": 1.0}
PROBS = {"neutral": 0.05, "happy": 0.7, "sad": 0.1, "fear": 0.05, "angry": 0.1}


def finish(job_id, track_ids):
    tracks = [
        Track(track_id=t, name=t, artists=["x"], features=FEATURES, distance=0.1, position=i)
        for i, t in enumerate(track_ids)
    ]
    jobs.transition(
        job_id,
        jobs.UNFINISHED,
        jobs.DONE,
        recommendation=Recommendation(
            mode="match",
            emotion_probabilities=PROBS,
            target=FEATURES,
            target_vector=[0.5, 0.6, 0.7, 0.49, 1.0],
            tracks=tracks,
        ),
    )


def test_a_done_job_is_served_in_the_shared_result_schema(client, face_jpeg):
    job_id = post(client, face_jpeg).json()["id"]
    finish(job_id, ["4uLU6hMCjMI75M1A2tKUQC", "local-1"])
    rec = client.get(f"/v1/jobs/{job_id}").json()["recommendation"]
    assert list(rec["emotion_probabilities"]) == list(PROBS)  # class order, whatever jsonb did
    assert list(rec["target"]) == list(rec["tracks"][0]["features"]) == list(FEATURES)
    assert [t["spotify_url"] for t in rec["tracks"]] == [
        "https://open.spotify.com/track/4uLU6hMCjMI75M1A2tKUQC",
        None,
    ]
    assert Recommendation.model_validate(rec).tracks[1].track_id == "local-1"


def test_feedback_is_stored_and_validated(client, face_jpeg):
    from moodtunes.db import connection

    job_id = post(client, face_jpeg).json()["id"]
    assert_error(
        client.post(f"/v1/jobs/{job_id}/feedback", json={"track_id": "t1", "liked": True}),
        409,
        "job_not_done",
    )
    finish(job_id, ["t1", "t2"])
    assert_error(
        client.post(f"/v1/jobs/{job_id}/feedback", json={"track_id": "zz", "liked": True}),
        422,
        "unknown_track",
    )
    assert_error(client.post(f"/v1/jobs/{job_id}/feedback", json={"track_id": "t1"}), 422, "invalid_feedback")
    assert_error(
        client.post(f"/v1/jobs/{uuid.uuid4()}/feedback", json={"track_id": "t1", "liked": True}),
        404,
        "job_not_found",
    )
    r = client.post(f"/v1/jobs/{job_id}/feedback", json={"track_id": "t2", "liked": False})
    assert r.status_code == 201 and r.json() == {
        "job_id": job_id,
        "track_id": "t2",
        "liked": False,
        "mode": "match",
    }
    client.post(f"/v1/jobs/{job_id}/feedback", json={"track_id": "t2", "liked": True})  # changed mind
    with connection() as conn:
        rows = conn.execute("SELECT client_key, mode, track_id, liked FROM feedback").fetchall()
    assert rows == [{"client_key": owner_of(job_id), "mode": "match", "track_id": "t2", "liked": True}]
    # undo: the like is gone; a second undo, or someone else's, finds nothing
    stranger = type(client)(client.app)
    assert_error(stranger.delete(f"/v1/jobs/{job_id}/feedback/t2"), 404, "job_not_found")
    assert client.delete(f"/v1/jobs/{job_id}/feedback/t2").status_code == 204
    with connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM feedback").fetchone()["n"] == 0
    assert_error(client.delete(f"/v1/jobs/{job_id}/feedback/t2"), 404, "feedback_not_found")
