"""A bounded schemathesis run of the gateway's own OpenAPI schema against the app in process, on the
suite's real PostgreSQL and Redis: no generated request may get a 5xx, and every documented
response must match its schema. Seeded and deterministic, so a failure names a request that
reproduces; bounded so it stays well under a minute on two busy cores."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import response_schema_conformance

pytestmark = pytest.mark.integration

CONFIG = {
    "seed": 20260,
    "generation": {"mode": "all", "max-examples": 12, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}},  # the schema declares no links between operations
    "cache": {"enabled": False},
}
# Limits that answer 429 or 503 by design would turn generated requests into refusals that say
# nothing about the request: per-client limits and the queue cap are off, and the waits for a
# database connection are long enough for two busy cores (tests/gateway test each limit itself).
ENV = {
    "RATE_LIMIT_JOBS": "",
    "RATE_LIMIT_FEEDBACK": "",
    "MAX_UNFINISHED_JOBS_PER_CLIENT": 0,
    "FER_QUEUE_MAX_DEPTH": 0,
    "GATEWAY_DB_TIMEOUT_S": 10,
    "GATEWAY_REDIS_TIMEOUT_S": 10,
}


def load_schema():
    """The schema the app serves (loaded at collection: schemathesis 4's fixture-based loader does
    not run under pytest 9). Requests go to a fresh app per test, made once the settings are set."""
    from moodtunes_gateway.main import create_app

    return schemathesis.openapi.from_dict(create_app().openapi(), config=SchemathesisConfig.from_dict(CONFIG))


# /readyz answers 503 by design while the model server is down, as it is here (a parameterless
# probe that tests/gateway/test_jobs_api.py checks).
schema = load_schema().exclude(path="/readyz")


@dataclass
class Gateway:
    app: object
    headers: dict[str, str]


@pytest.fixture
def gateway(clean_jobs, redis_server, settings_env) -> Gateway:
    """Empty servers, the settings above, and a real API key: a random bearer token would only
    ever meet the 401 at the door."""
    from moodtunes import api_keys
    from moodtunes_gateway.main import create_app

    redis.Redis.from_url(redis_server.url).flushdb()
    settings_env(**ENV)
    token = api_keys.create("openapi fuzz")[1]
    return Gateway(create_app(), {"Authorization": f"Bearer {token}"})


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_without_5xx_and_as_documented(case, gateway):
    case.call_and_validate(
        app=gateway.app,
        headers=gateway.headers,
        checks=[not_a_server_error, response_schema_conformance],
    )


def test_the_answers_a_fuzzer_cannot_reach_match_the_schema_too(gateway, face_jpeg):
    """Random bytes are never a photo and random ids never a job: the 202, the job in each state
    (queued, done with faces and a playlist, failed) and the 201 of feedback are checked here."""
    from fastapi.testclient import TestClient

    from moodtunes import jobs
    from moodtunes.results import Face, FaceBox, ModelRef, Recommendation, Track

    probs = {"neutral": 0.05, "happy": 0.7, "sad": 0.1, "fear": 0.05, "angry": 0.1}
    features = {"danceability": 0.5, "energy": 0.6, "valence": 0.7, "tempo": 120.0, "mode": 1.0}
    get_job = schema["/v1/jobs/{job_id}"]["GET"]
    with TestClient(gateway.app, headers=gateway.headers) as client:
        r = client.post("/v1/jobs", files={"image": ("face.jpg", face_jpeg)}, data={"genres": "pop"})
        assert r.status_code == 202, r.text
        schema["/v1/jobs"]["POST"].validate_response(r)
        done = r.json()["id"]
        failed = client.post("/v1/jobs", files={"image": ("face.jpg", face_jpeg)}).json()["id"]
        queued = client.get(f"/v1/jobs/{done}")
        assert queued.json()["status"] == "queued"
        get_job.validate_response(queued)

        face = Face(
            box=FaceBox(x=1, y=2, width=30, height=30),
            probabilities=probs,
            emotion="happy",
            confidence=0.7,
            cnn_probabilities=probs,
            detector_score=3.1,
        )
        assert jobs.transition(
            done,
            jobs.UNFINISHED,
            jobs.RECOMMENDING,
            faces=[face],
            chosen_face=0,
            model=ModelRef(name="fer_vgg16", version=3, head="svm"),
        )
        track = Track(track_id="t1", name="t1", artists=["x"], features=features, distance=0.1, position=0)
        assert jobs.transition(
            done,
            jobs.UNFINISHED,
            jobs.DONE,
            recommendation=Recommendation(
                mode="match",
                emotion_probabilities=probs,
                target=features,
                target_vector=[0.5, 0.6, 0.7, 0.49, 1.0],
                tracks=[track],
            ),
        )
        r = client.get(f"/v1/jobs/{done}")
        assert r.json()["status"] == "done" and r.json()["recommendation"]["tracks"][0]["track_id"] == "t1"
        get_job.validate_response(r)

        feedback = client.post(f"/v1/jobs/{done}/feedback", json={"track_id": "t1", "liked": True})
        assert feedback.status_code == 201, feedback.text
        schema["/v1/jobs/{job_id}/feedback"]["POST"].validate_response(feedback)

        jobs.fail(failed, "no_face", "No face was found in the photo.")
        r = client.get(f"/v1/jobs/{failed}")
        assert r.json()["status"] == "failed"
        get_job.validate_response(r)
