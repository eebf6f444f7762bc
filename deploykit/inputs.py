"""Inputs for verification: seeded random feeds from a ModelSpec, or user data from .npz."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from deploykit.errors import UsageError
from deploykit.formats import ZIP_ERRORS
from deploykit.spec import FLOAT_DTYPES, ModelSpec, TensorSpec
from deploykit.text import exception_line

DEFAULT_INT_RANGE = (0, 10)
# Random feeds are drawn in the parent: past this many bytes (all samples together) deploykit refuses with the
# number rather than being killed for memory without a word. Real data of that size comes with --inputs.
MAX_FEED_BYTES = 2 * 1024**3
# Successive samples draw floats from different distributions so that a model whose
# behaviour depends on the sign or scale of its input (an `if x.sum() > 0:` branch,
# a clamp) is exercised on more than one path.
_FLOAT_KINDS = ("normal", "uniform01", "normal_x3", "negated_normal")


def random_feeds(spec: ModelSpec, samples: int, seed: int = 0, batch: "int | None" = None) -> list:
    """Return ``samples`` feed dicts for ``spec``; deterministic for a given seed.

    Raises UsageError when they would need more than MAX_FEED_BYTES (a model declaring a 2.7e9-element input,
    or --samples 1000000) — before anything is allocated."""
    _check_feed_size(spec, samples, batch)
    feeds = []
    for index in range(samples):
        rng = np.random.default_rng(seed + index)
        kind = _FLOAT_KINDS[index % len(_FLOAT_KINDS)]
        feeds.append({t.name: _random_tensor(t, rng, kind, batch) for t in spec.inputs})
    return feeds


def _check_feed_size(spec: ModelSpec, samples: int, batch) -> None:
    per_sample = 0
    for tensor in spec.inputs:
        count = 1
        for dim in _concrete_shape(tensor, batch):
            count *= dim
        itemsize = 1 if tensor.dtype == "bool" else np.dtype("float32" if tensor.dtype == "bfloat16" else
                                                              tensor.dtype).itemsize
        per_sample += count * itemsize
    if per_sample * samples > MAX_FEED_BYTES:
        raise UsageError(f"{samples} random sample(s) of this model's inputs would need {per_sample * samples:,} bytes "
                         f"({per_sample:,} per sample; the limit is {MAX_FEED_BYTES:,})",
                         "give fewer --samples, concrete smaller shapes with --input, or real data with --inputs")


def _concrete_shape(tensor: TensorSpec, batch: "int | None") -> tuple:
    shape = []
    for axis, dim in enumerate(tensor.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(batch if (axis == 0 and batch) else dim)
        elif axis == 0:
            shape.append(batch or 1)
        else:
            raise UsageError(
                f"input {tensor.name!r} has a dynamic dim at axis {axis} ({dim})",
                f"give a concrete shape with --input {tensor.name}:"
                + "x".join(str(d) if isinstance(d, int) and d >= 0 else "N" for d in tensor.shape))
    return tuple(shape)


def _random_tensor(tensor: TensorSpec, rng: np.random.Generator, kind: str, batch) -> np.ndarray:
    shape = _concrete_shape(tensor, batch)
    if tensor.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if tensor.dtype not in FLOAT_DTYPES:
        low, high = tensor.value_range or DEFAULT_INT_RANGE
        return rng.integers(low, high, size=shape).astype(tensor.dtype)
    if kind == "uniform01":
        values = rng.random(size=shape)
    else:
        values = rng.standard_normal(size=shape)
        values = values * 3.0 if kind == "normal_x3" else values
        values = -values if kind == "negated_normal" else values
    dtype = "float32" if tensor.dtype == "bfloat16" else tensor.dtype
    return values.astype(dtype)


def load_npz(path: "str | Path", spec: ModelSpec) -> list:
    """Load user inputs from ``.npz``: one array per input name.

    An array may carry one extra leading axis of K samples; each becomes one feed. For an input whose batch is 1,
    K samples stacked on the batch axis itself ((K, 32) for (1, 32)) are K feeds as well.
    A single-input model accepts any one array name.
    """
    from deploykit.fsutil import require_regular_file

    path = require_regular_file(path, "inputs file", "give an existing .npz file to --inputs")
    arrays = read_npz(path)
    if len(spec.inputs) == 1 and len(arrays) == 1:
        arrays = {spec.inputs[0].name: next(iter(arrays.values()))}
    missing = [t.name for t in spec.inputs if t.name not in arrays]
    if missing:
        raise UsageError(f"{path} lacks input(s) {', '.join(missing)} (has {', '.join(arrays) or 'nothing'})",
                         "name each array after the model input it feeds")
    per_input = {t.name: _split_samples(t, arrays[t.name], path) for t in spec.inputs}
    counts = {len(v) for v in per_input.values()}
    if len(counts) != 1:
        raise UsageError(f"{path}: inputs carry different numbers of samples",
                         "give every input the same leading sample axis")
    count = counts.pop()
    return [{name: values[i] for name, values in per_input.items()} for i in range(count)]


def shapes_from_npz(spec: ModelSpec, path: "str | Path") -> ModelSpec:
    """The signature with dims it leaves dynamic taken from the arrays of an .npz (one sample per array, or a leading
    sample axis): the user's data says what shapes the model runs at, as --input would. Concrete dims never change."""
    from dataclasses import replace

    arrays = read_npz(Path(path))
    if len(spec.inputs) == 1 and len(arrays) == 1:
        arrays = {spec.inputs[0].name: next(iter(arrays.values()))}
    pinned = []
    for tensor in spec.inputs:
        array = arrays.get(tensor.name)
        dynamic = any(not (isinstance(d, int) and d >= 0) for d in tensor.shape)
        if array is not None and (one := _one_integer_value(tensor, array)) is not None:
            tensor = replace(tensor, value_range=(one, one + 1))
        if array is None or not dynamic or array.ndim not in (len(tensor.shape), len(tensor.shape) + 1):
            pinned.append(tensor)
            continue
        shape = array.shape[-len(tensor.shape):] if tensor.shape else ()
        pinned.append(replace(tensor, shape=tuple(d if isinstance(d, int) and d >= 0 else int(n)
                                                  for d, n in zip(tensor.shape, shape))))
    return ModelSpec(tuple(pinned), spec.outputs)


