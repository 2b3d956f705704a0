"""Guarded job transitions on the real PostgreSQL."""

import pytest

from moodtunes import jobs

pytestmark = pytest.mark.integration


def make_job(**kw):
    job_id = jobs.new_job_id()
    jobs.create(job_id, mode="match", limit=3, image=b"img", image_type="image/png", width=1, height=1, **kw)
    return job_id


def test_transitions_only_from_allowed_states(clean_jobs):
    job_id = make_job()
    assert jobs.transition(job_id, (jobs.QUEUED,), jobs.DETECTING)
    assert not jobs.transition(job_id, (jobs.QUEUED,), jobs.DETECTING)  # a redelivery
    row = jobs.get(job_id)
    assert row["status"] == "detecting" and row["attempts"] == 1 and row["started_at"] is not None


def test_fail_never_overwrites_a_finished_job(clean_jobs):
    job_id = make_job()
    assert jobs.transition(job_id, jobs.UNFINISHED, jobs.DONE, recommendation={"tracks": []})
    assert not jobs.fail(job_id, "late", "too late")
    row = jobs.get(job_id)
    assert row["status"] == "done" and row["error_code"] is None and row["finished_at"] is not None


def test_image_is_deleted_once_classified(clean_jobs):
    job_id = make_job()
    assert jobs.image(job_id) == b"img"
    jobs.transition(job_id, jobs.UNFINISHED, jobs.RECOMMENDING, faces=[], chosen_face=0, model={})
    assert jobs.image(job_id) is None


def test_expire_stale_only_touches_old_unfinished_jobs(clean_jobs):
    from moodtunes.db import connection

    old, fresh = make_job(), make_job()
    with connection() as conn:
        conn.execute("UPDATE jobs SET updated_at = now() - interval '10 minutes' WHERE id = %s", (old,))
    assert jobs.expire_stale(60) == 1
    assert jobs.get(old)["error_code"] == "timeout"
    assert jobs.get(fresh)["status"] == "queued"


def test_create_answers_status_and_creation_time(clean_jobs):
    job_id = jobs.new_job_id()
    created = jobs.create(
        job_id, mode="match", limit=3, image=b"img", image_type="image/png", width=1, height=1
    )
    row = jobs.get(job_id)
    assert created == {"status": "queued", "created_at": row["created_at"]}
    assert jobs.image(job_id) == b"img"


def test_claim_starts_detection_and_hands_over_the_photo(clean_jobs):
    job_id = make_job()
    assert jobs.claim(job_id) == {"attempts": 1, "image": b"img"}
    assert jobs.claim(job_id) == {"attempts": 2, "image": b"img"}  # a redelivered task resumes
    assert jobs.get(job_id)["status"] == "detecting"


def test_claim_never_moves_a_job_backwards(clean_jobs):
    job_id = make_job()
    jobs.transition(job_id, jobs.UNFINISHED, jobs.RECOMMENDING, faces=[], chosen_face=0, model={})
    assert jobs.claim(job_id) is None
    row = jobs.get(job_id)
    assert (row["status"], row["attempts"]) == ("recommending", 0)
    assert jobs.claim(jobs.new_job_id()) is None  # unknown job


def test_poll_fails_a_stale_job_in_the_same_statement(clean_jobs):
    from moodtunes.db import connection

    stale, fresh = make_job(), make_job()
    with connection() as conn:
        conn.execute("UPDATE jobs SET updated_at = now() - interval '10 minutes' WHERE id = %s", (stale,))
    row = jobs.poll(stale, 60)
    assert (row["status"], row["error_code"], str(row["id"])) == ("failed", "timeout", stale)
    assert row == jobs.get(stale) and jobs.image(stale) is None
    assert jobs.poll(fresh, 60)["status"] == "queued" and jobs.image(fresh) == b"img"
    assert jobs.poll(jobs.new_job_id(), 60) is None


def test_the_database_knows_the_same_statuses(database):
    """Migrations are frozen history and cannot import STATUSES: the constraint and the partial
    index they created must still say what moodtunes.jobs says."""
    import re

    from moodtunes.db import connection

    with connection() as conn:
        check = conn.execute("""SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint
                                WHERE conrelid = 'jobs'::regclass AND contype = 'c'
                                  AND pg_get_constraintdef(oid) LIKE '%%status%%'""").fetchone()["d"]
        index = conn.execute("SELECT pg_get_indexdef('jobs_unfinished'::regclass) AS d").fetchone()["d"]
    assert tuple(re.findall(r"'(\w+)'::text", check)) == jobs.STATUSES
    assert set(re.findall(r"'(\w+)'::text", index)) == set(jobs.FINAL)


def test_the_web_page_shows_the_unfinished_statuses_in_order():
    import re

    from moodtunes.config import REPO_ROOT

    app_js = (REPO_ROOT / "services/gateway/moodtunes_gateway/static/app.js").read_text()
    stages = re.search(r"const STAGES = \[([^\]]*)\]", app_js).group(1)
    assert tuple(re.findall(r'"(\w+)"', stages)) == jobs.UNFINISHED
