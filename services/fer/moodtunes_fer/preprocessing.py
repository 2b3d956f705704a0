"""From a greyscale face crop to the CNN's input tensor; shared by the worker, training-time
evaluation and `moodtunes fer evaluate`, so every route feeds the model identically.

Training images (FER2013, 48x48) go to the network as they are; any other crop is only resized to
48x48. No filtering: training and serving see the same sharp face.
"""

from __future__ import annotations

import cv2
import numpy as np

from moodtunes_fer.signature import INPUT_SIZE


def to_model_input(crops, size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 greyscale crops (a list, or an (N, H, W) array) -> float32 (N, size, size, 1) in [0, 255].

    Crops are resized to `size` (area interpolation when shrinking, bilinear when enlarging).
    """
    out = np.empty((len(crops), size, size, 1), dtype=np.float32)
    for i, crop in enumerate(crops):
        crop = np.asarray(crop)
        if crop.ndim != 2 or crop.dtype != np.uint8:
            raise ValueError(f"expected a 2-D uint8 greyscale crop, got {crop.shape} {crop.dtype}")
        if crop.shape != (size, size):
            interp = cv2.INTER_AREA if min(crop.shape) > size else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (size, size), interpolation=interp)
        out[i, :, :, 0] = crop
    return out
