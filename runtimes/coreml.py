"""Apple Core ML (.mlpackage, mlprogram): read a package's signature and everything a static check can tell, and
run it through coremltools' ``predict`` where Core ML exists (macOS).

coremltools 9 reads, converts and saves packages on Linux, but its prediction, compilation and
compute plans need Core ML's framework, which only macOS has ("Model prediction is only supported on
macOS"). So on Linux this module *describes* a package (``describe``: the spec reloaded with
``skip_model_load``: spec version, model type, opset, deployment target, I/O names, shapes and
dtypes, the MIL program's op histogram and the dtypes its ops compute in) and the runtime is
unavailable (``unavailable_reason``): `verify` says so, and `export` keeps a package only with
--keep-unverified.
"""
from __future__ import annotations

import platform
import sys
from collections import Counter
from typing import Mapping

import numpy as np

from deploykit.errors import ModelLoadError, UsageError
from deploykit.formats import Format, coreml_manifest_paths
from deploykit.model import LoadedModel, LoadOptions, named_as_recorded
from deploykit.runner import RunnerBase, RunnerOptions
from deploykit.spec import ModelSpec, TensorSpec, merge_user_specs
from deploykit.text import one_line

ENTRY_POINT = "main"
# Core ML's multi-array element types (FeatureTypes.proto ArrayDataType) -> numpy's.
ARRAY_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8"}
# coremltools' __init__ imports each of these it finds, for converters deploykit does not use here (with TensorFlow
# installed, ~10 s of a 1 s read); reading or running a package needs none of them.
_FRONTENDS = ("tensorflow", "torch", "sklearn", "xgboost", "libsvm")


def unavailable_reason() -> str:
    """Why Core ML cannot run a package on this host ('' on macOS; the registry checks coremltools itself)."""
    system = platform.system()
    if system == "Darwin":
        return ""
    return f"no Core ML runtime on {system or 'this system'} (coremltools predicts on macOS only)"


def coremltools_module():
    """coremltools, imported without the converter frontends when none is loaded yet (see ``_FRONTENDS``).

    A process that imported coremltools this way cannot convert from torch; deploykit reads packages in children of
    their own, and the converter child imports coremltools itself before it describes what it wrote."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    blocked = [name for name in _FRONTENDS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None        # "import name" raises ImportError: coremltools skips that frontend
    try:
        import coremltools
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return coremltools


def describe(path: str) -> dict:
    """Signature and static facts of a package, read without Core ML: {"spec": ModelSpec dict, "details": {...}}."""
    coreml_manifest_paths(path)       # a manifest naming a file outside the package is refused first
    ct = coremltools_module()
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:      # noqa: BLE001 - coremltools raises bare Exception, protobuf DecodeError, OSError
        raise ModelLoadError(f"{path}: coremltools cannot read the package ({one_line(str(exc), 200)})",
                             "the folder is incomplete or not a Core ML package: export it again") from None
    kind = spec.WhichOneof("Type") or "none"
    program = _program(spec) if kind == "mlProgram" else None
    types = _mil_types(program) if program is not None else {}
    inputs = tuple(_tensor(f, types) for f in spec.description.input)
    outputs = tuple(_tensor(f, types) for f in spec.description.output)
    details = {"ops": _histogram(program) if program is not None else _layers(spec, kind),
               "model_type": kind, "spec_version": int(spec.specificationVersion),
               "deployment_target": _targets(ct, int(spec.specificationVersion)),
               "opset": program.opset if program is not None else "",
               "package_names": {"inputs": [t.name for t in inputs], "outputs": [t.name for t in outputs]},
               **_precision(program), **_metadata(spec)}
    return {"spec": ModelSpec(inputs, outputs).to_dict(), "details": details}


def _program(spec):
    """The ``main`` function of an mlprogram, with the block of its opset."""
    functions = spec.mlProgram.functions
    if ENTRY_POINT not in functions:
        raise ModelLoadError(f"the Core ML program has no '{ENTRY_POINT}' function (its functions: "
                             f"{', '.join(functions) or 'none'})", "export it again with deploykit")
    function = functions[ENTRY_POINT]
    block = function.block_specializations.get(function.opset)
    if block is None:
        raise ModelLoadError(f"the Core ML program's main function has no block for its opset {function.opset!r}",
                             "export it again with deploykit")
    return _Program(function.opset, block, function.inputs)


class _Program:
    def __init__(self, opset: str, block, inputs):
        self.opset, self.block, self.inputs = opset, block, inputs

    def operations(self):
        """Every operation, nested blocks (cond, while_loop) included."""
        pending = list(self.block.operations)
        while pending:
            op = pending.pop(0)
            yield op
            for inner in op.blocks:
                pending.extend(inner.operations)


def _histogram(program: _Program) -> dict:
    counts = Counter(op.type for op in program.operations())
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _layers(spec, kind: str) -> dict:
    """A (legacy) neural network's layer kinds; other model types hold no op list."""
    network = getattr(spec, kind, None) if kind.startswith("neuralNetwork") else None
    counts = Counter(layer.WhichOneof("layer") for layer in getattr(network, "layers", []))
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _mil_types(program: _Program) -> dict:
    """{value name: (dtype, dims)} of the program's inputs and every op output (a dim None where unknown)."""
    types = {}
    values = [(v.name, v.type) for v in program.inputs] + \
        [(o.name, o.type) for op in program.operations() for o in op.outputs]
    for name, value_type in values:
        tensor = value_type.tensorType
        dims = tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in tensor.dimensions)
        types[name] = (_mil_dtype(tensor.dataType), dims)
    return types


