"""A synthetic image task the CNN samples are trained on: which of ten shapes is on the picture.

No datasets can be downloaded here, and a network with random weights makes quantization
numbers meaningless (its activations have no structure to keep). Ten procedurally drawn
shapes on noisy, tinted backgrounds are easy enough to learn in a minute on a CPU and hard
enough that the trained features are real. Images are drawn in resolution-independent
coordinates, so the same seed gives the same picture at 96 or 224 pixels.
"""
from __future__ import annotations

import numpy as np

CLASSES = ("disk", "square", "triangle", "ring", "plus", "h_stripes", "v_stripes", "checker", "diamond", "x_cross")


def _mask(kind: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Shape `kind` centred at 0 in the (u, v) plane (v grows downwards), size `radius`."""
    inside = (np.abs(u) < radius) & (np.abs(v) < radius)
    bar = radius * 0.3
    stripes = radius / 2.5
    return {
        0: u ** 2 + v ** 2 < radius ** 2,
        1: inside,
        2: (v < radius * 0.8) & (v > 2 * np.abs(u) - radius),
        3: np.abs(np.sqrt(u ** 2 + v ** 2) - radius * 0.75) < radius * 0.22,
        4: inside & ((np.abs(u) < bar) | (np.abs(v) < bar)),
        5: inside & (np.floor(v / stripes) % 2 == 0),
        6: inside & (np.floor(u / stripes) % 2 == 0),
        7: inside & ((np.floor(u / stripes) + np.floor(v / stripes)) % 2 == 0),
        8: np.abs(u) + np.abs(v) < radius,
        9: inside & ((np.abs(u - v) < bar) | (np.abs(u + v) < bar)),
    }[kind]


def draw(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Images [n, size, size, 3] in [0, 1] (NHWC, float32), one shape of class labels[i] each."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((len(labels), size, size, 3), np.float32)
    for index, kind in enumerate(labels):
        tint, tilt = rng.random(3), rng.random(3) - 0.5
        background = 0.2 + 0.4 * tint + 0.2 * tilt * (u[..., None] - 0.5 + v[..., None] - 0.5)
        colour = (tint + 0.35 + 0.3 * rng.random(3)) % 1.0     # always some distance from the background
        radius = rng.uniform(0.16, 0.3)
        cx, cy = rng.uniform(radius, 1 - radius, 2)
        mask = _mask(int(kind), u - cx, v - cy, radius)[..., None]
        image = np.where(mask, colour, background) + rng.normal(0, 0.06, (size, size, 3))
        images[index] = np.clip(image, 0.0, 1.0)
    return images


def dataset(count: int, size: int, seed: int, channels_first: bool = True) -> tuple:
    """(images, labels) with balanced classes; NCHW for PyTorch, NHWC for Keras."""
    rng = np.random.default_rng(seed)
    # A random starting class: a batch smaller than ten must not always leave out the same classes.
    labels = rng.permutation((np.arange(count) + rng.integers(len(CLASSES))) % len(CLASSES)).astype(np.int64)
    images = draw(labels, size, seed + 1)
    return (images.transpose(0, 3, 1, 2).copy() if channels_first else images), labels


def write_images(out_dir, force: bool = False, count: int = 132, size: int = 224, seed: int = 2000) -> dict:
    """Calibration images for the CNN samples: <out_dir>/shapes/NNN_<class>.png, 224x224 RGB.

    132 images: `--calibration-samples 100` (the default) calibrates on the first 100 and the
    32 left over are held out to judge the int8 artifact on data it was not fitted to. The
    class is in each file name, for anyone who wants accuracy rather than agreement. Kept as is
    when present, unless forced.
    """
    from pathlib import Path

    from PIL import Image

    from deploykit import fsutil

    folder = Path(out_dir) / "shapes"
    if folder.is_dir() and not force:
        return {"images": str(folder), "count": len(list(folder.glob("*.png")))}
    images, labels = dataset(count, size, seed, channels_first=False)
    with fsutil.staging_dir(Path(out_dir)) as stage:
        staged = stage / "shapes"
        staged.mkdir()
        for index, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(staged / f"{index:03d}_{CLASSES[label]}.png")
        fsutil.publish([(staged, folder)])
    return {"images": str(folder), "count": count}
