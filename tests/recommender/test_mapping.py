"""The published emotion -> music mapping, reproduced exactly."""

import numpy as np
import pytest

from moodtunes_recommender import mapping

PUBLISHED = np.array(
    [
        [0.55, 0.50, 0.50, 0.40, 0.50],  # neutral
        [0.90, 0.80, 0.95, 0.50, 0.95],  # happy
        [0.20, 0.20, 0.05, 0.15, 0.05],  # sad
        [0.20, 0.30, 0.75, 0.20, 0.60],  # fear
        [0.30, 0.95, 0.20, 0.75, 0.40],  # angry
    ]
)


def test_match_matrix_is_the_published_one():
    assert mapping.emotions() == ["neutral", "happy", "sad", "fear", "angry"]
    assert mapping.features() == ["danceability", "energy", "valence", "tempo", "mode"]
    np.testing.assert_array_equal(mapping.matrix("match"), PUBLISHED)


@pytest.mark.parametrize("i", range(5))
def test_a_certain_emotion_gives_its_row(i):
    np.testing.assert_allclose(mapping.target(np.eye(5)[i], "match"), PUBLISHED[i])


def test_blend_is_probability_weighted():
    p = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    np.testing.assert_allclose(mapping.target(p, "match"), p @ PUBLISHED)
    np.testing.assert_allclose(mapping.target(p * 4, "match"), p @ PUBLISHED)  # normalised


def test_describe_gives_tempo_in_bpm():
    assert mapping.describe(PUBLISHED[1])["tempo"] == pytest.approx(0.5 * 244)


@pytest.mark.parametrize("bad", [[0, 0, 0, 0, 0], [1, 0, 0], [-1, -1, -1, -1, -1]])
def test_rejects_invalid_probabilities(bad):
    with pytest.raises(ValueError):
        mapping.target(bad)
