"""POST /v1/jobs and GET /v1/jobs/{id}: create, enqueue and poll emotion-to-music jobs.

Decoding a photo, the database and the Redis publish all block, so they run in FastAPI's thread
pool (plain `def` handlers, and `submit_job` for a POST), and the event loop stays free for every
other request (/healthz keeps answering in milliseconds during large uploads:
benchmarks/gateway_stall.py). Only the multipart parsing, which streams, and a POST's or GET's
wait for its job run on the loop.

A job and its feedback belong to their owner (moodtunes_gateway.identity); anyone else is told the
job does not exist.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import uuid
from enum import Enum
from typing import Annotated

import psycopg
from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, Security, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from moodtunes import jobs, modes, observability
from moodtunes.config import get_settings
from moodtunes.events import job_options
from moodtunes.group import DEFAULT_DRIVE
from moodtunes.images import FORMATS as IMAGE_FORMATS
from moodtunes.queue import enqueue_fer
from moodtunes.results import Filters
from moodtunes_gateway import backends, finished, guards
from moodtunes_gateway.errors import APIError
from moodtunes_gateway.identity import Owner, client_ip, current_owner, owner_or_new_session
from moodtunes_gateway.images import check_image
from moodtunes_gateway.schemas import Drive, Job, JobAccepted

log = logging.getLogger("moodtunes.gateway")
router = APIRouter(prefix="/v1", tags=["jobs"])
JOBS_CREATED = Counter("moodtunes_jobs_created_total", "Jobs accepted", ["mode"])
JOBS_REJECTED = Counter("moodtunes_jobs_rejected_total", "Uploads rejected", ["code"])

Mode = Enum("Mode", {name: name for name in modes.names()}, type=str)
MAX_GENRES = 10
# Documents the API key in /docs ("Authorize"); identity.current_owner does the checking.
API_KEY = HTTPBearer(auto_error=False, description="An API key from `moodtunes keys create`")
ApiKey = Annotated[HTTPAuthorizationCredentials | None, Security(API_KEY)]
BUSY = {"description": "a backing service is down or the queue is full (Retry-After)"}
LIMITED = {"description": "rate_limited or too_many_jobs (Retry-After)"}
UNAUTHORIZED = {"description": "invalid_api_key or api_key_revoked"}


def job_not_found(job_id: str) -> APIError:
    return APIError(404, "job_not_found", f"No job with id {job_id!r}.")


@functools.cache
def decode_slots() -> threading.BoundedSemaphore:
    """Checking an uploaded photo decodes it: CPU work (about 0.04 s for a 12 MP JPEG at 1/8 scale;
    a PNG is decoded in full). At most GATEWAY_DECODE_CONCURRENCY run at a time (default: one less
    than the cores), so a burst of large uploads always leaves the event loop (health checks,
    polls, small requests) a core to run on."""
    wanted = get_settings().gateway_decode_concurrency or (os.cpu_count() or 2) - 1
    return threading.BoundedSemaphore(max(1, wanted))


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {"model": Job, "description": "with `wait`: the job finished within it (done or failed)"},
        401: UNAUTHORIZED,
        413: {"description": "file too large"},
        415: {"description": "unsupported format"},
        422: {"description": "invalid image or parameters"},
        429: LIMITED,
        503: BUSY,
    },
)
async def create_job(
    request: Request,
    response: Response,
    owner: Annotated[Owner, Depends(owner_or_new_session)],
    _key: ApiKey,
    image: Annotated[UploadFile, File(description="A photo with a face: JPEG, PNG or WebP")],
    mode: Annotated[Mode, Form(description="How the music relates to the mood (see /v1/modes)")] = "match",
    limit: Annotated[int, Form(ge=1, le=50, description="Number of tracks")] = 10,
    year_min: Annotated[int | None, Form(ge=1800, le=2100)] = None,
    year_max: Annotated[int | None, Form(ge=1800, le=2100)] = None,
    genres: Annotated[str | None, Form(max_length=400, description="comma-separated, any of")] = None,
    min_popularity: Annotated[int | None, Form(ge=0, le=100)] = None,
    exclude_explicit: Annotated[bool, Form(description="drop tracks flagged explicit")] = False,
    diversity: Annotated[
        float | None, Form(ge=0, le=1, description="0 nearest only .. 1 most varied")
    ] = None,
    drive: Annotated[
        Drive,
        Form(
            description="face: the largest face drives the music; group: every face, weighted by confidence"
        ),
    ] = DEFAULT_DRIVE,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=finished.MAX_WAIT_S,
            description="Seconds to wait for the job to finish: if it does within them, the answer is "
            "the finished job (200), as `GET /v1/jobs/{id}` would give it; else the usual 202. One "
            "request instead of a submit and a long poll. 0 (the default) answers at once.",
        ),
    ] = 0.0,
):
    """A photo in, a queued job out (202). Without an API key or a session the caller gets a
    session cookie here: send it back to poll the job and rate its tracks. With `wait`, a job that
    finishes within it comes back whole (200)."""
    job_id = jobs.new_job_id()
    submit = functools.partial(
        submit_job,
        request,
        response,
        owner,
        job_id,
        image,
        Mode(mode).value,
        limit,
        job_filters(year_min, year_max, genres, min_popularity, exclude_explicit),
        diversity,
        drive,
    )
    # a waiter listens from before the job is queued, so no finish is missed
    with finished.finished_jobs.listening(job_id) if wait > 0 else contextlib.nullcontext() as woken:
        accepted = await run_in_threadpool(submit)
        observability.bind_job_id(job_id)  # from here on (the access log line too) on the loop
        if wait <= 0:
            return accepted
        try:
            row = await finished.finished_jobs.wait(
                job_id, wait, lambda: owned_row(jobs.poll, job_id, owner, job_not_found), listening=woken
            )
        except APIError as exc:  # the job is queued all the same: the client polls it as usual
            log.warning("job %s: not waited for (%s); answered 202", job_id, exc.code)
            return accepted
    if row["status"] not in jobs.FINAL:
        return accepted.model_copy(update={"status": row["status"]})
    return finished_answer(row, response)


def submit_job(
    request: Request,
    response: Response,
    owner: Owner,
    job_id: str,
    image: UploadFile,
    mode: str,
    limit: int,
    filters: Filters,
    diversity: float | None,
    drive: str,
) -> JobAccepted:
    """The blocking part of a POST, in a worker thread: the refusals, the photo's check, the job's
    row and its message to the FER queue."""
    s = get_settings()
    # The cheap refusals first, before the photo is decoded or anything is written
    guards.check_rate("jobs", s.rate_limit_jobs, owner.limit_key)
    backends.use_gateway_pool()
    guards.check_unfinished(owner.key)
    request.app.state.queue_depth.check()
    data, checked = read_checked_image(image)
    observability.bind_job_id(job_id)  # this request's log lines and span name the job from here on
    try:
        created = jobs.create(
            job_id,
            mode=mode,
            limit=limit,
            image=data,
            image_type=checked.content_type,
            width=checked.width,
            height=checked.height,
            filters=filters,
            client_key=owner.key,
            diversity=diversity,
            drive=drive,
        )
    except psycopg.OperationalError as exc:
        raise backends.database_unavailable(exc) from exc
    # the options travel with the work: no worker reads them back from the job row
    enqueue_or_fail(
        job_id,
        job_options(
            mode=mode,
            limit=limit,
            filters=filters,
            diversity=diversity,
            client_key=owner.key,
            drive=drive,
        ),
    )
    if owner.new_session:
        request.app.state.sessions.set_cookie(response, owner.new_session)
    JOBS_CREATED.labels(mode).inc()
    log.info("job %s queued: mode %s, limit %d, %d bytes", job_id, mode, limit, len(data))
    url = str(request.url_for("get_job", job_id=job_id).path)
    response.headers["Location"] = url
    return JobAccepted(id=job_id, status=created["status"], status_url=url, created_at=created["created_at"])


def finished_answer(row: dict, response: Response) -> Response:
    """A finished job as `GET /v1/jobs/{id}` gives it, with status 200 and the headers the POST set
    (Location, a new session's cookie): a returned Response does not get them from `response`."""
    answer = Response(
        Job.model_validate(job_view(row)).model_dump_json(), status_code=200, media_type="application/json"
    )
    answer.raw_headers.extend(response.raw_headers)
    return answer


def read_checked_image(image: UploadFile):
    """The uploaded photo's bytes and what check_image found (4xx with a code when it is no good)."""
    s = get_settings()
    try:
        data = image.file.read(s.max_upload_bytes + 1)  # the file is on disk already, within the limit
        with decode_slots():
            checked = check_image(data, s.max_upload_bytes, s.max_image_pixels)
    except APIError as exc:
        JOBS_REJECTED.labels(exc.code).inc()
        raise
    return data, checked


def enqueue_or_fail(job_id: str, options) -> None:
    """Sends the stored job to the FER queue; with the broker down the job fails at once (never
    sits in 'queued') and the client gets a 503 queue_unavailable."""
    try:
        enqueue_fer(job_id, app=backends.producer(), options=options)
    except Exception as exc:
        log.error("enqueue failed for job %s: %s", job_id, exc)
        try:
            jobs.fail(
                job_id,
                "queue_unavailable",
                "The work queue was unavailable; please submit again.",
                retry=False,  # a client is waiting: no outage retries here
            )
        except psycopg.OperationalError as db_exc:  # both down: the job times out instead
            log.error("could not fail job %s: %s", job_id, db_exc)
        raise backends.queue_unavailable(exc) from exc


def job_filters(year_min, year_max, genres, min_popularity, exclude_explicit) -> Filters:
    if year_min is not None and year_max is not None and year_min > year_max:
        raise APIError(422, "invalid_filter", f"year_min ({year_min}) is after year_max ({year_max}).")
    genre_list = [g.strip() for g in (genres or "").split(",") if g.strip()]
    if len(genre_list) > MAX_GENRES or any(len(g) > 40 for g in genre_list):
        raise APIError(422, "invalid_filter", f"genres: at most {MAX_GENRES} names of up to 40 characters.")
    return Filters(
        year_min=year_min,
        year_max=year_max,
        genres=genre_list,
        min_popularity=min_popularity,
        exclude_explicit=exclude_explicit,
    )


def job_view(row: dict) -> dict:
    """A job row as the API's Job; the stored results are validated into their shared models
    (moodtunes.results) by the response model."""
    return {
        "id": str(row["id"]),
        "status": row["status"],
        "mode": row["mode"],
        "limit": row["track_limit"],
        "filters": row["filters"],
        "diversity": row["diversity"],
        "drive": row["drive"],
        "session_id": str(row["session_id"]) if row.get("session_id") else None,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "image": {
            "type": row["image_type"],
            "bytes": row["image_bytes"],
            "width": row["image_width"],
            "height": row["image_height"],
        },
        "faces": row["faces"],
        "chosen_face": row["chosen_face"],
        "model": row["model"],
        "recommendation": row["recommendation"],
        "error": {"code": row["error_code"], "message": row["error_message"]} if row["error_code"] else None,
    }


def valid_id(job_id: str) -> bool:
    try:
        uuid.UUID(job_id)
    except ValueError:
        return False
    return True


def owned_row(fetch, row_id: str, owner: Owner | None, not_found) -> dict:
    """`fetch(row_id)`'s row (a job's, a live session's), to its owner only: for anyone else, and
    for an unknown or malformed id, `not_found(row_id)` (404): it does not exist."""
    if owner is None or not valid_id(row_id):
        raise not_found(row_id)
    backends.use_gateway_pool()
    try:
        row = fetch(row_id)
    except psycopg.OperationalError as exc:
        raise backends.database_unavailable(exc) from exc
    if row is None or row["client_key"] != owner.key:
        raise not_found(row_id)
    return row


@router.get(
    "/jobs/{job_id}",
    response_model=Job,
    name="get_job",
    responses={401: UNAUTHORIZED, 404: {"description": "no such job of yours"}, 503: BUSY},
)
async def get_job(
    job_id: str,
    owner: Annotated[Owner | None, Depends(current_owner)],
    _key: ApiKey,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=finished.MAX_WAIT_S,
            description="Seconds to wait for the job to finish before answering (long polling): the "
            "answer comes as soon as it is done or failed, else after this long with its current status. "
            "0 (the default) answers at once.",
        ),
    ] = 0.0,
):
    """The job, to its owner only: to anyone else it does not exist (404, as for an unknown id).
    With `wait`, one request replaces a polling loop."""

    def read() -> dict:
        return owned_row(jobs.poll, job_id, owner, job_not_found)

    if wait > 0:  # reads the row itself once it listens, so a finished job answers at once
        return job_view(await finished.finished_jobs.wait(job_id, wait, read))
    return job_view(await run_in_threadpool(read))


