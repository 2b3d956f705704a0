"""The job store: every state change of a job is a guarded UPDATE in PostgreSQL.

Transitions name the statuses they may start from, so a redelivered task, a late worker or a
timed-out job can never move a job backwards or overwrite a final result. Each operation is one
statement (data-modifying CTEs), so a job costs few round trips: see tests/db_trips.py.

The workers' writes (claim, transition, fail) wait out a short PostgreSQL outage
(moodtunes.db.retry_transient): being guarded, a repeated one does nothing. The gateway's
(create, get, poll) do not: a waiting client gets a 503 at once. Stuck and finished jobs are the
reconciler's (moodtunes.reconciler): it re-sends, fails and, after JOB_RETENTION_DAYS, deletes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from moodtunes.db import connection, retry_transient, statement
from moodtunes.group import DEFAULT_DRIVE
from moodtunes.results import stored_json

QUEUED, DETECTING, CLASSIFYING, RECOMMENDING, DONE, FAILED = (
    "queued",
    "detecting",
    "classifying",
    "recommending",
    "done",
    "failed",
)
STATUSES = (QUEUED, DETECTING, CLASSIFYING, RECOMMENDING, DONE, FAILED)  # in the order a job moves
FINAL = (DONE, FAILED)
FINISHED_CHANNEL = "job_finished"  # NOTIFY'd (payload: the job id) when a job turns final (migration 0007)
UNFINISHED = tuple(s for s in STATUSES if s not in FINAL)
# As SQL literals, so a query's condition matches the partial indexes (jobs_unfinished, jobs_finished)
FINAL_SQL = "(" + ", ".join(f"'{s}'" for s in FINAL) + ")"
DROPS_IMAGE = (RECOMMENDING, DONE, FAILED)  # the photo is kept only until its faces are classified
CLAIMABLE = (QUEUED, DETECTING, CLASSIFYING)  # a (re)delivered FER task may start from these

JOB_COLUMNS = """id, status, mode, track_limit, filters, diversity, client_key, drive, session_id, image_type,
    image_bytes, image_width, image_height, faces, chosen_face, model, recommendation, error_code,
    error_message, attempts, requeues, requeued_at, last_error, created_at, updated_at, started_at,
    finished_at"""
TIMEOUT = "timeout"
TIMEOUT_MESSAGE = "the job made no progress in time; please submit it again"
TOO_MANY_ATTEMPTS = "too_many_attempts"


def too_many_attempts_message(deliveries: int, last_error: str | None = None) -> str:
    """Why a job that kept being started and never finished was given up."""
    why = f" (last error: {last_error})" if last_error else ""
    return (
        f"The photo could not be processed: it was tried {deliveries} times without finishing{why}. "
        "Please try another photo."
    )


def new_job_id() -> str:
    return str(uuid.uuid4())


@contextmanager
def _using(conn: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
    """The caller's connection (its transaction), or a pooled one for one statement (autocommit)."""
    if conn is not None:
        yield conn
    else:
        with statement() as own:
            yield own


def db_value(value: Any) -> Any:
    """Result models are stored as their JSON (moodtunes.results); dicts and lists as jsonb."""
    if isinstance(value, BaseModel) or (
        isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value)
    ):
        return Jsonb(stored_json(value))
    return Jsonb(value) if isinstance(value, (dict, list)) else value


def _filters_json(filters) -> dict:
    """Only the filters that are set: the column reads as what the listener chose."""
    if isinstance(filters, BaseModel):
        return filters.model_dump(mode="json", exclude_defaults=True)
    return dict(filters or {})


def create(
    job_id: str,
    *,
    mode: str,
    limit: int,
    image: bytes,
    image_type: str,
    width: int,
    height: int,
    filters=None,
    client_key: str | None = None,
    diversity: float | None = None,
    drive: str = DEFAULT_DRIVE,
    session_id: str | None = None,
    conn: psycopg.Connection | None = None,
) -> dict[str, Any]:
    """Stores a queued job and its photo in one statement; returns its status and created_at.
    `session_id` makes it a frame of a live session (moodtunes.live); `conn`, part of the
    caller's transaction."""
    with _using(conn) as conn:
        return conn.execute(
            """WITH job AS (
                   INSERT INTO jobs (id, status, mode, track_limit, filters, diversity, client_key,
                                     drive, session_id, image_type, image_bytes, image_width, image_height)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   RETURNING id, status, created_at),
               photo AS (INSERT INTO job_images (job_id, content) SELECT id, %s FROM job)
               SELECT status, created_at FROM job""",
            (
                job_id,
                QUEUED,
                mode,
                limit,
                Jsonb(_filters_json(filters)),
                diversity,
                client_key,
                drive,
                session_id,
                image_type,
                len(image),
                width,
                height,
                image,
            ),
        ).fetchone()


