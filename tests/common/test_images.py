"""The one image decoder (moodtunes.images) the gateway validates with and the FER worker reads
with: EXIF orientation, the pixel limit before decoding, and error codes."""

import io

import numpy as np
import pytest
from PIL import Image

from moodtunes.images import ImageError, decode


def encode(array, fmt="JPEG", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **save)
    return buf.getvalue()


def portrait_stored_sideways() -> bytes:
    """A 40 wide x 60 tall photo stored as 60 x 40 with the EXIF tag "rotate 90 clockwise"."""
    upright = np.zeros((60, 40), np.uint8)
    upright[:10, :] = 255  # a bright top edge, to tell the orientation
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(np.rot90(upright), exif=exif.tobytes())


def test_applies_exif_orientation():
    img = decode(portrait_stored_sideways()).image
    assert img.size == (40, 60)
    grey = np.asarray(img.convert("L"))
    assert grey[:8].mean() > 200 and grey[-8:].mean() < 50


def test_gateway_and_worker_see_the_same_upright_image():
    from moodtunes_fer.detection import decode_grey
    from moodtunes_gateway.images import check_image

    data = portrait_stored_sideways()
    checked = check_image(data, max_bytes=10**6, max_pixels=10**6)
    assert (checked.content_type, checked.width, checked.height) == ("image/jpeg", 40, 60)
    assert decode_grey(data).shape == (60, 40)


def test_pixel_limit_has_its_own_code():
    bomb = encode(np.zeros((3000, 3000), np.uint8), "PNG")  # 9 Mpx of zeros: a few KB
    with pytest.raises(ImageError) as err:
        decode(bomb, max_pixels=1_000_000)
    assert err.value.code == "image_too_many_pixels" and "limit" in err.value.message


@pytest.mark.parametrize(
    "data,code",
    [
        (b"", "invalid_image"),
        (b"not an image", "invalid_image"),
        (encode(np.zeros((64, 64, 3), np.uint8))[:300], "invalid_image"),  # truncated
        (encode(np.zeros((8, 8), np.uint8), "GIF"), "unsupported_image_format"),
    ],
)
def test_errors_name_a_stable_code(data, code):
    with pytest.raises(ImageError) as err:
        decode(data)
    assert err.value.code == code
