"""The model contract: what an app must feed a model and how to read what it returns.

One schema (``deploykit.contract``, version 1), written as ``contract.json`` into a bundle and into the
artifact's own metadata (ONNX ``metadata_props``), so that an app — or a tool that never heard of
deploykit — does not guess the layout, value range, normalisation, colour order or label order:

    {"schema": "deploykit.contract", "version": 1, "task": "classify" | "embed" | "raw",
     "inputs":  [{"name", "shape", "dtype", "layout": "NCHW" | "NHWC" | null, "value_range": [lo, hi] | null,
                  "image": null | {"height", "width", "channels", "color_order": "RGB", "resize": "stretch",
                                   "scale": 1/255, "mean": [..], "std": [..]}}],
     "outputs": [{"name", "shape", "dtype", "meaning": "class_scores" | "embedding" | "raw",
                  "labels": "labels.txt" | null, "postprocess": "softmax" | "none", "top_k": int}],
     "inferred": ["what deploykit inferred rather than was told, in words", ...]}

An image input is fed as ``(pixels_in_RGB * scale - mean) / std`` after resizing the picture to
height x width (stretching), in the recorded layout. Values given by the user (``--labels``,
``--normalize``, ``--task``) win over inferred ones; every inference is listed in ``inferred``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from deploykit.errors import UsageError
from deploykit.spec import ModelSpec, TensorSpec
from deploykit.text import quoted

SCHEMA, VERSION = "deploykit.contract", 1
TASKS = ("classify", "embed", "raw")
NORMALIZATIONS = {"unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
ONNX_KEY = "deploykit.contract"
_MEAN_STD = re.compile(r"^mean=([-\d.eE,+]+),std=([-\d.eE,+]+)$")


def parse_normalize(text: str, option: str = "--normalize") -> tuple:
    """``unit`` | ``imagenet`` | ``symmetric`` | ``mean=a,b,c,std=d,e,f`` -> (mean, std) per channel, in [0, 1] units."""
    if text in NORMALIZATIONS:
        return NORMALIZATIONS[text]
    found = _MEAN_STD.match(str(text).replace(" ", ""))
    if not found:
        raise UsageError(f"{option} {text!r} is not understood",
                         f"use {', '.join(NORMALIZATIONS)} or mean=0.485,0.456,0.406,std=0.229,0.224,0.225")
    try:
        mean, std = (tuple(float(v) for v in group.split(",")) for group in found.groups())
    except ValueError:
        raise UsageError(f"{option} {text!r} has a value that is not a number", "e.g. mean=0.5,std=0.5") from None
    if len(mean) != len(std) or len(mean) not in (1, 3) or any(not s > 0 for s in std):
        raise UsageError(f"{option} {text!r}: give 1 or 3 means and as many positive stds", "e.g. mean=0.5,std=0.5")
    return (mean * 3, std * 3) if len(mean) == 1 else (mean, std)


def read_labels(path: str) -> list:
    """One label per line (blank lines at the end ignored)."""
    from deploykit.fsutil import require_regular_file

    require_regular_file(path, "labels file", "give a text file with one class name per line")
    try:
        labels = Path(path).read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a readable UTF-8 labels file ({exc})", "one class name per line") from None
    if not labels or labels == [""]:
        raise UsageError(f"{path} holds no labels", "one class name per line")
    return [label.strip() for label in labels]


@dataclass(frozen=True)
class ContractChoices:
    """What the user said about a model (``--labels``, ``--normalize``, ``--task``), checked when made; recorded in
    an artifact's manifest at export and used by `package` unless it is given other choices."""

    labels_file: Optional[str] = None
    normalize: Optional[str] = None
    task: Optional[str] = None
    labels: Optional[tuple] = None         # read from labels_file (or from a manifest)

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise UsageError(f"unknown --task {self.task!r}", f"use {', '.join(TASKS)}")
        if self.normalize is not None:
            parse_normalize(self.normalize)
        if self.labels_file and self.labels is None:
            object.__setattr__(self, "labels", tuple(read_labels(self.labels_file)))

    def to_dict(self) -> dict:
        return {"labels": list(self.labels) if self.labels else None, "normalize": self.normalize, "task": self.task}

    @classmethod
    def from_dict(cls, data) -> "ContractChoices":
        data = data if isinstance(data, dict) else {}
        labels = data.get("labels")
        labels = tuple(str(label) for label in labels) if isinstance(labels, list) and labels else None
        normalize, task = data.get("normalize"), data.get("task")
        return cls(normalize=normalize if isinstance(normalize, str) else None,
                   task=task if task in TASKS else None, labels=labels)

    def over(self, recorded: "ContractChoices") -> "ContractChoices":
        """These choices, completed by ``recorded`` ones where these say nothing."""
        return ContractChoices(normalize=self.normalize or recorded.normalize, task=self.task or recorded.task,
                               labels=self.labels or recorded.labels)


