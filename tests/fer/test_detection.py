"""Decoding (EXIF orientation, corrupt data) and face detection on public-domain photos."""

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from moodtunes_fer import detection


def jpeg(array, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", **save)
    return buf.getvalue()


def test_finds_the_astronauts_face():
    grey = detection.decode_grey(jpeg(skimage.data.astronaut()))
    faces = detection.detect_faces(grey)
    assert len(faces) == 1
    f = faces[0]
    assert 150 < f.x < 220 and 40 < f.y < 110 and 70 < f.width < 130  # her face, not the flag


def test_honours_exif_orientation():
    rotated = np.rot90(skimage.data.astronaut())  # stored turned 90 degrees counter-clockwise...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with the EXIF tag that says "rotate 90 degrees clockwise to display"
    grey = detection.decode_grey(jpeg(rotated, exif=exif.tobytes()))
    assert grey.shape == (512, 512)
    assert len(detection.detect_faces(grey)) == 1
    sideways = detection.decode_grey(jpeg(rotated))
    assert detection.detect_faces(sideways) == []  # the cascade needs the face upright


def test_no_face_in_a_cup_of_coffee():
    grey = detection.decode_grey(jpeg(skimage.data.coffee()))
    assert detection.detect_faces(grey) == []


def test_a_tight_48px_face_crop_is_still_a_face():
    grey = detection.decode_grey(jpeg(skimage.data.astronaut()))
    f = detection.detect_faces(grey)[0]
    crop = np.asarray(Image.fromarray(grey[f.y : f.y + f.height, f.x : f.x + f.width]).resize((48, 48)))
    boxes = detection.detect_faces(crop)
    assert len(boxes) == 1 and boxes[0].width >= 16


def test_crop_adds_margin_and_stays_inside():
    grey = np.zeros((100, 200), np.uint8)
    out = detection.crop(grey, detection.Box(150, 10, 40, 40), margin=0.25)
    assert out.shape == (60, 60)
    edge = detection.crop(grey, detection.Box(0, 0, 100, 100), margin=0.5)
    assert edge.shape[0] <= 100 and edge.shape[1] <= 200


@pytest.mark.parametrize("data", [b"", b"not an image", jpeg(skimage.data.astronaut())[:2000]])
def test_corrupt_data_raises_a_decode_error(data):
    with pytest.raises(detection.ImageDecodeError):
        detection.decode_grey(data)


def test_pixel_limit():
    with pytest.raises(detection.ImageDecodeError, match="limit"):
        detection.decode_grey(jpeg(skimage.data.astronaut()), max_pixels=1000)


@pytest.mark.parametrize("size", [20, 48, 120, 400, 1500])
@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_and_flat_images_have_no_face_at_any_size(size, value):
    assert detection.detect_faces(np.full((size, size), value, np.uint8)) == []


@pytest.mark.parametrize("size", [20, 48, 96])
def test_small_non_face_squares_are_not_taken_as_faces(size):
    """No 'small square image is a face' fallback: noise, gradients and a cup thumbnail give none."""
    rng = np.random.default_rng(size)
    noise = rng.integers(0, 256, (size, size), dtype=np.uint8)
    gradient = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    cup = np.asarray(Image.fromarray(detection.decode_grey(jpeg(skimage.data.coffee()))).resize((size, size)))
    for image in (noise, gradient, cup):
        assert detection.detect_faces(image) == []


def test_texture_false_positives_are_rejected_by_the_second_check():
    """skimage's retina photo holds face-like blobs the first cascade accepts; none is confirmed."""
    grey = detection.decode_grey(jpeg(skimage.data.retina()))
    import cv2

    equalized = cv2.equalizeHist(grey)  # at full size the first cascade alone fires on blobs
    candidates = detection.cascade().detectMultiScale(equalized, 1.1, 5, minSize=(24, 24))
    assert len(candidates) > 0  # the first cascade alone would have given this photo an emotion
    assert detection.detect_faces(grey) == []
    assert detection.detect_faces(cv2.resize(grey, (1000, 1000))) == []


def test_detected_faces_carry_the_detector_score():
    grey = detection.decode_grey(jpeg(skimage.data.astronaut()))
    face = detection.detect_faces(grey)[0]
    assert face.score >= detection.MIN_DETECTOR_SCORE
