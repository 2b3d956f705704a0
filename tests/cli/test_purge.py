"""`moodtunes purge`: deletes finished jobs past the retention (or --older-than), counts them only
with --dry-run, and leaves unfinished jobs and listener feedback alone."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from moodtunes import jobs
from moodtunes.config import get_settings
from moodtunes.db import connection
from moodtunes_cli.cli import app

pytestmark = pytest.mark.integration


def finished_job(days_ago: float, status: str = jobs.DONE) -> str:
    job_id = jobs.new_job_id()
    jobs.create(job_id, mode="match", limit=3, image=b"img", image_type="image/png", width=1, height=1)
    jobs.transition(job_id, jobs.UNFINISHED, status, recommendation={"tracks": []})
    with connection() as conn:
        conn.execute(
            "UPDATE jobs SET finished_at = now() - make_interval(secs => %s) WHERE id = %s",
            (days_ago * 86400, job_id),
        )
    return job_id


def purge(*args: str):
    return CliRunner().invoke(app, ["purge", *args])


def test_dry_run_counts_without_deleting(clean_jobs):
    old = [finished_job(8), finished_job(30, jobs.FAILED)]
    recent = finished_job(1)
    r = purge("--dry-run")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "would delete 2 finished job(s) older than 7 days"
    assert all(jobs.get(j) for j in [*old, recent])


def test_purge_deletes_past_the_retention_and_keeps_the_rest(clean_jobs):
    old, recent = finished_job(8), finished_job(1)
    unfinished = jobs.new_job_id()
    jobs.create(unfinished, mode="match", limit=3, image=b"img", image_type="image/png", width=1, height=1)
    with connection() as conn:
        conn.execute("UPDATE jobs SET created_at = now() - interval '30 days' WHERE id = %s", (unfinished,))
    jobs.record_feedback({**jobs.get(old), "client_key": "kim"}, "t1", liked=False)

    r = purge()
    assert (r.exit_code, r.output.strip()) == (0, "deleted 1 finished job(s) older than 7 days")
    assert jobs.get(old) is None and jobs.get(recent) and jobs.get(unfinished)
    with connection() as conn:
        kept = conn.execute("SELECT client_key, job_id FROM feedback").fetchall()
    assert kept == [{"client_key": "kim", "job_id": None}]  # the listener's dislike outlives the job
    assert purge().output.strip() == "deleted 0 finished job(s) older than 7 days"


def test_older_than_and_the_retention_setting_choose_the_age(clean_jobs, monkeypatch):
    two_days, half_day = finished_job(2), finished_job(0.5)
    assert purge("--older-than", "3", "--dry-run").output.strip().startswith("would delete 0 ")
    monkeypatch.setenv("JOB_RETENTION_DAYS", "1")
    get_settings.cache_clear()
    try:
        assert purge().output.strip() == "deleted 1 finished job(s) older than 1 days"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert jobs.get(two_days) is None and jobs.get(half_day)
    r = purge("--older-than", "0.25")
    assert r.output.strip() == "deleted 1 finished job(s) older than 0.25 days"
    assert purge("--older-than", "-1").exit_code == 2  # a usage error, nothing deleted
