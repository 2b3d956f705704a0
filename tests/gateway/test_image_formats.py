"""POST /v1/jobs with every kind of file a camera, phone or editor writes: the gateway accepts what
the worker can decode (16-bit, palette, alpha, CMYK, MPO, TIFF) and refuses strips and giant sides
with 422 invalid_image before a job exists."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from moodtunes import jobs
from moodtunes.db import connection

pytestmark = pytest.mark.integration

ASTRONAUT = Image.fromarray(skimage.data.astronaut())  # 512 x 512, one face


def saved(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def grey16() -> Image.Image:
    return Image.fromarray(np.asarray(ASTRONAUT.convert("L"), np.uint16) * 257)


def rgba16_png() -> bytes:
    import cv2

    bgra = np.dstack([np.asarray(ASTRONAUT)[..., ::-1], np.full((512, 512), 255, np.uint8)])
    ok, data = cv2.imencode(".png", bgra.astype(np.uint16) * 257)
    assert ok
    return data.tobytes()


def half_transparent() -> Image.Image:
    rgba = ASTRONAUT.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 400, 512, 512))
    return rgba


FILES = {
    "16bit-grey-png": lambda: saved(grey16(), "PNG"),
    "16bit-grey-tiff": lambda: saved(grey16(), "TIFF"),
    "16bit-rgba-png": rgba16_png,
    "float-tiff": lambda: saved(
        Image.fromarray(np.asarray(ASTRONAUT.convert("L"), np.float32) / 255), "TIFF"
    ),
    "palette-png": lambda: saved(ASTRONAUT.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "palette-alpha-tiff": lambda: saved(half_transparent().convert("PA"), "TIFF"),
    "grey-alpha-png": lambda: saved(half_transparent().convert("LA"), "PNG"),
    "rgba-png": lambda: saved(half_transparent(), "PNG"),
    "cmyk-jpeg": lambda: saved(ASTRONAUT.convert("CMYK"), "JPEG"),
    "mpo": lambda: saved(ASTRONAUT, "MPO", save_all=True, append_images=[ASTRONAUT.rotate(90)]),
    "webp": lambda: saved(ASTRONAUT, "WEBP"),
}
TYPES = {"mpo": "image/jpeg", "cmyk-jpeg": "image/jpeg", "webp": "image/webp"}


def post(client, content: bytes, name: str):
    return client.post("/v1/jobs", files={"image": (name, content)})


@pytest.mark.parametrize("kind", FILES)
def test_accepted_and_stored_with_type_and_size(client, kind):
    data = FILES[kind]()
    r = post(client, data, f"photo-{kind}")
    assert r.status_code == 202, r.text
    row = jobs.get(r.json()["id"])
    expected_type = TYPES.get(kind, "image/tiff" if kind.endswith("tiff") else "image/png")
    assert (row["image_type"], row["image_width"], row["image_height"]) == (expected_type, 512, 512)
    assert jobs.image(row["id"]) == data  # the original bytes go to the worker, which decodes alike


@pytest.mark.parametrize(
    "size,phrase",
    [((40_000_000, 1), "no side may be longer than 20000"), ((21_000, 100), "no side may be longer")],
)
def test_giant_sides_are_invalid_image(client, size, phrase):
    data = saved(Image.new("L", size), "PNG")  # one constant colour: a few KB
    r = post(client, data, "strip.png")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_image"
    assert f"{size[0]}x{size[1]}" in error["message"] and phrase in error["message"]
    with connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0


def test_a_strip_over_50_to_1_is_invalid_image(client):
    r = post(client, saved(Image.new("RGB", (5_100, 100)), "PNG"), "banner.png")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_image" and "50 times" in r.json()["error"]["message"]
    assert post(client, saved(Image.new("RGB", (5_000, 100)), "PNG"), "wide.png").status_code == 202
