"""Event messages (schemas in proto/moodtunes/v1/events.proto) and their JSON form on the queue.

Messages carry the work: a FerJob brings the job's options, the FER worker copies them into the
EmotionDetected event, and the recommender computes from the event alone.
"""

from __future__ import annotations

from google.protobuf import json_format

from moodtunes.group import DEFAULT_DRIVE
from moodtunes.proto.moodtunes.v1.events_pb2 import EmotionDetected, FerJob, GroupMood, JobOptions, ModelRef
from moodtunes.proto.moodtunes.v1.events_pb2 import Filters as FiltersMessage
from moodtunes.results import Filters

__all__ = [
    "EmotionDetected",
    "FerJob",
    "GroupMood",
    "JobOptions",
    "ModelRef",
    "to_json",
    "from_json",
    "job_options",
    "options_from_row",
    "filters_of",
    "drive_of",
]


def to_json(message) -> dict:
    """Protobuf JSON mapping, with field names as in the .proto, defaults included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def from_json(payload: dict, message_type):
    """Parses and validates a queued payload; unknown fields are an error, not silently dropped."""
    return json_format.ParseDict(payload, message_type())


def job_options(
    *,
    mode: str,
    limit: int,
    filters: Filters | dict | None = None,
    diversity: float | None = None,
    client_key: str | None = None,
    drive: str = DEFAULT_DRIVE,
    session_id: str | None = None,
) -> JobOptions:
    """The options message of a job, from the values the gateway stores in its row; a frame of a
    live session names its session."""
    if not isinstance(filters, Filters):
        filters = Filters.model_validate(filters or {})
    options = JobOptions(
        mode=mode,
        limit=limit,
        client_key=client_key or "",
        drive=drive,
        session_id=session_id or "",
        filters=from_json(filters.model_dump(mode="json", exclude_none=True), FiltersMessage),
    )
    if diversity is not None:
        options.diversity = diversity
    return options


def options_from_row(job: dict) -> JobOptions:
    """For messages queued before they carried options: the job row's copy."""
    return job_options(
        mode=job["mode"],
        limit=job["track_limit"],
        filters=job["filters"],
        diversity=job["diversity"],
        client_key=job["client_key"],
        drive=job.get("drive") or DEFAULT_DRIVE,
        session_id=str(job["session_id"]) if job.get("session_id") else None,
    )


def drive_of(options: JobOptions) -> str:
    """Which faces drive the music; empty (a message from before drives existed) is the default."""
    return options.drive or DEFAULT_DRIVE


def filters_of(options: JobOptions) -> Filters:
    return Filters.model_validate(to_json(options.filters))
