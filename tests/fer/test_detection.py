"""Decoding (EXIF orientation, corrupt data) and face detection on public-domain photos."""

import io
import threading

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


def as_16bit_png(rgb: np.ndarray) -> bytes:
    """The photo as a 16-bit greyscale PNG (mode I;16), each 8-bit level v stored as v * 257."""
    grey16 = np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, "PNG")
    return buf.getvalue()


def test_a_16bit_photo_is_the_same_face_as_the_8bit_one():
    """A 16-bit greyscale PNG used to collapse to two grey levels and end with no_face."""
    data = as_16bit_png(skimage.data.astronaut())
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    grey16 = detection.decode_grey(data)
    grey8 = np.asarray(Image.fromarray(skimage.data.astronaut()).convert("L"))
    assert np.array_equal(grey16, grey8)
    faces16, faces8 = detection.detect_faces(grey16), detection.detect_faces(grey8)
    assert len(faces16) == 1 and faces16 == faces8


def test_a_phones_mpo_and_a_transparent_png_have_the_face():
    photo = Image.fromarray(skimage.data.astronaut())
    mpo = io.BytesIO()
    photo.save(mpo, "MPO", save_all=True, append_images=[photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    rgba = photo.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 400, 512, 512))  # a transparent band below her face
    png = io.BytesIO()
    rgba.save(png, "PNG")
    for data in (mpo.getvalue(), png.getvalue()):
        faces = detection.detect_faces(detection.decode_grey(data))
        assert len(faces) == 1 and 150 < faces[0].x < 220


@pytest.mark.parametrize("size", [(40_000_000, 1), (21_000, 100), (5_100, 100)])
def test_absurd_sizes_are_a_decode_error_not_a_crash(size):
    """A strip the detector cannot scale down (cv2.resize to 0 rows) is refused by the decoder."""
    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG")
    with pytest.raises(detection.ImageDecodeError) as err:
        detection.decode_grey(buf.getvalue(), max_pixels=40_000_000)
    assert err.value.code == "invalid_image"


@pytest.mark.integration
def test_the_worker_fails_a_strip_as_invalid_image_not_internal_error(clean_jobs, monkeypatch):
    from moodtunes import jobs
    from moodtunes.config import get_settings
    from moodtunes.events import FerJob, to_json
    from moodtunes_cli.localstack import free_port
    from moodtunes_fer import worker

    monkeypatch.setenv("MODEL_SERVER", f"127.0.0.1:{free_port()}")  # never reached: fails first
    get_settings.cache_clear()
    buf = io.BytesIO()
    Image.new("L", (40_000_000, 1)).save(buf, "PNG")
    job_id = jobs.new_job_id()
    jobs.create(
        job_id, mode="match", limit=3, image=buf.getvalue(), image_type="image/png", width=1, height=1
    )
    try:
        worker.process_job.apply(args=[to_json(FerJob(job_id=job_id))])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    row = jobs.get(job_id)
    assert (row["status"], row["error_code"]) == ("failed", "invalid_image")
    assert "20000" in row["error_message"]


def test_each_thread_searches_with_its_own_cascade():
    """A cascade holds the image it is searching: threads sharing one could swap images."""
    seen = []
    workers = [threading.Thread(target=lambda: seen.append(detection.cascade())) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert seen[0] is not seen[1] and detection.cascade() not in seen
    assert detection.cascade() is detection.cascade()  # loaded once per thread, not per call
