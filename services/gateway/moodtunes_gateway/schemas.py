"""Response models of the public API (they also document it at /docs).

A job's results (faces, model, recommendation) are the shared result schema of moodtunes.results,
the very models the workers write; the status list is the job store's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from moodtunes.group import DRIVES
from moodtunes.jobs import STATUSES
from moodtunes.results import Face, FaceBox, Filters, ModelRef, Recommendation, Track

__all__ = [
    "Status",
    "ErrorInfo",
    "JobAccepted",
    "ImageInfo",
    "Job",
    "Face",
    "FaceBox",
    "Filters",
    "ModelRef",
    "Recommendation",
    "Track",
]

Status = Literal[STATUSES]
Drive = Literal[DRIVES]


class ErrorInfo(BaseModel):
    code: str
    message: str


class JobAccepted(BaseModel):
    id: str
    status: Status
    status_url: str
    created_at: datetime


class ImageInfo(BaseModel):
    type: str | None
    bytes: int | None
    width: int | None
    height: int | None


class Job(BaseModel):
    id: str
    status: Status
    mode: str
    limit: int
    filters: Filters | None = None
    diversity: float | None = None
    drive: Drive = "face"
    session_id: str | None = None  # a live session's frame: its result is the session's
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    image: ImageInfo
    faces: list[Face] | None = None
    chosen_face: int | None = None
    model: ModelRef | None = None
    recommendation: Recommendation | None = None
    error: ErrorInfo | None = None


class LiveSessionCreated(BaseModel):
    id: str
    status_url: str
    frames_url: str
    mode: str
    limit: int
    window_s: float
    created_at: datetime


class FrameAccepted(BaseModel):
    frame_id: str
    session_id: str
    status: Status
    superseded: list[str]  # waiting frames this newer one replaced (backpressure)
    frames_dropped: int


class Smoothing(BaseModel):
    alpha: float
    hysteresis: float


class LatestFrame(BaseModel):
    id: str
    status: Status
    error_code: str | None = None
    created_at: datetime


class LiveFrame(BaseModel):
    id: str
    at: datetime
    emotion: str
    probabilities: dict[str, float]
    smoothed_emotion: str
    valence: float
    arousal: float


class TrendPoint(BaseModel):
    at: datetime
    valence: float
    arousal: float
    emotion: str


class SmoothedMood(BaseModel):
    emotion: str
    probabilities: dict[str, float]
    valence: float
    arousal: float


class LiveSession(BaseModel):
    id: str
    mode: str
    limit: int
    filters: Filters | None = None
    diversity: float | None = None
    window_s: float
    smoothing: Smoothing
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    frames_received: int
    frames_processed: int
    frames_dropped: int
    latest_frame: LatestFrame | None = None
    frames: list[LiveFrame]
    trend: list[TrendPoint]
    smoothed: SmoothedMood | None = None
    playlist: Recommendation | None = None
    playlist_emotion: str | None = None
    playlist_changes: int
    playlist_updated_at: datetime | None = None
