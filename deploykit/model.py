"""A loaded model of any format, and the one entry point that loads it."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from deploykit import registry
from deploykit.child import LOAD, in_child, in_session, run_child
from deploykit.deadline import Pending, call_within
from deploykit.formats import Format, detect
from deploykit.spec import ModelSpec, TensorSpec

DEFAULT_TIMEOUT_S = 600.0
_LOADING = threading.RLock()


@dataclass
class LoadOptions:
    """How to load a model: user-given signature, weights, pickle trust, and the time a child may take."""

    weights: Optional[str] = None
    trust_pickle: bool = False
    input_specs: tuple = ()          # TensorSpecs from --input, they override what the file says
    timeout: float = DEFAULT_TIMEOUT_S   # loading in a child process (files a runtime could crash on)

    def to_dict(self) -> dict:
        return {"weights": self.weights, "trust_pickle": self.trust_pickle,
                "inputs": [t.to_dict() for t in self.input_specs], "timeout": self.timeout}

    @classmethod
    def from_dict(cls, data: dict) -> "LoadOptions":
        return cls(weights=data.get("weights"), trust_pickle=bool(data.get("trust_pickle")),
                   input_specs=tuple(TensorSpec.from_dict(t) for t in data.get("inputs") or ()),
                   timeout=float(data.get("timeout") or DEFAULT_TIMEOUT_S))


@dataclass
class LoadedModel:
    """A model ready to run: its format, signature and the framework object behind it."""

    path: str
    format: Format
    spec: ModelSpec
    handle: Any = None               # nn.Module / ScriptModule / Keras model: in a child only, None in the CLI process
    weights: Optional[str] = None
    details: dict = field(default_factory=dict)
    load: Optional[LoadOptions] = None   # how it was loaded: a child that needs the handle loads it the same way

    @property
    def label(self) -> str:
        name = Path(self.path).name if Path(self.path).exists() else self.path
        return f"{name} ({self.format.value})"

    def description(self) -> dict:
        """What a child needs to run this model without reading the file's signature again."""
        details = {k: v for k, v in self.details.items() if _json_safe(v)}
        return {"path": str(self.path), "format": self.format.value, "spec": self.spec.to_dict(),
                "details": details, "load": (self.load or LoadOptions(weights=self.weights)).to_dict()}


def load_model(path: str, options: Optional[LoadOptions] = None, fmt: Optional[Format] = None) -> LoadedModel:
    """Detect the format of ``path`` (unless ``fmt`` says it: detecting reads the file) and load it with the
    registered loader.

    Formats whose loader can crash natively on a bad file (the registry's ``isolated`` loaders:
    TFLite, ExecuTorch, and PyTorch and TensorFlow, whose own deserializers abort on crafted
    archives) are described in a child process, under ``options.timeout``: the result has no
    ``handle``, and what needs the live object (reference outputs, a converter) runs in a child too
    — the command's reused child for a framework source, so it is deserialized once. ONNX loads in
    this process under the same limit (``deploykit.deadline``).
    """
    options = options or LoadOptions()
    fmt = fmt or detect(path)
    entry = registry.loader_for(fmt)
    registry.require(entry.requires, f"needed to load {fmt.value} models")
    if in_child():     # the child's own time limit applies, and kills it
        model = _kept_or_loaded(entry, path, fmt, options)
    elif entry.isolated:
        info = run_child("deploykit.model:describe_job", {"path": str(path), "format": fmt.value,
                                                          "load": options.to_dict()},
                         stage=LOAD, what=_name(path), timeout=options.timeout,
                         reuse=fmt not in registry.FILE_FORMATS).info
        model = LoadedModel(path, fmt, ModelSpec.from_dict(info["spec"]), details=info["details"])
    else:
        model = call_within(lambda: _load_here(entry, path, fmt, options), options.timeout, LOAD, _name(path))
    model.load = options
    return _with_manifest_layouts(model)


