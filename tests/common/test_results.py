"""The result schema written by the workers and served by the gateway (moodtunes.results)."""

import pytest
from pydantic import ValidationError

from moodtunes import modes
from moodtunes.emotions import EMOTIONS
from moodtunes.results import Face, Recommendation, Track, stored_json

PROBS = {"angry": 0.1, "fear": 0.05, "sad": 0.1, "happy": 0.7, "neutral": 0.05}  # jsonb-like order
FEATURES = {"mode": 1.0, "tempo": 120.0, "energy": 0.6, "valence": 0.7, "danceability": 0.5}


def face(**kw):
    return Face.model_validate(
        {
            "box": {"x": 1, "y": 2, "width": 3, "height": 4},
            "probabilities": PROBS,
            "emotion": "happy",
            "confidence": 0.7,
            **kw,
        }
    )


def test_emotion_probabilities_come_out_in_class_order():
    assert list(face().probabilities) == list(EMOTIONS)
    assert list(face(cnn_probabilities=PROBS).cnn_probabilities) == list(EMOTIONS)


@pytest.mark.parametrize("probs", [{"happy": 1.0}, {**PROBS, "surprise": 0.0}])
def test_probabilities_need_exactly_the_emotions(probs):
    with pytest.raises(ValidationError, match="exactly the keys"):
        face(probabilities=probs)


def test_features_come_out_in_the_modes_table_order():
    track = Track(track_id="t", name="n", artists=["a"], features=FEATURES, distance=0.1)
    assert list(track.features) == modes.config()["features"]
    with pytest.raises(ValidationError, match="exactly the keys"):
        Track(track_id="t", name="n", artists=["a"], features={"energy": 1.0}, distance=0.1)


def test_spotify_links_are_derived_when_served_not_stored():
    spotify = Track(
        track_id="4uLU6hMCjMI75M1A2tKUQC", name="n", artists=["a"], features=FEATURES, distance=0.1
    )
    assert spotify.model_dump()["spotify_url"] == "https://open.spotify.com/track/4uLU6hMCjMI75M1A2tKUQC"
    assert "spotify_url" not in stored_json(spotify)
    assert (
        Track(track_id="local-1", name="n", artists=["a"], features=FEATURES, distance=0.1).spotify_url
        is None
    )


def test_stored_json_reads_back_as_the_same_model():
    rec = Recommendation(
        mode="match",
        emotion_probabilities=PROBS,
        target=FEATURES,
        target_vector=[0.5, 0.6, 0.7, 0.49, 1.0],
        filters={"year_min": 1990},
        tracks=[Track(track_id="t", name="n", artists=["a"], features=FEATURES, distance=0.1, position=0)],
    )
    assert Recommendation.model_validate(stored_json(rec)) == rec
    assert stored_json(rec)["filters"] == {
        "year_min": 1990,
        "year_max": None,
        "genres": [],
        "min_popularity": None,
        "exclude_explicit": False,
    }