class FeedbackIn(BaseModel):
    track_id: str = Field(min_length=1, max_length=200)
    liked: bool


class FeedbackOut(BaseModel):
    job_id: str
    track_id: str
    liked: bool
    mode: str


@router.post(
    "/jobs/{job_id}/feedback",
    status_code=201,
    response_model=FeedbackOut,
    responses={
        401: UNAUTHORIZED,
        404: {"description": "no such job of yours"},
        409: {"description": "job not done"},
        422: {"description": "track not in this job's playlist"},
        429: LIMITED,
        503: BUSY,
    },
)
def post_feedback(
    request: Request,
    job_id: str,
    feedback: FeedbackIn,
    owner: Annotated[Owner | None, Depends(current_owner)],
    _key: ApiKey,
):
    """A like or dislike of a recommended track of one of your jobs, for later playlists of the
    same client in the same mode: a disliked track is never recommended again; likes pull the
    playlist's targets toward the liked tracks (up to halfway, more with more likes)."""
    row = _own_job_for_feedback(request, job_id, owner)
    if row["status"] != jobs.DONE:
        raise APIError(409, "job_not_done", f"The job is {row['status']}; rate tracks once it is done.")
    if feedback.track_id not in {t["track_id"] for t in row["recommendation"]["tracks"]}:
        raise APIError(422, "unknown_track", "That track is not in this job's playlist.")
    try:
        jobs.record_feedback(row, feedback.track_id, feedback.liked)
    except psycopg.OperationalError as exc:
        raise backends.database_unavailable(exc) from exc
    return FeedbackOut(job_id=job_id, track_id=feedback.track_id, liked=feedback.liked, mode=row["mode"])


