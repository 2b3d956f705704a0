"""The group blend (drive=group): confidence weights, the blend, and how the room's spread reads."""

import numpy as np
import pytest

from moodtunes import group

HAPPY = [0.05, 0.8, 0.05, 0.05, 0.05]
SAD = [0.1, 0.05, 0.7, 0.1, 0.05]
UNSURE = [0.2, 0.2, 0.2, 0.2, 0.2]


def test_each_face_counts_by_its_confidence():
    mix = group.blend([HAPPY, UNSURE])
    assert mix.weights == pytest.approx([0.8 / 1.0, 0.2 / 1.0])
    assert mix.probabilities == pytest.approx(0.8 * np.array(HAPPY) + 0.2 * np.array(UNSURE))
    assert mix.probabilities.sum() == pytest.approx(1.0)


def test_faces_that_agree_have_no_spread_and_blend_to_themselves():
    mix = group.blend([HAPPY, HAPPY, HAPPY])
    assert mix.spread == pytest.approx(0.0)
    assert mix.probabilities == pytest.approx(HAPPY)
    assert mix.weights == pytest.approx([1 / 3] * 3)


def test_a_split_room_spreads_more_than_a_room_that_mostly_agrees():
    split = group.blend([HAPPY, SAD])
    mostly = group.blend([HAPPY, HAPPY, HAPPY, SAD])
    assert split.spread > mostly.spread > 0
    # two faces: each is half the total-variation distance between them from the blend (weights ~equal)
    assert split.spread == pytest.approx(0.5 * 0.5 * np.abs(np.subtract(HAPPY, SAD)).sum(), rel=0.1)


def test_the_blended_target_is_the_weighted_mean_of_the_faces_targets():
    from moodtunes_recommender import mapping

    mix = group.blend([HAPPY, SAD])
    per_face = np.array([mapping.target(HAPPY, "match"), mapping.target(SAD, "match")])
    assert mapping.target(mix.probabilities, "match") == pytest.approx(mix.weights @ per_face)


def test_unnormalised_rows_are_normalised_and_bad_input_is_refused():
    assert group.blend([[2, 8, 0, 0, 0]]).probabilities == pytest.approx([0.2, 0.8, 0, 0, 0])
    with pytest.raises(ValueError, match="one row of non-negative probabilities per face"):
        group.blend([])
    with pytest.raises(ValueError, match="one row of non-negative probabilities per face"):
        group.blend([[-0.1, 1.1, 0, 0, 0]])
