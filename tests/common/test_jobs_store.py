"""Guarded job transitions on the real PostgreSQL, and the workers' writes waiting out a
database restart."""

import logging

import psycopg
import pytest

from moodtunes import db, jobs
from moodtunes.config import get_settings

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


def test_a_failed_job_keeps_no_photo(clean_jobs):
    job_id = make_job()
    assert jobs.fail(job_id, "no_face", "no face")
    assert jobs.image(job_id) is None


def test_reading_a_stale_job_never_fails_it(clean_jobs):
    """Failing stuck jobs is the reconciler's (after re-sending them), not a side effect of a read."""
    from moodtunes.db import connection

    stale = make_job()
    with connection() as conn:
        conn.execute("UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE id = %s", (stale,))
    row = jobs.poll(stale)
    assert (row["status"], row["error_code"], str(row["id"])) == ("queued", None, stale)
    assert row == jobs.get(stale) and jobs.image(stale) == b"img"
    assert jobs.poll(jobs.new_job_id()) is None


def test_heartbeat_keeps_an_unfinished_job_alive_and_remembers_the_error(clean_jobs):
    from moodtunes.db import connection

    job_id = make_job()
    with connection() as conn:
        conn.execute("UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE id = %s", (job_id,))
    before = jobs.get(job_id)["updated_at"]
    assert jobs.heartbeat(job_id, "model_unavailable: UNAVAILABLE")
    assert jobs.heartbeat(job_id)  # no new error: the last one stays
    row = jobs.get(job_id)
    assert row["updated_at"] > before and row["last_error"] == "model_unavailable: UNAVAILABLE"
    jobs.transition(job_id, jobs.UNFINISHED, jobs.DONE, recommendation={"tracks": []})
    assert not jobs.heartbeat(job_id, "late")  # a finished job is not touched
    assert jobs.get(job_id)["last_error"] == "model_unavailable: UNAVAILABLE"


def drop_database_connections() -> None:
    """What a PostgreSQL restart does to a client: every open connection is cut (the pooled, idle
    ones find out on their next statement)."""
    with psycopg.connect(get_settings().database_url, autocommit=True) as conn:
        conn.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND backend_type = 'client backend'"""
        )


def test_worker_writes_wait_out_a_database_restart(clean_jobs, caplog):
    job_id = make_job()
    assert jobs.get(job_id)  # the pool holds an open connection
    drop_database_connections()
    with caplog.at_level(logging.WARNING, logger="moodtunes.db"):
        assert jobs.claim(job_id) == {"attempts": 1, "image": b"img"}
    assert "database unavailable" in caplog.text  # it failed once, and was retried
    drop_database_connections()
    assert jobs.transition(job_id, (jobs.DETECTING,), jobs.CLASSIFYING)
    assert jobs.get(job_id)["status"] == "classifying"


def test_a_request_handler_write_does_not_wait(clean_jobs):
    job_id = make_job()
    assert jobs.get(job_id)
    drop_database_connections()
    try:
        with pytest.raises(psycopg.OperationalError):
            jobs.fail(job_id, "queue_unavailable", "queue down", retry=False)
    finally:
        db.pool().check()  # drop what is left of the cut connections
    assert jobs.get(job_id)["status"] == "queued"


def test_purge_counts_or_deletes_only_finished_jobs_past_the_age(clean_jobs):
    from moodtunes.db import connection

    old_done, new_done, old_queued = make_job(), make_job(), make_job()
    for job_id in (old_done, new_done):
        jobs.transition(job_id, jobs.UNFINISHED, jobs.DONE, recommendation={"tracks": []})
    with connection() as conn:
        conn.execute(
            "UPDATE jobs SET finished_at = now() - interval '2 days', created_at = now() - interval '2 days' "
            "WHERE id = ANY(%s)",
            ([old_done, old_queued],),
        )
    assert jobs.purge_finished(86400, dry_run=True) == 1
    assert jobs.get(old_done) is not None
    assert jobs.purge_finished(86400, batch=1) == 1  # batches until one comes back short
    assert jobs.get(old_done) is None and jobs.get(new_done) and jobs.get(old_queued)


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


def test_claim_hands_over_a_photo_byte_for_byte(clean_jobs):
    """Every byte value survives the binary read (no text escaping in between)."""
    photo = bytes(range(256)) * 300
    job_id = jobs.new_job_id()
    jobs.create(job_id, mode="match", limit=3, image=photo, image_type="image/jpeg", width=1, height=1)
    assert jobs.claim(job_id) == {"attempts": 1, "image": photo}


def test_photos_are_stored_uncompressed_out_of_line(clean_jobs):
    """Uploads are compressed formats already: PostgreSQL does not try to compress them again (even
    a photo that would compress is stored as it came, out of line)."""
    job_id = jobs.new_job_id()
    jobs.create(
        job_id, mode="match", limit=3, image=b"\0" * 100_000, image_type="image/png", width=1, height=1
    )
    with db.connection() as conn:
        row = conn.execute(
            """SELECT pg_column_compression(content) AS compression, pg_column_size(content) AS size
               FROM job_images WHERE job_id = %s""",
            (job_id,),
        ).fetchone()
    assert row == {"compression": None, "size": 100_000}


def test_claim_never_moves_a_job_backwards(clean_jobs):
    job_id = make_job()
    jobs.transition(job_id, jobs.UNFINISHED, jobs.RECOMMENDING, faces=[], chosen_face=0, model={})
    assert jobs.claim(job_id) is None
    row = jobs.get(job_id)
    assert (row["status"], row["attempts"]) == ("recommending", 0)
    assert jobs.claim(jobs.new_job_id()) is None  # unknown job


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