def _one_integer_value(tensor: TensorSpec, array: np.ndarray) -> "int | None":
    """The value of a one-element integer input (a sample rate, a flag) that holds the same value in every sample of
    the user's data: random samples then feed it too (a model may accept no other), and a converter's verdict can
    name it (``--input sr::int64=16000``). It stays an input: nothing is fixed without the user's --input."""
    one_element = all(d == 1 for d in tensor.shape)          # () or (1,): a dynamic dim may hold a sequence
    if tensor.value_range or tensor.fixed or not one_element or array.dtype.kind not in "iu" or not array.size:
        return None
    values = np.unique(array)
    return int(values[0]) if values.size == 1 else None


def read_npz(path: Path) -> dict:
    """The arrays of an .npz, each member's header checked before anything is allocated: object arrays
    (pickles) are refused, and so is a declared size over MAX_FEED_BYTES in all (a 100-byte file can
    declare a terabyte)."""
    fix = "write it with numpy.savez(path, input_name=array)"
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(_declared_bytes(archive, info, path) for info in archive.infolist())
        if declared > MAX_FEED_BYTES:
            raise UsageError(f"{path}: its arrays declare {declared:,} bytes (the limit is {MAX_FEED_BYTES:,})",
                             "give fewer or smaller samples")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ZIP_ERRORS as exc:
        raise UsageError(f"{path}: not a readable .npz file ({exception_line(exc)})", fix) from None


def _declared_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> int:
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"member {info.filename}: .npy format version {version} is not supported")
        shape, _fortran, dtype = reader(member)
    if dtype.hasobject:
        raise UsageError(f"{path}: member {info.filename} holds Python objects; reading them would unpickle code",
                         "save plain numeric arrays")
    count = 1
    for dim in shape:
        if int(dim) < 0:
            raise ValueError(f"member {info.filename} declares a negative dimension {shape}")
        count *= int(dim)
    return count * dtype.itemsize


def _split_samples(tensor: TensorSpec, array: np.ndarray, path: Path) -> list:
    rank = len(tensor.shape)
    if array.ndim == rank + 1:
        candidates = list(array)
    elif _stacked_on_batch(tensor, array):
        # Samples stacked on a batch axis of 1, (N, 32) for a (1, 32) input: onnx2tf's and most tutorials' form.
        candidates = [array[i:i + 1] for i in range(len(array))]
    elif array.ndim == rank:
        candidates = [array]
    else:
        raise UsageError(f"{path}: input {tensor.name!r} has rank {array.ndim}, the model expects {rank}",
                         f"save an array shaped like {tensor.describe()}")
    for value in candidates:
        _check_shape(tensor, value, path)
    return [_cast(tensor, value, path) for value in candidates]


def _stacked_on_batch(tensor: TensorSpec, array: np.ndarray) -> bool:
    """True when the array can only mean N samples of a batch-1 input: same rank, a batch of 1 in the signature,
    more than one row here, and every other concrete dim matching."""
    shape = tuple(tensor.shape)
    if not shape or array.ndim != len(shape) or shape[0] != 1 or array.shape[0] < 2:
        return False
    return all(not (isinstance(want, int) and want >= 0) or want == got for want, got in zip(shape[1:], array.shape[1:]))


def _check_shape(tensor: TensorSpec, value: np.ndarray, path: Path) -> None:
    for want, got in zip(tensor.shape, value.shape):
        if isinstance(want, int) and want >= 0 and want != got:
            raise UsageError(f"{path}: input {tensor.name!r} has shape {value.shape}, the model expects "
                             f"{tuple(tensor.shape)}", f"save an array shaped like {tensor.describe()}")


def _cast(tensor: TensorSpec, value: np.ndarray, path: Path) -> np.ndarray:
    want = np.dtype("float32" if tensor.dtype == "bfloat16" else tensor.dtype)
    if value.dtype == want:
        return value
    if value.dtype.kind == want.kind or (value.dtype.kind in "iu" and want.kind in "iu"):
        return value.astype(want)
    raise UsageError(f"{path}: input {tensor.name!r} is {value.dtype}, the model expects {want}",
                     f"save it as {want}")
