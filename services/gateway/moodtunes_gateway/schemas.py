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