def _mil_dtype(value: int) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(value).lower()


def _tensor(feature, types: dict) -> TensorSpec:
    """A description's feature as a TensorSpec: a multi-array's dtype and shape (a flexible dim is None; an output
    whose description states no shape takes the program's own type of that value)."""
    kind = feature.type.WhichOneof("Type")
    if kind != "multiArrayType":
        raise ModelLoadError(f"the Core ML model's {feature.name!r} is a {kind}, not a multi-array",
                             "deploykit reads Core ML models with multi-array inputs and outputs")
    array = feature.type.multiArrayType
    from coremltools.proto import FeatureTypes_pb2

    dtype = ARRAY_DTYPES.get(FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType))
    if dtype is None:
        raise ModelLoadError(f"the Core ML model's {feature.name!r} has element type {array.dataType}",
                             "deploykit reads float32/float16/float64/int32/int8 multi-arrays")
    shape = tuple(int(d) for d in array.shape)
    ranges = list(array.shapeRange.sizeRanges)
    if ranges:
        shape = tuple(r.lowerBound if r.lowerBound == r.upperBound else None for r in ranges)
    elif array.enumeratedShapes.shapes:
        options = [tuple(s.shape) for s in array.enumeratedShapes.shapes]
        shape = tuple(dims[0] if len(set(dims)) == 1 else None for dims in zip(*options))
    if not shape and feature.name in types:
        shape = types[feature.name][1]
    return TensorSpec(feature.name, shape, dtype)


def _precision(program) -> dict:
    """What the program computes in: the element type of every op's first output ("const" ops hold the weights and
    the ops' attributes, counted apart by type; "cast" ops convert at the boundary, counted apart too)."""
    if program is None:
        return {}
    compute, consts, casts = Counter(), Counter(), 0
    for op in program.operations():
        if not op.outputs:
            continue
        dtype = _mil_dtype(op.outputs[0].type.tensorType.dataType)
        if op.type == "const":
            consts[dtype] += 1
        elif op.type == "cast":
            casts += 1
        else:
            compute[dtype] += 1
    floats = {d: n for d, n in compute.items() if d.startswith("float")}
    precision = "float16" if set(floats) == {"float16"} else "float32" if "float16" not in floats else "mixed"
    return {"compute_precision": precision if floats else "none", "compute_types": dict(compute),
            "const_types": dict(consts), "casts": casts}


def _targets(ct, version: int) -> list:
    """The OS releases whose Core ML reads this spec version (coremltools' own table: iOS17 is spec 8)."""
    return [name for name, target in ct.target.__members__.items() if int(target.value) == version]


def _metadata(spec) -> dict:
    user = dict(spec.description.metadata.userDefined)
    return {"coremltools_version": user.get("com.github.apple.coremltools.version", ""),
            "source_dialect": user.get("com.github.apple.coremltools.source_dialect", "")}


def load_model(path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    """The package's signature under the source's tensor names (deploykit's manifest records them where Core ML
    had to take others) and its static facts."""
    info = describe(path)
    spec = named_as_recorded(path, ModelSpec.from_dict(info["spec"]))
    spec = ModelSpec(tuple(merge_user_specs(spec.inputs, options.input_specs)), spec.outputs)
    return LoadedModel(path=path, format=fmt, spec=spec, details=info["details"])


class CoreMLRunner(RunnerBase):
    """A package's ``predict`` through coremltools on Core ML (macOS only).

    Untested here: deploykit's machines run Linux, where coremltools cannot predict and the registry's check
    (``unavailable_reason``) keeps this runner from being opened. Written from coremltools' documented API:
    ``MLModel(path, compute_units=...)`` and ``predict({name: array}) -> {name: array}``.
    """

    def __init__(self, model: LoadedModel, options: RunnerOptions = RunnerOptions()):
        self.model, self.options = model, options
        self._mlmodel = None
        names = model.details.get("package_names") or {}
        self._names_in = names.get("inputs") or [t.name for t in model.spec.inputs]
        self._names_out = names.get("outputs") or [t.name for t in model.spec.outputs]

    def open(self) -> None:
        ct = coremltools_module()
        # CPU only unless asked: the GPU and the Neural Engine compute in fp16, which would judge an fp32 package
        # at the wrong precision.
        units = ct.ComputeUnit.CPU_ONLY if self.options.device == "cpu" else ct.ComputeUnit.ALL
        try:
            self._mlmodel = ct.models.MLModel(str(self.model.path), compute_units=units)
        except Exception as exc:      # noqa: BLE001 - Core ML's compile errors arrive as bare Exception
            raise ModelLoadError(f"{self.model.path}: Core ML cannot load the package ({one_line(str(exc), 200)})",
                                 "export it again with this coremltools") from None

    @property
    def active_providers(self) -> list:
        return [f"Core ML ({'CPU only' if self.options.device == 'cpu' else 'all compute units'})"]

    def run(self, feeds: Mapping) -> dict:
        arrays = {name: np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
                  for spec, name in zip(self.model.spec.inputs, self._names_in)}
        try:
            outputs = self._mlmodel.predict(arrays)
        except Exception as exc:      # noqa: BLE001 - Core ML's errors arrive as bare Exception
            raise UsageError(f"Core ML refused the inputs: {one_line(str(exc), 200)}",
                             "feed the shapes and dtypes `deploykit inspect` shows") from None
        return {spec.name: np.array(outputs[name]) for spec, name in zip(self.model.spec.outputs, self._names_out)}

    def close(self) -> None:
        self._mlmodel = None
