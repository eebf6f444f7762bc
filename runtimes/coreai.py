"""Apple Core AI: read an .aimodel asset's signature and op histogram, and run it on coreai-core's CPU runtime.

On Linux, coreai-core's wheel carries a CPU runtime of its own: ``AIModelAsset.executable()`` first
lowers the asset to a compiled ``.aimodelx`` (``AIModel.load`` of the asset itself fails there, "No
such file or directory"), then runs its functions on the CPU in the model's own dtypes. It is a
*reference* runtime: the GPU and the Neural Engine exist only on Apple hardware, and this CPU path
is tens of times slower than torch — its numbers prove parity, never device speed.

The runtime's API is async; the runner keeps one event loop for its life (every runner lives in a
child of its own). The runtime prints a line on stderr per function it loads; the child harness
keeps stderr away from the user's terminal.
"""
from __future__ import annotations

import platform
import re
from typing import Mapping

import numpy as np

from deploykit.errors import ModelLoadError, UsageError
from deploykit.formats import Format
from deploykit.model import LoadedModel, LoadOptions, named_as_recorded
from deploykit.runner import RunnerBase, RunnerOptions
from deploykit.spec import ModelSpec, TensorSpec, merge_user_specs
from deploykit.text import one_line

ENTRY_POINT = "main"
# The summary's scalar type names -> numpy's.
DTYPES = {"Float32": "float32", "Float16": "float16", "BFloat16": "bfloat16", "Float64": "float64",
          "Int8": "int8", "Int16": "int16", "Int32": "int32", "Int64": "int64", "UInt8": "uint8",
          "UInt16": "uint16", "UInt32": "uint32", "UInt64": "uint64", "Bool": "bool"}
_NDARRAY = re.compile(r"^NDArray \((\w+)(?:, (.*))?\)$")
MIN_GLIBC = (2, 34)
PYTHONS = ((3, 11), (3, 14))    # coreai-core 1.0.0b3 ships cp311-cp314 wheels only


def unavailable_reason() -> str:
    """Why coreai-core cannot install or run on this host ('' when it can): its Linux wheel is x86-64 and
    needs glibc >= 2.34 and Python 3.11-3.14 (the registry checks the package itself; doctor asks even when
    the package is missing, since then pip would fail for the same reason)."""
    return host_problem(platform.system(), platform.machine(), platform.libc_ver(), platform.python_version_tuple())


def host_problem(system: str, machine: str, libc: tuple, python: tuple) -> str:
    """The reason for ``unavailable_reason`` from the host's facts (a pure function, so each reason is tested)."""
    version = tuple(int(p) for p in python[:2])
    if not PYTHONS[0] <= version <= PYTHONS[1]:
        return f"coreai-core has wheels for Python 3.11-3.14 only, this is Python {'.'.join(python[:2])}"
    if system == "Darwin":
        return ""
    if system != "Linux" or machine not in ("x86_64", "AMD64"):
        return f"coreai-core has no wheel for {system} {machine} (x86-64 Linux and macOS only)"
    name, text = libc
    numbers = tuple(int(p) for p in re.findall(r"\d+", text)[:2])
    # Only a glibc that names itself too old is refused: an unknown C library (libc_ver could not tell) is left
    # to pip, rather than refusing a runtime that may well be installed and working.
    if name == "glibc" and numbers and numbers < MIN_GLIBC:
        return f"coreai-core needs glibc >= 2.34, this host has {text}"
    return ""


def describe(path: str) -> dict:
    """Signature of the ``main`` function, op histogram, storage and compute types (from the asset's summary:
    read from its bytecode, nothing is compiled)."""
    from coreai.authoring.asset import AIModelAsset

    try:
        summary = AIModelAsset.load(str(path)).summary(include_statistics=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: Core AI cannot read the asset ({one_line(str(exc), 200)})",
                             "the folder is incomplete or from another coreai-core: export it again") from None
    if summary is None or not summary.function_names:      # a cut or emptied bytecode file reads as no program
        raise ModelLoadError(f"{path}: Core AI cannot read the asset (its program holds no function: damaged or "
                             "cut short)", "export it again, or copy the whole .aimodel folder again")
    if ENTRY_POINT not in summary.function_names:
        raise ModelLoadError(f"{path}: the asset has no '{ENTRY_POINT}' function (its functions: "
                             f"{', '.join(summary.function_names)})",
                             "export it again with deploykit (one 'main' entry point)")
    inputs = tuple(_tensor(name, text) for name, text in summary.function_inputs(ENTRY_POINT))
    outputs = tuple(_tensor(name, text) for name, text in summary.function_outputs(ENTRY_POINT))
    ops = dict(sorted(summary.operation_distribution, key=lambda item: -item[1]))
    details = {"ops": ops, "functions": list(summary.function_names),
               "compute_types": list(summary.compute_types),
               "storage_types": {kind: count for kind, count in summary.storage_types},
               "asset_names": {"inputs": [t.name for t in inputs], "outputs": [t.name for t in outputs]},
               "compatibility_version": summary._compatibility_version}   # noqa: SLF001 - the OS it needs
    return {"spec": ModelSpec(inputs, outputs).to_dict(), "details": details}


