"""The result schema of a job, written down once: what the FER worker stores in `jobs.faces` and
`jobs.model`, what the recommender stores in `jobs.recommendation`, and what the gateway serves.

Writers build these models and store `stored_json(model)`; the gateway validates the stored JSON
back into the same models for its response, so a writer cannot drift from the API unnoticed.
Keyed numbers (emotion probabilities, music features) are dicts whose keys must be exactly the
emotions / features, and come out in that order whatever order the JSON held them in
(PostgreSQL's jsonb reorders keys).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, computed_field

from moodtunes.emotions import EMOTIONS

SPOTIFY_ID = re.compile(r"^[0-9A-Za-z]{22}$")


def _keyed(names: Callable[[], Iterable[str]], what: str):
    """A validator: exactly `names()` as keys, returned in that order."""

    def check(values: dict[str, float]) -> dict[str, float]:
        order = list(names())
        if set(values) != set(order):
            raise ValueError(f"{what} must have exactly the keys {order}, got {list(values)}")
        return {k: values[k] for k in order}

    return check


def _features() -> list[str]:
    from moodtunes import modes  # modes.yaml is the one list of music features

    return modes.config()["features"]


EmotionProbabilities = Annotated[dict[str, float], AfterValidator(_keyed(lambda: EMOTIONS, "emotions"))]
FeatureValues = Annotated[dict[str, float], AfterValidator(_keyed(_features, "music features"))]


class FaceBox(BaseModel):
    """Where the face is in the upright (EXIF-rotated) photo, in pixels."""

    x: int
    y: int
    width: int
    height: int


class Face(BaseModel):
    box: FaceBox
    probabilities: EmotionProbabilities = Field(description="the head's (PCA + classifier) output")
    emotion: str
    confidence: float
    cnn_probabilities: EmotionProbabilities | None = Field(None, description="the CNN's own softmax")
    detector_score: float | None = Field(
        None, description="the face detector's confidence; only confirmed faces are listed"
    )


class ModelRef(BaseModel):
    """Which model classified the faces: the served CNN version and the head on its features."""

    name: str
    version: int
    head: str


class Filters(BaseModel):
    """Playlist filters; an unset one does not filter."""

    year_min: int | None = None
    year_max: int | None = None
    genres: list[str] = Field(default_factory=list, description="a track matches any of them")
    min_popularity: int | None = None
    exclude_explicit: bool = False


class Track(BaseModel):
    track_id: str
    name: str
    artists: list[str]
    year: int | None = None
    popularity: int | None = None
    genre: str | None = None
    features: FeatureValues = Field(description="the track's own values; tempo in BPM")
    distance: float = Field(description="from its playlist position's target, in matching space")
    position: int | None = None

    @computed_field
    @property
    def spotify_url(self) -> str | None:
        return f"https://open.spotify.com/track/{self.track_id}" if SPOTIFY_ID.match(self.track_id) else None


class GroupMood(BaseModel):
    """How the faces of a `drive=group` job made its music (moodtunes.group)."""

    faces: int = Field(description="faces that drove the music: every detected face")
    weights: list[float] = Field(description="each face's share of the blend (by confidence), face order")
    spread: float = Field(description="how far the faces' moods are from the blend: 0 agree .. 1 disjoint")


class Recommendation(BaseModel):
    mode: str
    drive: str = Field("face", description="face: the largest face drove the music; group: every face")
    group: GroupMood | None = Field(None, description="set for drive=group")
    emotion_probabilities: EmotionProbabilities
    target: FeatureValues = Field(description="the mode's goal point; tempo in BPM")
    target_vector: list[float] = Field(description="the goal point in matching space (tempo / scale)")
    targets: list[FeatureValues] | None = Field(None, description="one target per playlist position")
    playlist_mean: FeatureValues | None = None
    filters: Filters | None = None
    diversity: float | None = None
    excluded_disliked: int | None = None
    liked_pull: float | None = Field(
        None, description="how far the listener's likes in this mode moved the targets toward them (0..0.5)"
    )
    tracks: list[Track]


def stored_json(value: BaseModel | list[BaseModel]) -> Any:
    """The JSON a writer stores: computed fields (derived on reading) are left out."""
    if isinstance(value, list):
        return [stored_json(v) for v in value]
    return value.model_dump(mode="json", exclude_computed_fields=True)