def _load_here(entry, path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    with _LOADING:     # one framework load at a time: a background load (PendingModel) and this one never race
        return registry.resolve(entry.target)(path, fmt, options)


_KEPT: dict = {}     # in a reused child: the models earlier jobs of the command loaded


def _kept_or_loaded(entry, path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    """A reused child loads a source once per command: describing it, its reference outputs and a converter that
    needs the module are three jobs on one object. Keyed by the file's identity too, so a changed file is read
    anew. Each caller gets its own LoadedModel (callers replace ``spec``); the framework object is shared."""
    if not in_session():
        return _load_here(entry, path, fmt, options)
    try:
        stat = os.stat(path)
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except OSError:
        stamp = None      # a factory (package.module:function): named, not a file
    key = (str(path), fmt.value, json.dumps(options.to_dict(), sort_keys=True), stamp)
    if key not in _KEPT:
        _KEPT[key] = _load_here(entry, path, fmt, options)
    kept = _KEPT[key]
    return replace(kept, details=dict(kept.details))


def _name(path) -> str:
    return Path(str(path)).name or str(path)


def describe_job(request: dict, arrays: dict) -> dict:
    """Child side of an isolated load: the signature and JSON-able details."""
    model = load_model(request["path"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    return {"spec": model.spec.to_dict(), "details": model.description()["details"]}


def model_from_request(request: dict) -> LoadedModel:
    """A model from LoadedModel.description(): file formats are rebuilt from it, framework ones reloaded."""
    fmt = Format(request["format"])
    if fmt in registry.FILE_FORMATS and request.get("spec"):
        return LoadedModel(request["path"], fmt, ModelSpec.from_dict(request["spec"]),
                           details=request.get("details") or {})
    return load_model(request["path"], LoadOptions.from_dict(request.get("load") or {}), fmt)


def _with_manifest_layouts(model: LoadedModel) -> LoadedModel:
    """Layout labels are in no ONNX or TFLite file; deploykit's manifest beside an artifact records them."""
    from deploykit.manifest import read as read_manifest

    if model.format not in registry.FILE_FORMATS or not Path(str(model.path)).exists():
        return model
    signature = (read_manifest(model.path) or {}).get("signature") or {}

    def labelled(tensors: tuple, kind: str) -> tuple:
        labels = {t.get("name"): t.get("layout") for t in signature.get(kind, []) if isinstance(t, dict)}
        return tuple(replace(t, layout=labels[t.name]) if labels.get(t.name) else t for t in tensors)

    if signature:
        model.spec = ModelSpec(labelled(model.spec.inputs, "inputs"), labelled(model.spec.outputs, "outputs"))
    return model


def named_as_recorded(path: str, spec: ModelSpec) -> ModelSpec:
    """``spec`` under the tensor names deploykit's manifest beside ``path`` records (by position): for formats that
    keep no names (.pte) or must take others (Core ML replaces '.' and ':')."""
    from deploykit.manifest import read as read_manifest

    signature = (read_manifest(path) or {}).get("signature") or {}

    def named(tensors: tuple, kind: str) -> tuple:
        recorded = [t.get("name") for t in signature.get(kind) or [] if isinstance(t, dict)]
        if len(recorded) != len(tensors) or not all(isinstance(n, str) and n for n in recorded):
            return tensors
        return tuple(replace(t, name=n) for t, n in zip(tensors, recorded))

    return ModelSpec(named(spec.inputs, "inputs"), named(spec.outputs, "outputs"))


def child_load_options(model) -> LoadOptions:
    """How a converter's child loads the source again: the export's own load options, else those its weights and
    format imply (a fully pickled module was only accepted with --trust-pickle)."""
    return model.load or LoadOptions(weights=model.weights, trust_pickle=model.format == Format.TORCH_PICKLE)


def _json_safe(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def describe_file(path: str) -> dict:
    """A converter child's description of the file it wrote (LoadedModel.description), read in that child."""
    return load_model(str(path)).description()


class PendingModel:
    """A source model loading in a background thread, so that a converter child can start meanwhile.

    ``path``, ``format``, ``weights`` and ``load`` are known at once; any other attribute
    (``spec``, ``handle``, ``details``, ``label``, ...) waits for the load. Loading a torch
    program costs seconds (the framework's imports and deserialisation); a converter that runs
    in a child and needs only the file and the load options (litert-torch) overlaps with it.
    A load error is raised by :meth:`result` and by the first attribute that waits.
    """

    def __init__(self, path: str, options: LoadOptions, fmt: Optional[Format] = None):
        self.path, self.load, self.weights = path, options, options.weights
        self.format = fmt or detect(path)
        registry.require(registry.loader_for(self.format).requires, f"needed to load {self.format.value} models")
        # load_model bounds itself by options.timeout, so waiting for this thread is bounded too.
        self._pending = Pending(lambda: load_model(path, options, self.format), name="deploykit-source-load")

    def result(self) -> LoadedModel:
        """The loaded model (waits for it); raises the loader's own error."""
        return self._pending.result(None, LOAD, _name(self.path))

    def failure(self) -> Optional[BaseException]:
        """The loader's error once it has failed, else None (never waits): a child converting the same
        source can be stopped at once."""
        return self._pending.exception()

    def __getattr__(self, name: str):
        return getattr(self.result(), name)