def _tensor(name: str, text: str) -> TensorSpec:
    """'NDArray (Float32, 64 × 1000)' -> TensorSpec; a dimension that is not a number is dynamic (None)."""
    match = _NDARRAY.match(text.strip())
    dtype = DTYPES.get(match.group(1)) if match else None
    if dtype is None:
        raise ModelLoadError(f"the asset's tensor {name!r} is {text!r}, not a numeric NDArray",
                             "deploykit runs Core AI functions with numeric tensor inputs and outputs")
    dims = [d.strip() for d in (match.group(2) or "").split("×") if d.strip()]
    return TensorSpec(name, tuple(int(d) if d.isdigit() else None for d in dims), dtype)


def load_model(path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    info = describe(path)
    spec = named_as_recorded(path, ModelSpec.from_dict(info["spec"]))
    spec = ModelSpec(tuple(merge_user_specs(spec.inputs, options.input_specs)), spec.outputs)
    return LoadedModel(path=path, format=fmt, spec=spec, details=info["details"])


class CoreAIRunner(RunnerBase):
    """An asset's ``main`` function on coreai-core's CPU runtime (a reference runtime on Linux)."""

    def __init__(self, model: LoadedModel, options: RunnerOptions = RunnerOptions()):
        self.model, self.options = model, options
        self._loop = self._context = self._function = None
        self._entered = False

    def open(self) -> None:
        import asyncio

        from coreai.authoring.asset import AIModelAsset

        self._loop = asyncio.new_event_loop()
        try:
            self._context = AIModelAsset.load(str(self.model.path)).executable()
            executable = self._loop.run_until_complete(self._context.__aenter__())
            self._entered = True
            self._function = executable.load_function(ENTRY_POINT)
        except (RuntimeError, OSError, ValueError) as exc:
            self.close()
            raise ModelLoadError(f"{self.model.path}: Core AI cannot load the asset ({one_line(str(exc), 200)})",
                                 "export it again with this coreai-core") from None
        if self._function is None:
            self.close()
            raise ModelLoadError(f"{self.model.path}: the asset has no '{ENTRY_POINT}' function",
                                 "export it again with deploykit")
        descriptor = self._function.desc
        self._names_in, self._names_out = list(descriptor.input_names), list(descriptor.output_names)

    @property
    def active_providers(self) -> list:
        return ["coreai-core CPU (reference)"]     # off Apple hardware: no GPU, no Neural Engine, one thread setting

    def run(self, feeds: Mapping) -> dict:
        from coreai.runtime import NDArray

        arrays = {}
        for spec, name in zip(self.model.spec.inputs, self._names_in):
            value = np.asarray(feeds[spec.name], dtype=spec.dtype, order="C")     # ascontiguousarray makes a scalar 1-d
            expected = [None if e is None or e < 0 else e for e in self._function.desc.input_descriptor(name).shape]
            if len(expected) != value.ndim or any(e is not None and e != d for e, d in zip(expected, value.shape)):
                raise UsageError(f"input {spec.name!r} has shape {list(value.shape)}, the Core AI model takes "
                                 f"{['?' if e is None else e for e in expected]}",
                                 "feed that shape, or export again with --input to fix another one")
            arrays[name] = NDArray(value)
        try:
            outputs = self._loop.run_until_complete(self._function(arrays))
        except RuntimeError as exc:
            raise UsageError(f"Core AI refused the inputs: {one_line(str(exc), 200)}",
                             "feed the shapes and dtypes `deploykit inspect` shows") from None
        # Copy: the arrays may share the runtime's buffers.
        return {spec.name: np.array(outputs[name].numpy())
                for spec, name in zip(self.model.spec.outputs, self._names_out)}

    def close(self) -> None:
        if self._loop is not None:
            if self._entered:
                self._loop.run_until_complete(self._context.__aexit__(None, None, None))
            self._loop.close()
        self._loop = self._context = self._function = None
        self._entered = False