def with_source_ranges(spec: ModelSpec, source_spec: ModelSpec) -> ModelSpec:
    """Value ranges a file format cannot record (a TFLite token-id input's vocabulary size) from the source, by
    input position: golden vectors and the contract then agree on what the app may feed."""
    inputs = [replace(tensor, value_range=original.value_range) if tensor.value_range is None and original.value_range
              else tensor for tensor, original in zip(spec.inputs, source_spec.counterparts(spec.inputs))]
    return ModelSpec(tuple(inputs) + tuple(spec.inputs[len(inputs):]), spec.outputs)


def image_layout(tensor: TensorSpec) -> Optional[str]:
    """NCHW / NHWC when ``tensor`` can take a picture: 4-D float with 1 or 3 channels where its layout says."""
    if tensor.shape is None or len(tensor.shape) != 4 or not tensor.dtype.startswith("float"):
        return None
    layout = tensor.layout or ("NHWC" if tensor.shape[3] in (1, 3) and tensor.shape[1] not in (1, 3) else "NCHW")
    channels = tensor.shape[1] if layout == "NCHW" else tensor.shape[3]
    height, width = (tensor.shape[2], tensor.shape[3]) if layout == "NCHW" else (tensor.shape[1], tensor.shape[2])
    # A picture is resized to a fixed size: symbolic height or width makes it no image input of the contract.
    fixed = all(isinstance(d, int) and d > 0 for d in (height, width))
    return layout if channels in (1, 3) and fixed else None


def build(spec: ModelSpec, *, task: Optional[str] = None, labels: Optional[list] = None,
          normalize: Optional[str] = None, calibration_normalize: Optional[str] = None,
          probabilities: Optional[bool] = None, labels_file: str = "labels.txt") -> dict:
    """The contract of a model with signature ``spec`` (the artifact's, with layouts recorded).

    ``calibration_normalize`` is what calibrated it (from its manifest); ``probabilities`` whether its
    class-score output already sums to 1 (from golden outputs), deciding the app's softmax.
    """
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown --task {task!r}", f"use {', '.join(TASKS)}")
    inferred: list = []
    inputs = [_input(t, normalize, calibration_normalize, inferred) for t in spec.inputs]
    if normalize and not any(i["image"] for i in inputs):
        raise UsageError(f"--normalize applies to image inputs, and {', '.join(spec.input_names)} "
                         "is no 4-D float input with 1 or 3 channels", "drop --normalize for this model")
    task = task or _inferred_task(spec, labels, inferred)
    outputs = [_output(t, task, labels, probabilities, labels_file, inferred) for t in spec.outputs]
    return {"schema": SCHEMA, "version": VERSION, "task": task, "inputs": inputs, "outputs": outputs,
            "inferred": inferred}


def _input(tensor: TensorSpec, normalize, calibration_normalize, inferred: list) -> dict:
    layout = image_layout(tensor)
    entry = {"name": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype, "layout": tensor.layout or layout,
             "value_range": list(tensor.value_range) if tensor.value_range else None, "image": None}
    if layout is None:
        return entry
    if tensor.layout is None:
        inferred.append(f"{tensor.name} is {layout}: a 4-D float input with its channel axis where {layout} has it")
    chosen = normalize or calibration_normalize or "unit"
    if not normalize:
        inferred.append(f"{tensor.name} is normalised '{chosen}'" + (" (as it was calibrated)" if calibration_normalize
                                                                    else " (the default: pixels / 255)"))
    mean, std = parse_normalize(chosen)
    height, width = (tensor.shape[2], tensor.shape[3]) if layout == "NCHW" else (tensor.shape[1], tensor.shape[2])
    channels = tensor.shape[1] if layout == "NCHW" else tensor.shape[3]
    entry["image"] = {"height": height, "width": width, "channels": channels, "color_order": "RGB",
                      "resize": "stretch", "scale": 1 / 255, "mean": list(mean)[:channels], "std": list(std)[:channels]}
    low = min((0 - m) / s for m, s in zip(mean, std))
    high = max((1 - m) / s for m, s in zip(mean, std))
    entry["value_range"] = [round(low, 6), round(high, 6)]
    return entry


