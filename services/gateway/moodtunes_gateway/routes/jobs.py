"""POST /v1/jobs and GET /v1/jobs/{id}: create, enqueue and poll emotion-to-music jobs."""

from __future__ import annotations

import logging
import re
import uuid
from enum import Enum
from typing import Annotated

import psycopg
from fastapi import APIRouter, Cookie, File, Form, Header, Request, Response, UploadFile
from prometheus_client import Counter
from pydantic import BaseModel, Field

from moodtunes import jobs, modes
from moodtunes.config import get_settings
from moodtunes.events import job_options
from moodtunes.queue import enqueue_fer
from moodtunes.results import Filters
from moodtunes_gateway.errors import APIError
from moodtunes_gateway.images import check_image
from moodtunes_gateway.schemas import Job, JobAccepted

log = logging.getLogger("moodtunes.gateway")
router = APIRouter(prefix="/v1", tags=["jobs"])
JOBS_CREATED = Counter("moodtunes_jobs_created_total", "Jobs accepted", ["mode"])
JOBS_REJECTED = Counter("moodtunes_jobs_rejected_total", "Uploads rejected", ["code"])
READ_CHUNK = 1 << 20

Mode = Enum("Mode", {name: name for name in modes.names()}, type=str)
CLIENT_COOKIE = "moodtunes_client"
CLIENT_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_GENRES = 10


async def read_limited(upload: UploadFile, max_bytes: int) -> bytes:
    """Reads at most max_bytes + 1 bytes, so an oversized upload is refused without buffering it all."""
    chunks, size = [], 0
    while chunk := await upload.read(READ_CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, "file_too_large", f"The file is over the {max_bytes}-byte limit.")
    return b"".join(chunks)


def _database_unavailable(exc: Exception) -> APIError:
    log.error("database unavailable: %s", exc)
    return APIError(
        503,
        "database_unavailable",
        "The job store is unavailable; try again shortly.",
        headers={"Retry-After": "5"},
    )


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={
        413: {"description": "file too large"},
        415: {"description": "unsupported format"},
        422: {"description": "invalid image or parameters"},
        503: {"description": "busy"},
    },
)
async def create_job(
    request: Request,
    response: Response,
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
    client_key: Annotated[str | None, Form(description="who is listening (feedback is per client)")] = None,
    x_client_key: Annotated[str | None, Header()] = None,
    moodtunes_client: Annotated[str | None, Cookie()] = None,
):
    s = get_settings()
    mode = Mode(mode).value
    filters = job_filters(year_min, year_max, genres, min_popularity, exclude_explicit)
    client = client_key or x_client_key or moodtunes_client
    if client is not None and not CLIENT_KEY.match(client):
        raise APIError(422, "invalid_client_key", "client_key: 1-64 letters, digits or _.:- only.")
    if client is None:  # anonymous session: remembered by a cookie so dislikes stick
        client = "anon:" + uuid.uuid4().hex
        response.set_cookie(CLIENT_COOKIE, client, max_age=365 * 86400, httponly=True, samesite="lax")
    try:
        data = await read_limited(image, s.max_upload_bytes)
        checked = check_image(data, s.max_upload_bytes, s.max_image_pixels)
    except APIError as exc:
        JOBS_REJECTED.labels(exc.code).inc()
        raise
    job_id = jobs.new_job_id()
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
            client_key=client,
            diversity=diversity,
        )
    except psycopg.OperationalError as exc:
        raise _database_unavailable(exc) from exc
    try:  # the options travel with the work: no worker reads them back from the job row
        enqueue_fer(
            job_id,
            options=job_options(
                mode=mode, limit=limit, filters=filters, diversity=diversity, client_key=client
            ),
        )
    except Exception as exc:  # broker down: the job must not sit in 'queued' forever
        log.error("enqueue failed for job %s: %s", job_id, exc)
        jobs.fail(job_id, "queue_unavailable", "The work queue was unavailable; please submit again.")
        raise APIError(
            503,
            "queue_unavailable",
            "The work queue is unavailable; try again shortly.",
            headers={"Retry-After": "5"},
        ) from exc
    JOBS_CREATED.labels(mode).inc()
    url = str(request.url_for("get_job", job_id=job_id).path)
    response.headers["Location"] = url
    return JobAccepted(id=job_id, status=created["status"], status_url=url, created_at=created["created_at"])


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


@router.get(
    "/jobs/{job_id}", response_model=Job, name="get_job", responses={404: {"description": "unknown job"}}
)
def get_job(job_id: str):
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise APIError(404, "job_not_found", f"No job with id {job_id!r}.") from None
    try:
        row = jobs.poll(job_id, get_settings().job_timeout_s)
    except psycopg.OperationalError as exc:
        raise _database_unavailable(exc) from exc
    if row is None:
        raise APIError(404, "job_not_found", f"No job with id {job_id!r}.")
    return job_view(row)


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
        404: {"description": "unknown job"},
        409: {"description": "job not done"},
        422: {"description": "track not in this job's playlist"},
    },
)
def post_feedback(job_id: str, feedback: FeedbackIn):
    """A like or dislike of a recommended track; dislikes are never recommended again to the
    same client in the same mode."""
    try:
        uuid.UUID(job_id)
        row = jobs.get(job_id)
    except ValueError:
        row = None
    except psycopg.OperationalError as exc:
        raise _database_unavailable(exc) from exc
    if row is None:
        raise APIError(404, "job_not_found", f"No job with id {job_id!r}.")
    if row["status"] != jobs.DONE:
        raise APIError(409, "job_not_done", f"The job is {row['status']}; rate tracks once it is done.")
    if feedback.track_id not in {t["track_id"] for t in row["recommendation"]["tracks"]}:
        raise APIError(422, "unknown_track", "That track is not in this job's playlist.")
    jobs.record_feedback(row, feedback.track_id, feedback.liked)
    return FeedbackOut(job_id=job_id, track_id=feedback.track_id, liked=feedback.liked, mode=row["mode"])


@router.get("/modes", tags=["modes"])
def list_modes():
    """The recommendation modes and job options this deployment offers."""
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
    }
