"""Live mood sessions: /v1/sessions (open, read, close) and /v1/sessions/{id}/frames.

A frame is a job of the session (moodtunes.live): the same image rules, queue, worker and model as
POST /v1/jobs. A session belongs to its owner like a job does; to anyone else it does not exist.
"""

from __future__ import annotations

import logging
from typing import Annotated

import psycopg
from fastapi import APIRouter, Body, Depends, File, Request, Response, UploadFile
from prometheus_client import Counter
from pydantic import BaseModel, Field

from moodtunes import jobs, live
from moodtunes.config import get_settings
from moodtunes.events import job_options
from moodtunes.group import DEFAULT_DRIVE
from moodtunes_gateway import backends, guards
from moodtunes_gateway.errors import APIError
from moodtunes_gateway.identity import Owner, current_owner, owner_or_new_session
from moodtunes_gateway.routes.jobs import (
    BUSY,
    LIMITED,
    UNAUTHORIZED,
    ApiKey,
    Mode,
    enqueue_or_fail,
    job_filters,
    owned_row,
    read_checked_image,
)
from moodtunes_gateway.schemas import FrameAccepted, LiveSession, LiveSessionCreated

log = logging.getLogger("moodtunes.gateway")
router = APIRouter(prefix="/v1", tags=["live sessions"])
FRAMES = Counter(
    "moodtunes_live_frames_total", "Live-session frames accepted, and waiting ones superseded", ["event"]
)
NOT_FOUND = {"description": "no such session of yours"}


class SessionRequest(BaseModel):
    mode: Mode = "match"
    limit: int = Field(10, ge=1, le=50, description="Number of tracks")
    window_s: float = Field(
        live.DEFAULT_WINDOW_S,
        ge=live.MIN_WINDOW_S,
        le=live.MAX_WINDOW_S,
        description="seconds of frames the session lists (the trend spans the whole session)",
    )
    diversity: float | None = Field(None, ge=0, le=1, description="0 nearest only .. 1 most varied")
    year_min: int | None = Field(None, ge=1800, le=2100)
    year_max: int | None = Field(None, ge=1800, le=2100)
    genres: list[str] = Field(default_factory=list, description="any of")
    min_popularity: int | None = Field(None, ge=0, le=100)
    exclude_explicit: bool = False


def session_not_found(session_id: str) -> APIError:
    return APIError(404, "session_not_found", f"No live session with id {session_id!r}.")


@router.post(
    "/sessions",
    status_code=201,
    response_model=LiveSessionCreated,
    responses={401: UNAUTHORIZED, 422: {"description": "invalid parameters"}, 429: LIMITED, 503: BUSY},
)
def create_session(
    request: Request,
    response: Response,
    owner: Annotated[Owner, Depends(owner_or_new_session)],
    _key: ApiKey,
    body: Annotated[SessionRequest, Body()] = None,
):
    """Opens a live mood session; send it frames, read it back for the smoothed mood and playlist."""
    body = body or SessionRequest()
    guards.check_rate("jobs", get_settings().rate_limit_jobs, owner.limit_key)
    filters = job_filters(
        body.year_min, body.year_max, ",".join(body.genres), body.min_popularity, body.exclude_explicit
    )
    session_id = live.new_session_id()
    backends.use_gateway_pool()
    try:
        row = live.create(
            session_id,
            client_key=owner.key,
            mode=Mode(body.mode).value,
            limit=body.limit,
            filters=filters.model_dump(mode="json", exclude_defaults=True),
            diversity=body.diversity,
            window_s=body.window_s,
        )
    except psycopg.OperationalError as exc:
        raise backends.database_unavailable(exc) from exc
    if owner.new_session:
        request.app.state.sessions.set_cookie(response, owner.new_session)
    url = str(request.url_for("get_session", session_id=session_id).path)
    response.headers["Location"] = url
    return LiveSessionCreated(
        id=session_id,
        status_url=url,
        frames_url=str(request.url_for("post_frame", session_id=session_id).path),
        mode=row["mode"],
        limit=row["track_limit"],
        window_s=row["window_s"],
        created_at=row["created_at"],
    )


