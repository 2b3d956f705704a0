"""Decoding an upload and finding faces in it (OpenCV's Haar cascades, shipped in opencv < 5).

Only faces get emotions: a candidate box must score well with the frontal-face cascade and be
confirmed by a second, independently trained cascade (`alt2`) on the region around it. Blank,
flat and non-face images therefore end with no face, whatever their size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from moodtunes.images import ImageError, decode

# The Haar pyramid (benchmarks/face_detection.py): a step of 1.2 with 1 neighbour finds as many faces
# as 1.1 with 5 (56.3% vs 54.8% of FER2013 faces at 32-240 px; more of the small ones) in ~0.6x the
# time; the score threshold and the second cascade below, not the neighbour count, reject non-faces.
SCALE_FACTOR = 1.2  # pyramid step: the cost falls as 1 / (1 - 1 / SCALE_FACTOR**2)
MIN_NEIGHBORS = 1  # overlapping hits a box needs; a coarser pyramid gives each face fewer
MAX_FACES = 10
DETECT_MAX_SIDE = 1024  # detect on a downscaled copy: Haar cost grows with pixels, faces don't need them
CROP_PAD = 0.5  # a tight crop gets this much border so the cascade sees a whole head
TIGHT_CROP_MAX_SIDE = 160  # an image this small with no detection is padded and searched again
# Haar level weight (sum of the last stage): FER2013 faces score 2.3 / 3.0 / 5.9 at p1 / p5 / p50;
# most false boxes in textures score below 1.5.
MIN_DETECTOR_SCORE = 2.0
VERIFY_CASCADE = "haarcascade_frontalface_alt2.xml"
VERIFY_PAD = 0.3  # context around a candidate box for the second cascade
VERIFY_SIZE = 128  # px: the candidate region is resized to this before the second cascade
MIN_FACE_STD = 8.0  # grey-level spread below which a region is flat, not a face


ImageDecodeError = ImageError  # the shared decoder's error (its `code` names the reason)


@dataclass(frozen=True)
class Pyramid:
    """How finely the first cascade searches (benchmarks/face_detection.py sweeps these: speed
    against faces found, by face size)."""

    scale_factor: float = SCALE_FACTOR
    min_neighbors: int = MIN_NEIGHBORS


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int
    score: float = 0.0  # the detector's confidence (Haar level weight)

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


def decode_grey(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Image bytes -> upright uint8 greyscale array, decoded as the gateway validated it
    (moodtunes.images: EXIF orientation, 16-bit and alpha to 8-bit, size limits, ImageError with
    a code, so a bad photo fails its job with that code, never as internal_error)."""
    return np.asarray(decode(data, max_pixels).image.convert("L"), dtype=np.uint8)


_per_thread = threading.local()


def cascade(name: str = "haarcascade_frontalface_default.xml") -> cv2.CascadeClassifier:
    """This thread's copy of a cascade: detectMultiScale keeps the image it is searching inside
    the classifier, so one shared by two threads can search the other's image (opencv#4287)."""
    loaded = _per_thread.__dict__.setdefault("cascades", {})
    if name not in loaded:
        path = cv2.data.haarcascades + name
        clf = cv2.CascadeClassifier(path)
        if clf.empty():
            raise RuntimeError(f"Haar cascade not found at {path}: opencv-python-headless<5 is required")
        loaded[name] = clf
    return loaded[name]


def confirmed(equalized: np.ndarray, box: Box) -> bool:
    """The second check: the region around the box is not flat, and the `alt2` cascade finds a
    face filling it."""
    x, y, w, h = box.x, box.y, box.width, box.height
    if equalized[y : y + h, x : x + w].std() < MIN_FACE_STD:
        return False
    p = int(VERIFY_PAD * max(w, h))
    padded = cv2.copyMakeBorder(equalized, p, p, p, p, cv2.BORDER_REPLICATE)
    region = padded[y : y + h + 2 * p, x : x + w + 2 * p]
    interp = cv2.INTER_AREA if region.shape[0] > VERIFY_SIZE else cv2.INTER_LINEAR
    region = cv2.resize(region, (VERIFY_SIZE, VERIFY_SIZE), interpolation=interp)
    min_side = int(0.4 * VERIFY_SIZE)
    found = cascade(VERIFY_CASCADE).detectMultiScale(
        region, scaleFactor=1.05, minNeighbors=3, minSize=(min_side, min_side)
    )
    return len(found) > 0


def _detect(grey: np.ndarray, min_face_px: int, pyramid: Pyramid) -> list[Box]:
    """Candidate boxes that pass both the score threshold and the second cascade."""
    scale = min(1.0, DETECT_MAX_SIDE / max(grey.shape))
    small = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else grey
    small = cv2.equalizeHist(small)
    min_size = max(12, int(min_face_px * scale))
    found, _, weights = cascade().detectMultiScale3(
        small,
        scaleFactor=pyramid.scale_factor,
        minNeighbors=pyramid.min_neighbors,
        minSize=(min_size, min_size),
        outputRejectLevels=True,
    )
    boxes = []
    for (x, y, w, h), weight in zip(found, np.ravel(weights) if len(found) else [], strict=False):
        candidate = Box(int(x), int(y), int(w), int(h), round(float(weight), 3))
        if candidate.score >= MIN_DETECTOR_SCORE and confirmed(small, candidate):
            boxes.append(Box(int(x / scale), int(y / scale), int(w / scale), int(h / scale), candidate.score))
    return boxes


def detect_faces(grey: np.ndarray, min_face_px: int = 24, pyramid: Pyramid = Pyramid()) -> list[Box]:
    """Confirmed faces, largest first. A small image with none (a tight face crop, such as a
    dataset image) is padded and searched again: the cascade needs context around a face. An
    image in which no face is confirmed gives no box: nothing is taken as a face unchecked."""
    boxes = _detect(grey, min_face_px, pyramid)
    h, w = grey.shape
    if not boxes and max(h, w) <= TIGHT_CROP_MAX_SIDE:
        pad = int(CROP_PAD * max(h, w))
        padded = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        factor = max(1.0, 192 / padded.shape[0])
        padded = cv2.resize(padded, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
        for b in _detect(padded, 24, pyramid):
            x0, y0 = max(0, int(b.x / factor) - pad), max(0, int(b.y / factor) - pad)
            x1 = min(w, int((b.x + b.width) / factor) - pad)
            y1 = min(h, int((b.y + b.height) / factor) - pad)
            if x1 - x0 >= w // 3 and y1 - y0 >= h // 3:
                boxes.append(Box(x0, y0, x1 - x0, y1 - y0, b.score))
    return sorted(boxes, key=lambda b: b.area, reverse=True)[:MAX_FACES]


def crop(grey: np.ndarray, box: Box, margin: float, shift: float = 0.0) -> np.ndarray:
    """The face with `margin` of its size added on each side, its centre moved down by `shift` of
    its height, clipped to the image, made square (benchmarks/fer_photo_scenes.py tunes both so a
    face in a photo is framed as FER2013 frames its faces)."""
    h, w = grey.shape
    side = int(max(box.width, box.height) * (1 + 2 * margin))
    cx, cy = box.x + box.width / 2, box.y + box.height / 2 + shift * box.height
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x0, y0 = max(0, min(x0, w - side)) if side <= w else 0, max(0, min(y0, h - side)) if side <= h else 0
    return grey[y0 : y0 + min(side, h), x0 : x0 + min(side, w)]
