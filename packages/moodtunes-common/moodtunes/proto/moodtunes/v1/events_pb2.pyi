import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "head")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    head: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., head: _Optional[str] = ...) -> None: ...

class Filters(_message.Message):
    __slots__ = ("year_min", "year_max", "genres", "min_popularity", "exclude_explicit")
    YEAR_MIN_FIELD_NUMBER: _ClassVar[int]
    YEAR_MAX_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    MIN_POPULARITY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_EXPLICIT_FIELD_NUMBER: _ClassVar[int]
    year_min: int
    year_max: int
    genres: _containers.RepeatedScalarFieldContainer[str]
    min_popularity: int
    exclude_explicit: bool
    def __init__(self, year_min: _Optional[int] = ..., year_max: _Optional[int] = ..., genres: _Optional[_Iterable[str]] = ..., min_popularity: _Optional[int] = ..., exclude_explicit: _Optional[bool] = ...) -> None: ...

class JobOptions(_message.Message):
    __slots__ = ("mode", "limit", "filters", "diversity", "client_key", "drive", "session_id")
    MODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    DRIVE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    mode: str
    limit: int
    filters: Filters
    diversity: float
    client_key: str
    drive: str
    session_id: str
    def __init__(self, mode: _Optional[str] = ..., limit: _Optional[int] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., diversity: _Optional[float] = ..., client_key: _Optional[str] = ..., drive: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class GroupMood(_message.Message):
    __slots__ = ("faces", "weights", "spread")
    FACES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    faces: int
    weights: _containers.RepeatedScalarFieldContainer[float]
    spread: float
    def __init__(self, faces: _Optional[int] = ..., weights: _Optional[_Iterable[float]] = ..., spread: _Optional[float] = ...) -> None: ...

class EmotionDetected(_message.Message):
    __slots__ = ("job_id", "emotions", "probabilities", "face_index", "faces_detected", "model", "detected_at", "options", "group")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EMOTIONS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    FACES_DETECTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    emotions: _containers.RepeatedScalarFieldContainer[str]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    face_index: int
    faces_detected: int
    model: ModelRef
    detected_at: _timestamp_pb2.Timestamp
    options: JobOptions
    group: GroupMood
    def __init__(self, job_id: _Optional[str] = ..., emotions: _Optional[_Iterable[str]] = ..., probabilities: _Optional[_Iterable[float]] = ..., face_index: _Optional[int] = ..., faces_detected: _Optional[int] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., group: _Optional[_Union[GroupMood, _Mapping]] = ...) -> None: ...

class FerJob(_message.Message):
    __slots__ = ("job_id", "options")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    options: JobOptions
    def __init__(self, job_id: _Optional[str] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ...) -> None: ...