@router.post(
    "/sessions/{session_id}/frames",
    status_code=202,
    response_model=FrameAccepted,
    name="post_frame",
    responses={
        401: UNAUTHORIZED,
        404: NOT_FOUND,
        409: {"description": "session_closed"},
        413: {"description": "file too large"},
        415: {"description": "unsupported format"},
        422: {"description": "invalid image"},
        429: LIMITED,
        503: BUSY,
    },
)
def post_frame(
    request: Request,
    session_id: str,
    owner: Annotated[Owner | None, Depends(current_owner)],
    _key: ApiKey,
    image: Annotated[UploadFile, File(description="A webcam frame: JPEG, PNG or WebP")],
):
    """One frame in (202): it goes through the same queue, worker and model as a photo. A frame
    of this session still waiting in the queue is dropped for this newer one (`superseded`)."""
    s = get_settings()
    session = owned_row(live.options, session_id, owner, session_not_found)  # not its frames or trend
    if session["closed_at"] is not None:
        raise session_closed(session_id)
    guards.check_rate("frames", s.rate_limit_frames, owner.limit_key)
    guards.check_unfinished(owner.key)
    request.app.state.queue_depth.check()
    data, checked = read_checked_image(image)
    frame_id = jobs.new_job_id()
    filters = session["filters"]
    try:
        superseded = live.add_frame(
            session_id,
            frame_id,
            mode=session["mode"],
            limit=session["track_limit"],
            image=data,
            image_type=checked.content_type,
            width=checked.width,
            height=checked.height,
            filters=filters,
            client_key=owner.key,
            diversity=session["diversity"],
        )
    except live.SessionClosed as exc:
        raise session_closed(session_id) from exc
    except psycopg.OperationalError as exc:
        raise backends.database_unavailable(exc) from exc
    enqueue_or_fail(
        frame_id,
        job_options(
            mode=session["mode"],
            limit=session["track_limit"],
            filters=filters,
            diversity=session["diversity"],
            client_key=owner.key,
            drive=DEFAULT_DRIVE,
            session_id=session_id,
        ),
    )
    FRAMES.labels("accepted").inc()
    if superseded:
        FRAMES.labels("superseded").inc(len(superseded))
    return FrameAccepted(
        frame_id=frame_id,
        session_id=session_id,
        status=jobs.QUEUED,
        superseded=superseded,
        frames_dropped=session["frames_dropped"] + len(superseded),
    )


def session_closed(session_id: str) -> APIError:
    return APIError(
        409,
        "session_closed",
        f"Live session {session_id!r} is closed (stopped, or idle too long); open a new one.",
    )


@router.get(
    "/sessions/{session_id}",
    response_model=LiveSession,
    name="get_session",
    responses={401: UNAUTHORIZED, 404: NOT_FOUND, 503: BUSY},
)
def get_session(session_id: str, owner: Annotated[Owner | None, Depends(current_owner)], _key: ApiKey):
    """The session: its frames in the window, smoothed mood, trend and current playlist."""
    row = owned_row(live.get, session_id, owner, session_not_found)
    return {
        "id": str(row["id"]),
        "mode": row["mode"],
        "limit": row["track_limit"],
        "filters": row["filters"],
        "diversity": row["diversity"],
        "window_s": row["window_s"],
        "smoothing": {"alpha": live.ALPHA, "hysteresis": live.HYSTERESIS},
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "closed_at": row["closed_at"],
        "frames_received": row["frames_received"],
        "frames_processed": row["frames_processed"],
        "frames_dropped": row["frames_dropped"],
        "latest_frame": row["latest_frame"],
        "frames": row["frames"],
        "trend": row["trend"],
        "smoothed": row["smoothed"],
        "playlist": row["playlist"],
        "playlist_emotion": row["playlist_emotion"],
        "playlist_changes": row["playlist_changes"],
        "playlist_updated_at": row["playlist_updated_at"],
    }


@router.delete(
    "/sessions/{session_id}", status_code=204, responses={401: UNAUTHORIZED, 404: NOT_FOUND, 503: BUSY}
)
def delete_session(session_id: str, owner: Annotated[Owner | None, Depends(current_owner)], _key: ApiKey):
    """Closes the session and deletes its frames; later frames get 409 session_closed."""
    owned_row(live.options, session_id, owner, session_not_found)
    try:
        live.close(session_id)
    except psycopg.OperationalError as exc:
        raise backends.database_unavailable(exc) from exc
    return Response(status_code=204)
