"""Calibration data for quantization: the user's .npz, a folder of images, or (with a warning) random data."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from deploykit.contract import parse_normalize
from deploykit.errors import UsageError
from deploykit.inputs import load_npz, random_feeds
from deploykit.spec import ModelSpec
from deploykit.text import exception_line

# Calibration images are resized to the model's input; one larger than this is a decompression bomb, not a photo.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
RANDOM_WARNING = ("no --calibration data: int8 ranges were calibrated on random inputs, so the accuracy numbers of "
                  "this artifact say little about real data — give --calibration data.npz or an image folder")


def calibration_feeds(spec: ModelSpec, source: Optional[str], samples: int, normalize: str = "unit") -> tuple:
    """(calibration feeds, held-out feeds, warning or None), in the source's layout.

    The first ``samples`` items calibrate; what the data holds beyond them is held out, so the
    int8 artifact can be judged on in-distribution data its ranges were not fitted to.
    """
    if samples < 1:
        raise UsageError(f"--calibration-samples must be at least 1 (got {samples})", "e.g. --calibration-samples 100")
    if source is None:
        return random_feeds(spec, samples, seed=100), [], RANDOM_WARNING
    path = Path(source)
    if path.is_dir():
        feeds = _image_feeds(spec, path, normalize)
    elif not path.exists():
        raise UsageError(f"{source}: no such calibration file or folder", "give an .npz or a folder of images")
    else:
        feeds = load_npz(path, spec)   # refuses a FIFO or device: it would block
    _require_finite(feeds, source)
    return feeds[:samples], feeds[samples:], None


def _require_finite(feeds: list, source: str) -> None:
    """A NaN or inf in calibration data leaves no range to fit (the quantizer fails deep inside)."""
    for index, feed in enumerate(feeds):
        for name, array in feed.items():
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                raise UsageError(f"{source}: calibration sample {index} of input {name!r} holds NaN or inf",
                                 "int8 ranges are fitted to finite values: clean the data or drop those samples")


def _image_feeds(spec: ModelSpec, folder: Path, normalize: str) -> list:

    mean, std = (np.asarray(v, np.float32) for v in parse_normalize(normalize, "--calibration-normalize"))
    images = [t for t in spec.inputs if len(t.shape) == 4 and t.dtype.startswith("float")]
    if len(spec.inputs) != 1 or not images:
        raise UsageError("an image folder calibrates only models with one 4-D float input",
                         "give --calibration data.npz with one array per input")
    tensor = images[0]
    channels_first = tensor.layout != "NHWC" and tensor.shape[1] in (1, 3)
    height, width = (tensor.shape[2], tensor.shape[3]) if channels_first else (tensor.shape[1], tensor.shape[2])
    from deploykit.fsutil import require_regular_file

    files = [require_regular_file(f, "image", "keep only image files in the calibration folder")
             for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UsageError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})", "add images, or give an .npz")
    feeds = []
    for file in files:
        array = _decoded_image(file, int(width), int(height))
        array = (array - mean) / std
        array = array.transpose(2, 0, 1) if channels_first else array
        feeds.append({tensor.name: array[None].astype(tensor.dtype)})
    return feeds


def _decoded_image(file: Path, width: int, height: int) -> np.ndarray:
    """One calibration image as float32 RGB in [0, 1] at width x height; a file that is no image, is
    damaged or would decode to more than MAX_IMAGE_PIXELS is a UsageError naming it."""
    from PIL import Image, UnidentifiedImageError

    fix = "remove or re-save it; every file with an image suffix in the folder is read"
    try:
        with warnings.catch_warnings():      # our own pixel limit below says it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
        with image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise UsageError(f"{file}: {image.width}x{image.height} pixels is over the {MAX_IMAGE_PIXELS:,}-pixel "
                                 "limit for a calibration image (a decompression bomb?)", fix)
            return np.asarray(image.convert("RGB").resize((width, height)), np.float32) / 255.0
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
            EOFError) as exc:
        raise UsageError(f"{file}: not a readable image ({exception_line(exc)})", fix) from None
