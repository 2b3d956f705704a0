import numpy as np
import pytest

from moodtunes_fer.preprocessing import to_model_input
from moodtunes_fer.signature import INPUT_SIZE


def test_dataset_sized_crops_pass_through_unchanged():
    """Training feeds FER2013's 48x48 faces as they are; serving must feed a 48x48 crop the same."""
    crops = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    x = to_model_input(crops)
    assert x.shape == (3, INPUT_SIZE, INPUT_SIZE, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], crops.astype(np.float32))


def test_no_filtering_keeps_sharp_faces_sharp():
    import cv2

    crop = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
    x = to_model_input([crop])[0, ..., 0]
    expected = cv2.resize(crop, (48, 48), interpolation=cv2.INTER_AREA).astype(np.float32)
    np.testing.assert_array_equal(x, expected)


def test_crops_of_any_size_are_resized_and_keep_their_range():
    rng = np.random.default_rng(1)
    big = np.full((200, 160), 255, np.uint8)
    small = rng.integers(0, 256, (20, 31), dtype=np.uint8)
    x = to_model_input([big, small])
    assert x.shape == (2, 48, 48, 1)
    np.testing.assert_allclose(x[0], 255.0)  # a flat crop stays flat through INTER_AREA
    assert 0.0 <= x.min() and x.max() <= 255.0


def test_empty_input_gives_an_empty_batch():
    assert to_model_input([]).shape == (0, 48, 48, 1)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((48, 48, 3), np.uint8),  # colour, not greyscale
        np.zeros((48, 48), np.float32),  # not uint8
        np.zeros((48,), np.uint8),
    ],
)
def test_rejects_non_greyscale_uint8_crops(bad):
    with pytest.raises(ValueError, match="greyscale"):
        to_model_input([bad])