def _inferred_task(spec: ModelSpec, labels, inferred: list) -> str:
    if labels:
        return "classify"
    scores = [t for t in spec.outputs if t.shape and len(t.shape) == 2 and isinstance(t.shape[1], int)
              and t.shape[1] > 1]
    if len(spec.outputs) == 1 and scores:
        inferred.append(f"{scores[0].name} holds class scores: one output of shape {tuple(scores[0].shape)} "
                        "(give --task raw or embed if it is not)")
        return "classify"
    return "raw"


def _output(tensor: TensorSpec, task: str, labels, probabilities, labels_file: str, inferred: list) -> dict:
    entry = {"name": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype, "meaning": "raw",
             "labels": None, "postprocess": "none", "top_k": 0}
    if task == "embed":
        entry["meaning"] = "embedding"
    if task != "classify":
        return entry
    classes = tensor.shape[-1] if tensor.shape else None
    if labels is not None and classes != len(labels):
        raise UsageError(f"{len(labels)} labels for an output of {classes} classes ({tensor.name} "
                         f"{tuple(tensor.shape)})", "give one label per class, in the model's class order")
    entry.update(meaning="class_scores", labels=labels_file if labels else None,
                 postprocess="none" if probabilities else "softmax", top_k=min(5, classes or 5))
    if probabilities is not None:
        inferred.append(f"{tensor.name} {'already sums to 1: no softmax' if probabilities else 'is logits: apply softmax'}"
                        " (from the golden outputs)")
    return entry


def validate(contract) -> dict:
    """``contract`` if it has the version-1 shape (what an app relies on), else UsageError."""
    problem = _problem(contract)
    if problem:
        raise UsageError(f"not a deploykit contract: {problem}", "write it with `deploykit package`")
    return contract


def _problem(contract) -> str:
    """What makes ``contract`` no version-1 contract ('' when nothing does). Every field an app or `summary` reads is
    checked for its type and range: a contract travels inside untrusted files (a model's metadata, a bundle)."""
    if not isinstance(contract, dict) or contract.get("schema") != SCHEMA:
        return "the schema is not deploykit.contract"
    if contract.get("version") != VERSION or isinstance(contract.get("version"), bool):
        return f"version {quoted(contract.get('version'))} (this deploykit reads version {VERSION})"
    if contract.get("task") not in TASKS:
        return f"task {quoted(contract.get('task'))}"
    for kind in ("inputs", "outputs"):
        tensors = contract.get(kind)
        if not isinstance(tensors, list) or not tensors or len(tensors) > MAX_TENSORS or \
                not all(isinstance(t, dict) and _text_ok(t.get("name")) for t in tensors):
            return f"{kind} must be a list of named tensors"
        for tensor in tensors:
            problem = _tensor_problem(tensor, kind == "inputs")
            if problem:
                return f"{kind[:-1]} {quoted(tensor['name'])}: {problem}"
    inferred = contract.get("inferred", [])
    if not isinstance(inferred, list) or not all(_text_ok(item) for item in inferred):
        return "inferred must be a list of short texts"
    return ""


# Bounds on what a contract may hold (no model deploykit packages comes near them): a name or note longer than
# MAX_TEXT, or more tensors or dims than these, is a damaged or crafted contract, not a model's.
MAX_TEXT, MAX_TENSORS, MAX_DIMS, MAX_DIM = 1000, 1000, 16, 2**31 - 1
MEANINGS, POSTPROCESS = ("class_scores", "embedding", "raw"), ("softmax", "none")


