"""The one image decoder (moodtunes.images) the gateway validates with and the FER worker reads
with: EXIF orientation, the pixel limit before decoding, and error codes."""

import io
import struct
import warnings

import numpy as np
import pytest
import skimage.data
from PIL import Image

from moodtunes.images import ImageError, decode, inspect


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


# Every mode a camera, scanner or editor writes -> the 8-bit image the worker detects faces in.

GRADIENT_16 = np.linspace(0, 65535, 256 * 256).round().astype(np.uint16).reshape(256, 256)


def saved(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def grey(data: bytes, **limits) -> np.ndarray:
    decoded = decode(data, **limits).image
    assert decoded.mode == "L"
    return np.asarray(decoded)


def rgb(data: bytes) -> np.ndarray:
    decoded = decode(data).image
    assert decoded.mode == "RGB"
    return np.asarray(decoded)


@pytest.mark.parametrize(
    "image,fmt",
    [
        (Image.fromarray(GRADIENT_16), "PNG"),  # mode I;16
        (Image.fromarray(GRADIENT_16), "TIFF"),
        (Image.frombytes("I;16B", (256, 256), GRADIENT_16.astype(">u2").tobytes()), "TIFF"),
    ],
    ids=["I;16-png", "I;16-tiff", "I;16B-tiff"],
)
def test_16bit_greyscale_is_scaled_not_clipped(image, fmt):
    """Pillow's convert("L") clips 16-bit values at 255: a 16-bit face became two grey levels."""
    data = saved(image, fmt)
    assert Image.open(io.BytesIO(data)).mode == image.mode
    out = grey(data)
    assert len(np.unique(out)) > 250
    assert (out.min(), out.max()) == (0, 255)
    expected = np.rint(GRADIENT_16 / 257.0)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_a_dark_16bit_photo_stays_dark():
    """16-bit has a fixed range: levels 0..4095 (a 12-bit sensor) are the darkest sixteenth."""
    dark = (GRADIENT_16 // 16).astype(np.uint16)
    out = grey(saved(Image.fromarray(dark), "PNG"))
    assert out.max() == 16 and len(np.unique(out)) == 17


def test_32bit_integer_greyscale_is_stretched_to_its_range():
    values = np.linspace(-70_000, 130_000, 256 * 256).reshape(256, 256).astype(np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    out = grey(saved(image, "TIFF"))
    expected = np.rint((values + 70_000) * 255 / 200_000)
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert (out.min(), out.max()) == (0, 255)


def test_float_greyscale_in_0_to_1_is_scaled_by_255():
    values = np.linspace(0.0, 0.5, 256 * 256, dtype=np.float32).reshape(256, 256)
    out = grey(saved(Image.fromarray(values), "TIFF"))
    assert out.min() == 0 and out.max() == 128  # half brightness stays half, not stretched
    assert np.abs(out.astype(int) - np.rint(values * 255)).max() <= 1


def test_float_greyscale_outside_0_to_1_is_stretched_and_nan_is_dark():
    values = np.linspace(-5.0, 20.0, 256 * 256, dtype=np.float32).reshape(256, 256)
    values[0, :10] = np.nan
    out = grey(saved(Image.fromarray(values), "TIFF"))
    assert (out[0, :10] == 0).all()
    assert out[-1, -1] == 255 and len(np.unique(out)) > 250
    assert abs(int(out[128, 0]) - round((values[128, 0] + 5) * 255 / 25)) <= 1


def test_16bit_rgba_png_is_8bit_rgb_on_white():
    import cv2

    bgra = np.zeros((64, 256, 4), np.uint16)
    bgra[..., 2] = np.linspace(0, 65535, 256).round().astype(np.uint16)  # red ramp
    bgra[..., 3] = 65535
    bgra[32:, :, 3] = 0  # the bottom half fully transparent
    ok, data = cv2.imencode(".png", bgra)  # OpenCV writes 16-bit RGBA PNGs; Pillow cannot
    assert ok
    out = rgb(data.tobytes())
    assert np.abs(out[0, :, 0].astype(int) - np.linspace(0, 255, 256)).max() <= 1
    assert (out[:32, :, 1:] == 0).all()
    assert (out[32:] == 255).all()  # transparent is white


def test_half_transparent_rgba_is_composited_on_white():
    pixels = np.zeros((8, 8, 4), np.uint8)
    pixels[..., :3] = (200, 0, 100)
    pixels[..., 3] = 128
    out = rgb(saved(Image.fromarray(pixels), "PNG"))
    alpha = 128 / 255
    expected = np.rint(np.array([200, 0, 100]) * alpha + 255 * (1 - alpha))
    assert (out == expected).all()


def test_greyscale_with_alpha_la():
    pixels = np.zeros((4, 16, 2), np.uint8)
    pixels[..., 0] = np.arange(16) * 16
    pixels[..., 1] = 255
    pixels[2:, :, 1] = 0
    out = grey(saved(Image.fromarray(pixels, "LA"), "PNG"))
    assert (out[:2] == np.arange(16) * 16).all() and (out[2:] == 255).all()


def test_palette_png_with_a_transparent_index():
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    palette.paste(0, (0, 0, 16, 8))  # top half: index 0, transparent
    out = rgb(saved(palette, "PNG", transparency=0))
    assert (out[:8] == 255).all() and (out[8:] == (255, 0, 0)).all()


def test_palette_without_transparency_keeps_its_colours():
    image = Image.fromarray(skimage.data.astronaut()).convert("P", palette=Image.Palette.ADAPTIVE)
    out = rgb(saved(image, "PNG"))
    assert (out == np.asarray(image.convert("RGB"))).all()


def test_palette_with_alpha_pa_tiff():
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., :3] = (0, 0, 255)
    pixels[..., 3] = 255
    pixels[2:, :, 3] = 0
    pa = Image.fromarray(pixels).convert("PA")
    out = rgb(saved(pa, "TIFF"))
    assert (out[:2] == (0, 0, 255)).all() and (out[2:] == 255).all()


def test_transparent_grey_key_becomes_white():
    image = Image.fromarray(np.array([[10, 20], [10, 30]], np.uint8))
    out = grey(saved(image, "PNG", transparency=10))  # tRNS: grey 10 is transparent
    assert out.tolist() == [[255, 20], [255, 30]]


def test_16bit_transparent_grey_key_becomes_white():
    image = Image.fromarray(np.array([[1000, 65535], [1000, 0]], np.uint16))
    out = grey(saved(image, "PNG", transparency=1000))
    assert out.tolist() == [[255, 255], [255, 0]]


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(fmt):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8, :, 1:3] = 255  # magenta + yellow = red
    cmyk[8:, :, 3] = 255  # black
    out = rgb(saved(Image.fromarray(cmyk, "CMYK"), fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    assert np.abs(out[2:6, 2:14].astype(int) - (255, 0, 0)).max() <= 8
    assert out[10:14, 2:14].max() <= 8


def test_one_bit_black_and_white():
    image = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    assert grey(saved(image, "PNG")).tolist() == [[0, 255], [255, 0]]


def test_mpo_from_a_phone_decodes_its_first_picture():
    first = Image.new("RGB", (64, 48), (250, 250, 250))
    second = Image.new("RGB", (64, 48), (5, 5, 5))
    data = saved(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = decode(data)
    assert decoded.content_type == "image/jpeg" and (decoded.width, decoded.height) == (64, 48)
    assert np.asarray(decoded.image).min() > 240


def test_mpo_keeps_its_exif_orientation():
    upright = np.zeros((60, 40, 3), np.uint8)
    upright[:10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(np.rot90(upright).copy())
    data = saved(stored, "MPO", save_all=True, append_images=[stored], exif=exif.tobytes())
    out = np.asarray(decode(data).image.convert("L"))
    assert out.shape == (60, 40) and out[:8].mean() > 200 and out[-8:].mean() < 50


def test_16bit_tiff_keeps_its_orientation_tag():
    upright = np.zeros((60, 40), np.uint16)
    upright[:10] = 65535
    data = saved(Image.fromarray(np.rot90(upright).copy()), "TIFF", tiffinfo={0x0112: 6})
    out = grey(data)
    assert out.shape == (60, 40) and (out[:10] == 255).all() and (out[10:] == 0).all()


def test_a_broken_exif_block_keeps_the_photo_and_its_orientation():
    """A camera's EXIF with a GPS block pointing past the end of the file: Pillow skips the block,
    the orientation tag beside it is still applied."""
    ifd = struct.pack(">HHHIHH", 2, 0x0112, 3, 1, 6, 0)  # two entries: orientation = 6 ...
    ifd += struct.pack(">HHII", 0x8825, 4, 1, 0xFFFFFF) + b"\0\0\0\0"  # ... and GPS IFD far away
    exif = b"Exif\0\0MM\0*" + struct.pack(">I", 8) + ifd
    upright = np.zeros((60, 40), np.uint8)
    upright[:10] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow warns about the GPS block
        out = grey(encode(np.rot90(upright).copy(), exif=exif))
    assert out.shape == (60, 40) and out[:8].mean() > 200 and out[-8:].mean() < 50


def blank_png(width: int, height: int) -> bytes:
    """A constant image: even 40,000,000 x 1 compresses to a few KB."""
    return saved(Image.new("L", (width, height)), "PNG")


@pytest.mark.parametrize("size", [(40_000_000, 1), (1, 21_000), (21_000, 100), (100, 21_000)])
def test_a_side_over_the_limit_is_invalid_before_decoding(size):
    with pytest.raises(ImageError) as err:
        decode(blank_png(*size), max_pixels=40_000_000)
    assert err.value.code == "invalid_image"
    assert f"{size[0]}x{size[1]}" in err.value.message and "20000" in err.value.message


@pytest.mark.parametrize("size", [(5_100, 100), (100, 5_100), (51, 1)])
def test_a_strip_over_50_to_1_is_invalid(size):
    with pytest.raises(ImageError) as err:
        decode(blank_png(*size))
    assert err.value.code == "invalid_image" and "50 times" in err.value.message


@pytest.mark.parametrize("size", [(5_000, 100), (20_000, 400), (50, 1)])
def test_sizes_at_the_limits_are_accepted(size):
    assert decode(blank_png(*size)).image.size == size


def test_limits_are_settings(monkeypatch):
    from moodtunes.config import get_settings

    monkeypatch.setenv("MAX_IMAGE_SIDE", "1000")
    monkeypatch.setenv("MAX_IMAGE_ASPECT", "2")
    get_settings.cache_clear()
    try:
        for size in [(1001, 600), (300, 100)]:
            with pytest.raises(ImageError):
                decode(blank_png(*size))
        assert decode(blank_png(1000, 500)).image.size == (1000, 500)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert decode(blank_png(1001, 600)).image.size == (1001, 600)


# The gateway's check (inspect: a JPEG decoded at 1/8 scale) against the worker's full decode: the
# same answer for every file, so the gateway never accepts what the worker refuses, nor the reverse.


def astronaut(fmt="JPEG", **save) -> bytes:
    return encode(skimage.data.astronaut(), fmt, **save)


def corrupted(data: bytes, at: float, length: int = 64) -> bytes:
    """DATA with LENGTH bytes inside its compressed pixels overwritten with noise."""
    i = int(len(data) * at)
    noise = np.random.default_rng(i).integers(0, 256, length, dtype=np.uint8).tobytes()
    return data[:i] + noise + data[i + length :]


def mpo_on_its_side() -> bytes:
    upright = np.zeros((60, 40, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    stored = Image.fromarray(np.rot90(upright).copy())
    return saved(stored, "MPO", save_all=True, append_images=[stored], exif=exif.tobytes())


SAME_ANSWER = {
    "portrait stored sideways (EXIF 6)": portrait_stored_sideways,
    "MPO turned a quarter (EXIF 8)": mpo_on_its_side,
    "astronaut 512 px": astronaut,
    "progressive JPEG": lambda: astronaut(progressive=True),
    "odd size 13 x 7": lambda: encode(np.full((7, 13, 3), 90, np.uint8)),
    "CMYK JPEG": lambda: saved(Image.new("CMYK", (33, 17), (0, 50, 100, 0)), "JPEG"),
    "RGB PNG": lambda: astronaut("PNG"),
    "16-bit TIFF with orientation": lambda: saved(
        Image.fromarray(np.zeros((20, 30), np.uint16)), "TIFF", tiffinfo={0x0112: 6}
    ),
    "JPEG cut off half way": lambda: astronaut()[: len(astronaut()) // 2],
    "JPEG cut off before its end marker": lambda: astronaut()[:-2],
    "JPEG with noise in its pixels": lambda: corrupted(astronaut(), 0.5),
    "JPEG with noise near its start": lambda: corrupted(astronaut(), 0.05),
    "header only": lambda: astronaut()[:300],
    "GIF": lambda: encode(np.zeros((8, 8), np.uint8), "GIF"),
    "a strip": lambda: blank_png(5_100, 100),
}


def answer(check, data: bytes):
    try:
        result = check(data)
    except ImageError as exc:
        return ("refused", exc.code)
    return ("accepted", result.content_type, result.width, result.height)


@pytest.mark.parametrize("name", SAME_ANSWER)
def test_the_gateways_check_answers_as_the_full_decode_does(name):
    data = SAME_ANSWER[name]()
    assert answer(inspect, data) == answer(decode, data)


def test_the_check_refuses_a_cut_off_jpeg_and_gives_the_upright_size():
    """Not only the same answer: a truncated photo is refused, and a sideways one is upright."""
    assert answer(inspect, astronaut()[: len(astronaut()) // 2]) == ("refused", "invalid_image")
    assert answer(inspect, portrait_stored_sideways()) == ("accepted", "image/jpeg", 40, 60)
    assert answer(inspect, mpo_on_its_side()) == ("accepted", "image/jpeg", 40, 60)
