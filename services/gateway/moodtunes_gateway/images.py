"""Upload validation: the gateway rejects what the FER worker could never process, before a job
exists, with the worker's own decoder (moodtunes.images.inspect: the same checks, a JPEG decoded
at 1/8 scale)."""

from __future__ import annotations

from dataclasses import dataclass

from moodtunes.images import ImageError, inspect
from moodtunes_gateway.errors import APIError

STATUS_OF = {"unsupported_image_format": 415}  # every other image error is a 422


@dataclass
class CheckedImage:
    content_type: str
    width: int  # upright (after EXIF orientation), as the worker sees it
    height: int


def check_image(data: bytes, max_bytes: int, max_pixels: int) -> CheckedImage:
    """The upload's type and upright size, or the APIError the client gets: 413 over `max_bytes`,
    415 for a format the decoder refuses, 422 for an empty, damaged, too large or strip-shaped
    image (sides and aspect limits come from the settings, as in the worker)."""
    if not data:
        raise APIError(422, "empty_file", "The uploaded file is empty (0 bytes).")
    if len(data) > max_bytes:
        raise APIError(
            413, "file_too_large", f"The file is {len(data)} bytes; the limit is {max_bytes} bytes."
        )
    try:
        info = inspect(data, max_pixels)
    except ImageError as exc:
        raise APIError(STATUS_OF.get(exc.code, 422), exc.code, exc.message) from exc
    return CheckedImage(info.content_type, info.width, info.height)