def _tensor_problem(tensor: dict, is_input: bool) -> str:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
            d is None or _text_ok(d) or _int_ok(d, -1, MAX_DIM) for d in shape):
        return "shape must be a list of sizes"
    if not _text_ok(tensor.get("dtype")):
        return "dtype must be a text"
    if is_input:
        if tensor.get("layout") not in (None, "NCHW", "NHWC"):
            return "layout must be NCHW, NHWC or null"
        value_range = tensor.get("value_range")
        if value_range is not None and not (isinstance(value_range, list) and len(value_range) == 2 and
                                            all(_number_ok(v) for v in value_range)):
            return "value_range must be [low, high] numbers or null"
        return _image_problem(tensor.get("image")) if tensor.get("image") is not None else ""
    if tensor.get("meaning") not in MEANINGS or tensor.get("postprocess") not in POSTPROCESS:
        return f"meaning must be one of {', '.join(MEANINGS)} and postprocess one of {', '.join(POSTPROCESS)}"
    if "labels" not in tensor:      # null is "no labels"; a missing key is a contract an app would crash on
        return "labels must be given (a file name or null)"
    labels = tensor["labels"]
    if labels is not None and not (_text_ok(labels) and re.fullmatch(r"[\w.-]+", labels) and labels not in (".", "..")):
        return "labels must name a file beside the model (one label per line) or be null"
    if not _int_ok(tensor.get("top_k"), 0, MAX_DIM):
        return "top_k must be a whole number"
    return ""


def _image_problem(image) -> str:
    if not isinstance(image, dict):
        return "image must be an object or null"
    if not all(_int_ok(image.get(key), 1, 65536) for key in ("height", "width")) or image.get("channels") not in (1, 3):
        return "image height and width must be whole numbers, channels 1 or 3"
    if image.get("color_order") != "RGB" or image.get("resize") != "stretch":
        return "image color_order must be RGB and resize stretch"
    mean, std = image.get("mean"), image.get("std")
    numbers = all(isinstance(v, list) and len(v) == image["channels"] and all(_number_ok(x) for x in v)
                  for v in (mean, std))
    if not numbers or not _number_ok(image.get("scale")) or not all(x > 0 for x in std):
        return f"image mean and std must be {image['channels']} numbers each (std > 0), scale a number"
    return ""


def _text_ok(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


def _int_ok(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number_ok(value) -> bool:
    """A finite JSON number (NaN and Infinity parse in Python's json, and 1e999 becomes inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def to_json(contract: dict) -> str:
    return json.dumps(contract, indent=2) + "\n"


def onnx_metadata(contract: dict) -> dict:
    """``metadata_props`` for an ONNX model: the whole contract under ``deploykit.contract``, plus the ONNX image
    conventions (``Image.BitmapPixelFormat``, ``Image.ColorSpaceGamma``, ``Image.NominalPixelRange``) where the
    model has one image input they can describe."""
    props = {ONNX_KEY: json.dumps(contract, separators=(",", ":"))}
    images = [i for i in contract["inputs"] if i.get("image")]
    if len(images) == 1 and images[0]["image"]["channels"] == 3:
        image = images[0]["image"]
        props["Image.BitmapPixelFormat"] = "Rgb8"
        props["Image.ColorSpaceGamma"] = "SRGB"
        # The ONNX convention names ranges of the tensor's values; a mean/std normalisation is none of them.
        unit = all(m == 0 for m in image["mean"]) and all(s == 1 for s in image["std"])
        symmetric = all(m == 0.5 for m in image["mean"]) and all(s == 0.5 for s in image["std"])
        pixel_range = "Normalized_0_1" if unit else "Normalized_1_1" if symmetric else None
        if pixel_range:     # left out for other mean/std: the contract itself carries them
            props["Image.NominalPixelRange"] = pixel_range
    return props


def summary(contract: dict) -> list:
    """The contract in a few lines of words, for `inspect`, `verify` and `package` output."""
    lines = [f"task: {contract['task']}"]
    for tensor in contract["inputs"]:
        image = tensor.get("image")
        text = f"input {tensor['name']}: {'x'.join(map(str, tensor['shape']))} {tensor['dtype']}"
        if tensor.get("layout"):
            text += f" {tensor['layout']}"
        if image:
            text += (f", image {image['width']}x{image['height']} {image['color_order']} resized by {image['resize']}, "
                     f"(pixels/255 - mean {image['mean']}) / std {image['std']}")
        elif tensor.get("value_range"):
            text += f", values in {tensor['value_range']}"
        lines.append(text)
    for tensor in contract["outputs"]:
        text = f"output {tensor['name']}: {tensor['meaning']}"
        if tensor["meaning"] == "class_scores":
            text += f", {tensor['postprocess']} then top-{tensor['top_k']}" + (
                f", labels {tensor['labels']}" if tensor["labels"] else ", no labels (class indices)")
        lines.append(text)
    return lines + [f"inferred: {item}" for item in contract.get("inferred", [])]