def _own_job_for_feedback(request: Request, job_id: str, owner: Owner | None) -> dict:
    client = owner.limit_key if owner else "ip:" + client_ip(request)
    guards.check_rate("feedback", get_settings().rate_limit_feedback, client)
    return owned_row(jobs.get, job_id, owner, job_not_found)


@router.delete(
    "/jobs/{job_id}/feedback/{track_id}",
    status_code=204,
    responses={
        401: UNAUTHORIZED,
        404: {"description": "no such job of yours, or no feedback on that track"},
        429: LIMITED,
        503: BUSY,
    },
)
def delete_feedback(
    request: Request,
    job_id: str,
    track_id: str,
    owner: Annotated[Owner | None, Depends(current_owner)],
    _key: ApiKey,
):
    """Undoes your like or dislike of a track (for this job's mode): later playlists no longer use it."""
    row = _own_job_for_feedback(request, job_id, owner)
    try:
        deleted = jobs.delete_feedback(row, track_id)
    except psycopg.OperationalError as exc:
        raise backends.database_unavailable(exc) from exc
    if not deleted:
        raise APIError(404, "feedback_not_found", "You have no like or dislike of that track in this mode.")
    return Response(status_code=204)


@router.get("/modes", tags=["modes"])
def list_modes():
    """The recommendation modes and job options this deployment offers, and the upload limits (the
    web page checks a photo's type and size against them before sending it)."""
    s = get_settings()
    return {
        "modes": modes.describe(),
        "filters": {
            "year_min": "integer 1800-2100",
            "year_max": "integer 1800-2100",
            "genres": f"comma-separated, up to {MAX_GENRES}; a track matches any",
            "min_popularity": "integer 0-100",
            "exclude_explicit": "boolean (the default catalogue has no explicit flag)",
        },
        "diversity": {"default": modes.config()["playlist"]["diversity"], "min": 0, "max": 1},
        "limit": {"default": 10, "min": 1, "max": 50},
        "upload": {
            "max_bytes": s.max_upload_bytes,
            "max_pixels": s.max_image_pixels,
            "max_side": s.max_image_side,
            "formats": list(dict.fromkeys(IMAGE_FORMATS.values())),
        },
    }
