"""A job and its feedback belong to whoever made them: a browser session (signed cookie) or an API
key. Anyone else, whatever they claim, is told the job does not exist (real PostgreSQL/Redis)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner

from moodtunes import api_keys
from tests.gateway.test_jobs_api import assert_error, bearer, owner_of, post
from tests.gateway.test_options_and_feedback import finish

pytestmark = pytest.mark.integration
SESSION = "moodtunes_session"


def stranger(client) -> TestClient:
    """Another client of the same app, with its own (empty) cookie jar."""
    return TestClient(client.app)


def done_job(client, face_jpeg, **kwargs) -> str:
    job_id = post(client, face_jpeg, **kwargs).json()["id"]
    finish(job_id, ["t1", "t2"])
    return job_id


def can_read(c, job_id, headers=None) -> bool:
    r = c.get(f"/v1/jobs/{job_id}", headers=headers or {})
    if r.status_code == 404:
        assert r.json()["error"]["code"] == "job_not_found"  # the same answer as for an unknown id
        return False
    assert r.status_code == 200, r.text
    return True


def can_rate(c, job_id, headers=None) -> bool:
    r = c.post(f"/v1/jobs/{job_id}/feedback", json={"track_id": "t1", "liked": False}, headers=headers or {})
    if r.status_code == 404:
        assert r.json()["error"]["code"] == "job_not_found"
        return False
    assert r.status_code == 201, r.text
    return True


def test_the_first_job_starts_a_signed_httponly_lax_session(client, face_jpeg):
    r = post(client, face_jpeg)
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION}=")
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "max-age", "path"} <= attributes and "samesite=lax" in cookie.lower()
    assert "secure" not in attributes  # local http; production sets it (test below)
    session_id = owner_of(r.json()["id"]).removeprefix("session:")
    value = r.cookies[SESSION]
    assert value.startswith(session_id + ".") and value != session_id  # the id, plus a signature


def test_a_session_sees_and_rates_only_its_own_jobs(client, face_jpeg):
    mine = done_job(client, face_jpeg)
    other = stranger(client)
    theirs = done_job(other, face_jpeg)
    assert owner_of(mine) != owner_of(theirs)
    assert can_read(client, mine) and can_rate(client, mine)
    assert not can_read(other, mine) and not can_rate(other, mine)
    assert not can_read(client, theirs) and not can_rate(client, theirs)
    nobody = stranger(client)  # neither a cookie nor a key
    assert not can_read(nobody, mine) and not can_rate(nobody, mine)


def test_a_key_owns_its_jobs_and_a_session_cannot_see_them(client, face_jpeg, new_key):
    key, token = new_key("batch")
    other_key, other_token = new_key("someone else")
    api = stranger(client)
    r = post(api, face_jpeg, headers=bearer(token))
    assert r.status_code == 202 and "set-cookie" not in r.headers  # a key needs no session
    job_id = r.json()["id"]
    assert owner_of(job_id) == f"key:{key.id}"
    finish(job_id, ["t1", "t2"])
    assert can_read(api, job_id, bearer(token)) and can_rate(api, job_id, bearer(token))
    assert not can_read(api, job_id, bearer(other_token)) and not can_rate(api, job_id, bearer(other_token))
    assert not can_read(client, job_id) and not can_rate(client, job_id)  # a cookie client
    browser_job = done_job(client, face_jpeg)
    assert not can_read(api, browser_job, bearer(token)) and not can_rate(api, browser_job, bearer(token))


def test_the_key_wins_over_a_session_cookie(client, face_jpeg, new_key):
    post(client, face_jpeg)  # the client now holds a session
    key, token = new_key()
    r = post(client, face_jpeg, headers=bearer(token))
    assert owner_of(r.json()["id"]) == key.owner


@pytest.mark.parametrize(
    "authorization,code",
    [
        ("Bearer mt_000000000000_" + "x" * 43, "invalid_api_key"),  # well formed, never issued
        ("Bearer not-a-key", "invalid_api_key"),
        ("Basic dXNlcjpwYXNz", "invalid_api_key"),  # not a bearer key
        ("Bearer", "invalid_api_key"),
    ],
)
def test_a_bad_key_is_401_everywhere(client, face_jpeg, clean_keys, authorization, code):
    headers = {"Authorization": authorization}
    for r in (
        post(client, face_jpeg, headers=headers),
        client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=headers),
        client.post("/v1/jobs/x/feedback", json={"track_id": "t", "liked": True}, headers=headers),
    ):
        assert_error(r, 401, code)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_key_is_401_and_loses_its_jobs(client, face_jpeg, new_key):
    key, token = new_key()
    job_id = done_job(stranger(client), face_jpeg, headers=bearer(token))
    api_keys.revoke(key.id)
    assert_error(client.get(f"/v1/jobs/{job_id}", headers=bearer(token)), 401, "api_key_revoked")
    assert_error(post(client, face_jpeg, headers=bearer(token)), 401, "api_key_revoked")
    rating = {"track_id": "t1", "liked": True}
    r = client.post(f"/v1/jobs/{job_id}/feedback", json=rating, headers=bearer(token))
    assert_error(r, 401, "api_key_revoked")


def test_client_asserted_identities_are_not_believed(client, face_jpeg):
    """The old ways of saying who you are (form field, header, unsigned cookie) change nothing."""
    claim = "alice"
    victim = stranger(client)
    victim.cookies.set("moodtunes_client", claim)
    job_id = done_job(victim, face_jpeg, client_key=claim, headers={"X-Client-Key": claim})
    assert owner_of(job_id).startswith("session:") and claim not in owner_of(job_id)
    thief = stranger(client)
    thief.cookies.set("moodtunes_client", claim)
    claims = {"X-Client-Key": claim}
    assert not can_read(thief, job_id, claims) and not can_rate(thief, job_id, claims)


def forged_cookies(session_id: str) -> dict[str, str]:
    guessed = TimestampSigner("guessed secret", salt="moodtunes.session")
    return {
        "bare id": session_id,
        "owner string": f"session:{session_id}",
        "signed with another secret": guessed.sign(session_id).decode(),
    }


@pytest.mark.parametrize("forgery", ["bare id", "owner string", "signed with another secret", "tampered"])
def test_a_forged_session_cookie_is_not_believed(client, face_jpeg, forgery):
    r = post(client, face_jpeg)
    job_id, real = r.json()["id"], r.cookies[SESSION]
    session_id = owner_of(job_id).removeprefix("session:")
    cookies = forged_cookies(session_id)
    cookies["tampered"] = ("a" if real[0] != "a" else "b") + real[1:]  # another id, the old signature
    thief = stranger(client)
    thief.cookies.set(SESSION, cookies[forgery])
    assert not can_read(thief, job_id)
    r2 = post(thief, face_jpeg)  # a job from the forger: a fresh session, not the victim's
    assert owner_of(r2.json()["id"]) != owner_of(job_id) and r2.cookies[SESSION] != real


def test_replicas_with_one_secret_share_sessions(clean_jobs, redis_server, face_jpeg, settings_env):
    """SESSION_SECRET is per deployment: a cookie from one gateway process works on another."""
    from moodtunes_gateway.main import create_app

    settings_env(SESSION_SECRET="one secret for the whole deployment")
    first, second = TestClient(create_app()), TestClient(create_app())
    r = post(first, face_jpeg)
    second.cookies.set(SESSION, r.cookies[SESSION])
    assert can_read(second, r.json()["id"])
    settings_env(SESSION_SECRET="another deployment")
    elsewhere = TestClient(create_app())
    elsewhere.cookies.set(SESSION, r.cookies[SESSION])
    assert not can_read(elsewhere, r.json()["id"])


def test_production_refuses_to_start_without_a_session_secret(database, settings_env):
    from moodtunes_gateway.main import create_app

    settings_env(ENVIRONMENT="production")
    with pytest.raises(RuntimeError, match="SESSION_SECRET"):
        create_app()


def test_production_marks_the_cookie_secure(clean_jobs, redis_server, face_jpeg, settings_env):
    from moodtunes_gateway.main import create_app

    settings_env(ENVIRONMENT="production", SESSION_SECRET="s" * 48)
    r = post(TestClient(create_app(), base_url="https://testserver"), face_jpeg)
    assert r.status_code == 202
    assert "secure" in {a.strip().lower() for a in r.headers["set-cookie"].split(";")}
