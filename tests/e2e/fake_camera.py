"""A Y4M video for Chromium's fake camera (--use-file-for-fake-video-capture=<file>.y4m).

Y4M: one text header line ("YUV4MPEG2 W.. H.. F..:.. Ip A1:1 C420jpeg"), then per frame "FRAME\\n"
and the Y, U and V planes (4:2:0: U and V at half the width and height), full-range BT.601.
Chromium loops the file, so a few seconds are enough.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def astronaut_face(width: int = 640, height: int = 480) -> np.ndarray:
    """scikit-image's public-domain astronaut portrait (NASA), cropped 4:3 around the head and
    shoulders and scaled to width x height: an RGB uint8 array."""
    import skimage.data

    img = skimage.data.astronaut()  # 512 x 512, the face in the upper middle
    crop = img[0:384, 0:512]  # 4:3
    return np.asarray(Image.fromarray(crop).resize((width, height), Image.LANCZOS))


def rgb_to_yuv420(rgb: np.ndarray) -> bytes:
    """One frame's planes: Y (h x w), then U and V (h/2 x w/2, 2x2 means)."""
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    h, w = y.shape

    def half(p: np.ndarray) -> np.ndarray:
        return p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [y, half(u), half(v)]
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """Writes RGB frames (all the same even width and height) as a 4:2:0 Y4M file."""
    h, w = frames[0].shape[:2]
    assert w % 2 == 0 and h % 2 == 0, "4:2:0 needs an even width and height"
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii"))
        for frame in frames:
            out.write(b"FRAME\n")
            out.write(rgb_to_yuv420(frame))
    return path


def face_video(path: Path, seconds: float = 2.0, fps: int = 10) -> Path:
    """A short looping video of the astronaut's face, with a slight drift so frames differ."""
    base = astronaut_face()
    n = max(2, round(seconds * fps))
    frames = [np.roll(base, shift=(i % 5) - 2, axis=1) for i in range(n)]
    return write_y4m(path, frames, fps=fps)
