"""Training-time augmentation in numpy and OpenCV, fed to Keras as a PyDataset.

Numpy in, numpy out, so one pipeline feeds every Keras backend: TensorFlow on the CPU machines,
JAX on a GPU machine that has no TensorFlow. Each batch's randomness comes from (seed, epoch,
batch index), so worker threads may run in any order and a run still replays exactly.
"""

from __future__ import annotations

import keras
import numpy as np

from moodtunes_fer_training.train import (
    CONTRAST,
    ERASE_AREA,
    ERASE_PROB,
    MIXUP_ALPHA,
    ROTATION_DEG,
    SEED,
    SHIFT,
    ZOOM,
)

LOADER_THREADS = 4


def random_affine(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip, rotation, shift and zoom drawn per image and applied as one affine warp with reflected
    borders, then a contrast change around the image's mean: (N, H, W, 1) float32 in and out."""
    import cv2

    n, h, w = images.shape[:3]
    out = np.empty_like(images)
    angles = rng.uniform(-ROTATION_DEG, ROTATION_DEG, n)
    scales = 1.0 + rng.uniform(-ZOOM, ZOOM, n)
    shifts = rng.uniform(-SHIFT, SHIFT, (n, 2)) * (w, h)
    flips = rng.random(n) < 0.5
    contrasts = rng.uniform(1.0 - CONTRAST, 1.0 + CONTRAST, n)
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    for i in range(n):
        matrix = cv2.getRotationMatrix2D(centre, float(angles[i]), float(scales[i]))
        matrix[:, 2] += shifts[i]
        if flips[i]:  # mirror the output: x' = (w - 1) - x
            matrix[0] = -matrix[0]
            matrix[0, 2] += w - 1
        warped = cv2.warpAffine(
            images[i, ..., 0], matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        mean = warped.mean()
        out[i, ..., 0] = np.clip((warped - mean) * contrasts[i] + mean, 0.0, 255.0)
    return out


def random_erasing(
    images: np.ndarray, rng: np.random.Generator, prob: float | None = None, area=None
) -> np.ndarray:
    """Blanks one random rectangle per chosen image (probability `prob`, default ERASE_PROB) with
    noise, so the network cannot lean on one region (a mouth, an eye) alone."""
    prob = ERASE_PROB if prob is None else prob
    area = ERASE_AREA if area is None else area
    n, h, w = images.shape[:3]
    frac = rng.uniform(area[0], area[1], n)
    aspect = np.exp(rng.uniform(-1.0, 1.0, n))  # aspect ratio in [1/e, e]
    eh = np.clip(np.sqrt(frac * aspect) * h, 1.0, h)
    ew = np.clip(np.sqrt(frac / aspect) * w, 1.0, w)
    top = rng.random(n) * (h - eh)
    left = rng.random(n) * (w - ew)
    rows = np.arange(h, dtype=np.float64)[None, :, None]
    cols = np.arange(w, dtype=np.float64)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + eh)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + ew)[:, None, None])
    )
    mask = (inside & (rng.random(n) < prob)[:, None, None])[..., None]
    noise = rng.uniform(0.0, 255.0, images.shape).astype(images.dtype)
    return np.where(mask, noise, images)


def mixup(images, labels, weights, rng: np.random.Generator, alpha: float = MIXUP_ALPHA):
    """Blends each image and its one-hot label with a partner from the same batch: soft targets
    between classes that FER2013 itself confuses (fear/sad, angry/neutral) regularise a net that
    otherwise memorises the training split."""
    n = len(images)
    lam = rng.beta(alpha, alpha, n).astype(np.float32)
    partner = rng.permutation(n)
    mixed_images = lam[:, None, None, None] * images + (1.0 - lam[:, None, None, None]) * images[partner]
    mixed_labels = lam[:, None] * labels + (1.0 - lam[:, None]) * labels[partner]
    mixed_weights = lam * weights + (1.0 - lam) * weights[partner]
    return mixed_images, mixed_labels, mixed_weights


class TrainingBatches(keras.utils.PyDataset):
    """Shuffled, augmented (images, targets, sample weights) batches; reshuffled each epoch. Targets
    are one-hot labels, or the given soft `targets` (N, classes) of a distillation run."""

    def __init__(
        self,
        x,
        y,
        batch_size,
        num_classes,
        weights=None,
        mixup_alpha=MIXUP_ALPHA,
        seed=SEED,
        workers=LOADER_THREADS,
        targets=None,
    ):
        super().__init__(workers=workers, use_multiprocessing=False)
        self.x = x[..., None].astype(np.float32)
        self.onehot = (
            np.eye(num_classes, dtype=np.float32)[y] if targets is None else np.asarray(targets, np.float32)
        )
        self.sw = (weights if weights is not None else np.ones(num_classes, np.float32))[y]
        self.batch_size, self.mixup_alpha, self.seed = batch_size, mixup_alpha, seed
        self.epoch = 0
        self.order = np.random.default_rng((seed, 0)).permutation(len(self.x))

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, index):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        pick = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = random_erasing(random_affine(self.x[pick], rng), rng)
        labels, weights = self.onehot[pick], self.sw[pick]
        if self.mixup_alpha > 0:
            images, labels, weights = mixup(images, labels, weights, rng, self.mixup_alpha)
        return images, labels, weights

    def on_epoch_end(self):
        self.epoch += 1
        self.order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.x))