def _get(job_id: str) -> dict[str, Any] | None:
    with statement() as conn:
        return conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)).fetchone()


_get_retrying = retry_transient(_get)


def get(job_id: str, *, retry: bool = False) -> dict[str, Any] | None:
    """The job's row; `retry` (workers) waits out a short database outage instead of raising."""
    return (_get_retrying if retry else _get)(job_id)


def image(job_id: str) -> bytes | None:
    with statement() as conn:
        row = conn.execute("SELECT content FROM job_images WHERE job_id = %s", (job_id,)).fetchone()
    return bytes(row["content"]) if row else None


def _sets(to_status: str, fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
    sets = ["status = %s", "updated_at = now()"]
    params: list[Any] = [to_status]
    if to_status == DETECTING:
        sets += ["started_at = coalesce(started_at, now())", "attempts = attempts + 1"]
    if to_status in FINAL:
        sets.append("finished_at = now()")
    for key, value in fields.items():
        sets.append(f"{key} = %s")
        params.append(db_value(value))
    return sets, params


def _moved(
    job_id: str, from_statuses: tuple[str, ...], to_status: str, fields: dict[str, Any], returning: str = "id"
) -> tuple[str, list[Any]]:
    """A `moved` CTE (the guarded UPDATE) and, when the new status no longer needs the photo, a
    `photo_gone` CTE deleting it in the same statement."""
    sets, params = _sets(to_status, fields)
    sql = (
        f"WITH moved AS (UPDATE jobs SET {', '.join(sets)} WHERE id = %s AND status = ANY(%s) "
        f"RETURNING {returning})"
    )
    if to_status in DROPS_IMAGE:
        sql += ", photo_gone AS (DELETE FROM job_images WHERE job_id IN (SELECT id FROM moved))"
    return sql, [*params, job_id, list(from_statuses)]


def transition(
    job_id: str,
    from_statuses: tuple[str, ...],
    to_status: str,
    *,
    conn: psycopg.Connection | None = None,
    retry: bool = True,
    **fields,
) -> bool:
    """Moves a job to `to_status` if it is in one of `from_statuses`; returns whether it did.
    With `conn`, runs in the caller's transaction (e.g. while it holds the job's row lock);
    without, in its own, retried across a short outage unless `retry` is False (a request
    handler). A retry after a commit whose answer was lost returns False: the caller stops, and the
    reconciler re-sends the job."""
    if conn is not None:
        return _transition(conn, job_id, from_statuses, to_status, fields)
    return (_transition_retrying if retry else _transition_own)(job_id, from_statuses, to_status, fields)


def _transition(conn, job_id, from_statuses, to_status, fields) -> bool:
    sql, params = _moved(job_id, from_statuses, to_status, fields)
    return conn.execute(sql + " SELECT id FROM moved", params).fetchone() is not None


def _transition_own(job_id, from_statuses, to_status, fields) -> bool:
    with statement() as conn:
        return _transition(conn, job_id, from_statuses, to_status, fields)


_transition_retrying = retry_transient(_transition_own)


@retry_transient
def claim(job_id: str) -> dict[str, Any] | None:
    """Starts (or restarts, for a redelivered task) the FER stage: moves the job to `detecting`
    and returns its `attempts` and `image` (None when the photo is gone) in one statement.
    None when the job is unknown or past the FER stage. The row comes back in binary: as text
    PostgreSQL would hex-encode the photo and psycopg decode it again (0.46 -> 0.15 ms of CPU for
    a 75 KB JPEG, both sides together)."""
    sql, params = _moved(job_id, CLAIMABLE, DETECTING, {}, returning="id, attempts")
    with statement() as conn:
        row = conn.execute(
            sql
            + """ SELECT moved.attempts, job_images.content AS image
                                     FROM moved LEFT JOIN job_images ON job_images.job_id = moved.id""",
            params,
            binary=True,
        ).fetchone()
    if row and row["image"] is not None:
        row["image"] = bytes(row["image"])
    return row


def fail(job_id: str, code: str, message: str, *, retry: bool = True) -> bool:
    """Ends an unfinished job with a stable error code; a finished job is left as it is."""
    return transition(job_id, UNFINISHED, FAILED, retry=retry, error_code=code, error_message=message)


def heartbeat(job_id: str, error: str | None = None) -> bool:
    """A worker still holds this unfinished job (e.g. waiting out a model-server outage): moves
    `updated_at` on, so the reconciler does not re-send it meanwhile, and keeps the error it is
    waiting on (`last_error`, quoted if the job is given up). Not retried: best effort."""
    with statement() as conn:
        row = conn.execute(
            """UPDATE jobs SET updated_at = now(), last_error = coalesce(%s, last_error)
               WHERE id = %s AND status = ANY(%s) RETURNING id""",
            (error, job_id, list(UNFINISHED)),
        ).fetchone()
    return row is not None


def poll(job_id: str) -> dict[str, Any] | None:
    """The job as a polling client sees it: a plain read, never retried (the client gets a 503
    at once). Reading never fails a job: stuck jobs are the reconciler's."""
    return _get(job_id)


def purge_finished(older_than_s: float, *, dry_run: bool = False, batch: int = 1000) -> int:
    """Deletes finished jobs (their results) that finished more than `older_than_s` ago, in
    batches so no statement holds many rows; returns how many (would) go. A photo still stored
    goes with its job (ON DELETE CASCADE); feedback stays, unlinked (feedback.job_id ON DELETE SET
    NULL): it is the listener's, and keeps their dislikes working. Safe to run concurrently."""
    where = f"status IN {FINAL_SQL} AND finished_at < now() - make_interval(secs => %(age)s)"
    params = {"age": older_than_s, "batch": batch}
    if dry_run:
        with connection() as conn:
            return conn.execute(f"SELECT count(*) AS n FROM jobs WHERE {where}", params).fetchone()["n"]
    total = 0
    while True:
        with connection() as conn:
            n = conn.execute(
                f"""DELETE FROM jobs WHERE id IN (
                        SELECT id FROM jobs WHERE {where} LIMIT %(batch)s FOR UPDATE SKIP LOCKED)""",
                params,
            ).rowcount
        total += n
        if n < batch:
            return total


def record_feedback(job: dict, track_id: str, liked: bool) -> None:
    """Latest opinion per (client, mode, track) wins; a dislike keeps that track out of that
    client's future playlists in that mode."""
    with connection() as conn:
        conn.execute(
            """INSERT INTO feedback (client_key, mode, track_id, liked, job_id)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (client_key, mode, track_id)
               DO UPDATE SET liked = EXCLUDED.liked, job_id = EXCLUDED.job_id, updated_at = now()""",
            (job["client_key"], job["mode"], track_id, liked, job["id"]),
        )


def delete_feedback(job: dict, track_id: str) -> bool:
    """Undoes a like or dislike of a track (the job's client and mode); False when there was none."""
    with connection() as conn:
        return (
            conn.execute(
                "DELETE FROM feedback WHERE client_key = %s AND mode = %s AND track_id = %s",
                (job["client_key"], job["mode"], track_id),
            ).rowcount
            > 0
        )


def status_counts(window_s: float = 3600.0) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Unfinished jobs by status, and jobs finished in the last `window_s` by (status, error code),
    in one statement; both read partial indexes (jobs_unfinished, jobs_finished), for metrics."""
    with connection() as conn:
        rows = conn.execute(
            f"""SELECT 'unfinished' AS kind, status, '' AS code, count(*) AS n FROM jobs
                WHERE status NOT IN {FINAL_SQL} GROUP BY status
                UNION ALL
                SELECT 'finished', status, coalesce(error_code, ''), count(*) FROM jobs
                WHERE status IN {FINAL_SQL} AND finished_at > now() - make_interval(secs => %s)
                GROUP BY status, error_code""",
            (window_s,),
        ).fetchall()
    unfinished = {r["status"]: r["n"] for r in rows if r["kind"] == "unfinished"}
    finished = {(r["status"], r["code"]): r["n"] for r in rows if r["kind"] == "finished"}
    return unfinished, finished


def count_unfinished(client_key: str) -> int:
    """How many of one client's jobs are not finished (the partial index jobs_unfinished_by_client)."""
    with statement() as conn:
        return conn.execute(
            f"SELECT count(*) AS n FROM jobs WHERE client_key = %s AND status NOT IN {FINAL_SQL}",
            (client_key,),
        ).fetchone()["n"]
