"""The one image decoder: the gateway validates uploads with it and the FER worker reads them with
it, so what the gateway accepts is exactly what the worker can process, upright and within the
same pixel limit.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}  # PIL format -> MIME type


class ImageError(ValueError):
    """An image that cannot be used; `code` is the stable error code (API and job errors)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # fully decoded, EXIF orientation applied
    content_type: str

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def decode(data: bytes, max_pixels: int | None = None) -> DecodedImage:
    """Image bytes -> the upright, fully decoded image, or ImageError with one of the codes
    `unsupported_image_format`, `image_too_many_pixels` or `invalid_image`.

    The pixel limit is checked from the header, before any pixel is decoded (decompression bombs).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # in memory: nothing to close
            if img.format not in FORMATS:
                raise ImageError(
                    "unsupported_image_format",
                    f"{img.format or 'This'} images are not supported; send JPEG, PNG or WebP.",
                )
            if max_pixels and img.width * img.height > max_pixels:
                raise ImageError(
                    "image_too_many_pixels",
                    f"The image has {img.width}x{img.height} pixels; the limit is "
                    f"{max_pixels} pixels. Send a smaller photo.",
                )
            img.load()  # full decode: truncated and corrupt files fail here
            content_type = FORMATS[img.format]
            ImageOps.exif_transpose(img, in_place=True)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image_too_many_pixels", f"The image is too large to decode: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            "invalid_image", "The file is not an image we can read; send a JPEG, PNG or WebP photo."
        ) from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageError("invalid_image", f"The image is damaged or truncated: {exc}") from exc
    return DecodedImage(img, content_type)
