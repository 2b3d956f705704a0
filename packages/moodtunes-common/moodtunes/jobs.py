"""The job store: every state change of a job is a guarded UPDATE in PostgreSQL.

Transitions name the statuses they may start from, so a redelivered task, a late worker or a
timed-out job can never move a job backwards or overwrite a final result. Each operation is one
statement (data-modifying CTEs), so a job costs few round trips: see tests/db_trips.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from moodtunes.db import connection
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
UNFINISHED = tuple(s for s in STATUSES if s not in FINAL)
DROPS_IMAGE = (RECOMMENDING, DONE, FAILED)  # the photo is kept only until its faces are classified
CLAIMABLE = (QUEUED, DETECTING, CLASSIFYING)  # a (re)delivered FER task may start from these

JOB_COLUMNS = """id, status, mode, track_limit, filters, diversity, client_key, image_type, image_bytes,
    image_width, image_height, faces, chosen_face, model, recommendation, error_code,
    error_message, attempts, created_at, updated_at, started_at, finished_at"""
TIMEOUT_MESSAGE = "the job made no progress in time; please submit it again"


def new_job_id() -> str:
    return str(uuid.uuid4())


@contextmanager
def _using(conn: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
    """The caller's connection (its transaction), or a pooled one committed on exit."""
    if conn is not None:
        yield conn
    else:
        with connection() as own:
            yield own


def _db_value(value: Any) -> Any:
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
) -> dict[str, Any]:
    """Stores a queued job and its photo in one statement; returns its status and created_at."""
    with connection() as conn:
        return conn.execute(
            """WITH job AS (
                   INSERT INTO jobs (id, status, mode, track_limit, filters, diversity, client_key,
                                     image_type, image_bytes, image_width, image_height)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
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
                image_type,
                len(image),
                width,
                height,
                image,
            ),
        ).fetchone()


def get(job_id: str) -> dict[str, Any] | None:
    with connection() as conn:
        return conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)).fetchone()


def image(job_id: str) -> bytes | None:
    with connection() as conn:
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
        params.append(_db_value(value))
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
    **fields,
) -> bool:
    """Moves a job to `to_status` if it is in one of `from_statuses`; returns whether it did.
    With `conn`, runs in the caller's transaction (e.g. while it holds the job's row lock)."""
    sql, params = _moved(job_id, from_statuses, to_status, fields)
    with _using(conn) as c:
        return c.execute(sql + " SELECT id FROM moved", params).fetchone() is not None


def claim(job_id: str) -> dict[str, Any] | None:
    """Starts (or restarts, for a redelivered task) the FER stage: moves the job to `detecting`
    and returns its `attempts` and `image` (None when the photo is gone) in one statement.
    None when the job is unknown or past the FER stage."""
    sql, params = _moved(job_id, CLAIMABLE, DETECTING, {}, returning="id, attempts")
    with connection() as conn:
        row = conn.execute(
            sql
            + """ SELECT moved.attempts, job_images.content AS image
                                     FROM moved LEFT JOIN job_images ON job_images.job_id = moved.id""",
            params,
        ).fetchone()
    if row and row["image"] is not None:
        row["image"] = bytes(row["image"])
    return row


def fail(job_id: str, code: str, message: str) -> bool:
    """Ends an unfinished job with a stable error code; a finished job is left as it is."""
    return transition(job_id, UNFINISHED, FAILED, error_code=code, error_message=message)


def _expire_sql(one_job: bool) -> str:
    """CTEs failing stale jobs (no progress for %(timeout_s)s) and dropping their photos."""
    return f"""WITH expired AS (
                   UPDATE jobs SET status = %(failed)s, error_code = 'timeout',
                       error_message = %(message)s, updated_at = now(), finished_at = now()
                   WHERE status <> ALL(%(final)s)
                     AND updated_at < now() - make_interval(secs => %(timeout_s)s)
                     {"AND id = %(id)s" if one_job else ""}
                   RETURNING {JOB_COLUMNS}),
               photo_gone AS (DELETE FROM job_images WHERE job_id IN (SELECT id FROM expired))"""


def _expire_params(timeout_s: float, job_id: str | None = None) -> dict[str, Any]:
    return {
        "failed": FAILED,
        "message": TIMEOUT_MESSAGE,
        "final": list(FINAL),
        "timeout_s": timeout_s,
        "id": job_id,
    }


def expire_stale(timeout_s: float, job_id: str | None = None) -> int:
    """Fails jobs that made no progress for `timeout_s`: no job stays unfinished forever."""
    with connection() as conn:
        rows = conn.execute(
            _expire_sql(job_id is not None) + " SELECT id FROM expired", _expire_params(timeout_s, job_id)
        ).fetchall()
    return len(rows)


def poll(job_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The job as a polling client must see it, in one statement: failed with `timeout` first
    if it made no progress for `timeout_s`."""
    with connection() as conn:
        return conn.execute(
            _expire_sql(True)
            + f""" SELECT * FROM expired UNION ALL
                SELECT {JOB_COLUMNS} FROM jobs WHERE id = %(id)s AND NOT EXISTS (SELECT FROM expired)""",
            _expire_params(timeout_s, job_id),
        ).fetchone()


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
