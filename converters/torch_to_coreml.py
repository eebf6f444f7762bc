"""PyTorch -> Apple Core ML package (.mlpackage, mlprogram) with coremltools, checked statically.

The conversion runs in a child process (deploykit.child, stage "convert"): the source is loaded
again there, torch.export'ed (TorchScript through torch's TorchScript -> ExportedProgram
converter, as for ExecuTorch and Core AI), and handed to ``coremltools.convert(...,
convert_to="mlprogram")`` with the source's tensor names, shapes and dtypes.

Deployment target: iOS 17 (Core ML spec 8, opset CoreML7, also macOS 14, watchOS 10, tvOS 17). It
runs on every iPhone that iOS 18 runs on (A12 and later), so a newer target would gain ops but
reach no more phones, while the installed base still on iOS 17 keeps the package; iOS 16 would add
the A11 phones but lose the iOS 17 opset, whose int8 activation quantize/dequantize a later int8
route would need. ``--quantize fp16`` is coremltools' FLOAT16 compute precision (weights and
arithmetic in float16) with float32 inputs and outputs (casts inside the program), so an app keeps
feeding float32 buffers.

Nothing on Linux can run a Core ML package (coremltools 9 predicts, compiles and plans on macOS
only), so every check Linux allows is made here instead: the package is reloaded with
``skip_model_load``; its spec version, model type, opset and deployment target, its input and
output names, shapes and dtypes against the source's (a mismatch fails the hop), its op
histogram and the precision its ops compute in (fp16 asked, fp16 found). Those are static
checks, not parity: without a Core ML runtime the package is kept only with --keep-unverified,
marked unverified (``deploykit.conversion.keep_unverifiable``); on macOS it is verified as any
artifact is (``accept``).
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from deploykit import registry
from deploykit.child import CONVERT, run_child
from deploykit.constructs import data_dependence_named, refuse_fused_fastpath
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept, with_source_names, keep_unverifiable
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.model import LoadedModel, LoadOptions, child_load_options
from deploykit.parity import normalised_name
from deploykit.text import one_line

EXAMPLE_SEED = 1234
TARGET = "iOS17"           # see the module docstring
REMEDY = ("run with --debug for coremltools' own log; export --to coreai (Core AI, verified here), or report the "
          "model to coremltools")
# Core ML multi-arrays hold no int64: coremltools makes such inputs and outputs int32.
_COREML_DTYPE = {"int64": "int32"}


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    load = child_load_options(model)
    request = {"source": model.path, "format": model.format.value, "load": load.to_dict(), "out": str(out_path),
               "fp16": options.quantize == "fp16", "dynamic_batch": options.dynamic_batch}
    info = run_child("converters.torch_to_coreml:job", request, stage=CONVERT, what="Core ML (coremltools)",
                     timeout=options.timeout, debug=options.debug, abort=getattr(model, "failure", None)).info
    result = ConversionResult(path=out_path, converter="torch_to_coreml", tool=info["tool"],
                              description=info["artifact"], static_checks=info["static_checks"])
    result.notes.extend(static_notes(info["static_checks"]))
    if options.quantize == "fp16":
        result.notes.append("fp16: coremltools' FLOAT16 compute precision (weights and arithmetic in float16), "
                            "inputs and outputs float32 (casts inside the program)")
    reason = registry.runtime_for(Format.COREML).unavailable_reason()
    if not reason:        # macOS: Core ML runs it, so it is verified like any artifact
        return accept(result, check, options, "coremltools", "Core ML", REMEDY)
    return keep_unverifiable(result, options, "coremltools", "Core ML package", reason,
                             "export --to coreai, which runs here", model.label)


def job(request: dict, arrays: dict) -> dict:
    """Child side: load the source again, export it, convert it with coremltools, save the package, check it."""
    import torch

    from deploykit.inputs import random_feeds
    from deploykit.model import describe_file, load_model
    from deploykit.spec import ModelSpec

    ct = _coremltools()
    model = load_model(request["source"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    inputs, outputs = model.spec.inputs, model.spec.outputs
    feeds = random_feeds(ModelSpec(inputs), samples=1, seed=EXAMPLE_SEED)[0]
    example = tuple(torch.from_numpy(feeds[t.name]) for t in inputs)
    watch = _OpWatch()
    with data_dependence_named("coremltools' exporter"), watch:
        program = _exported(model, example, request["dynamic_batch"])
        try:
            converted = ct.convert(program.run_decompositions({}), convert_to="mlprogram",
                                   minimum_deployment_target=getattr(ct.target, TARGET),
                                   compute_precision=ct.precision.FLOAT16 if request["fp16"] else ct.precision.FLOAT32,
                                   inputs=_tensor_types(ct, inputs, request["dynamic_batch"]),
                                   outputs=_output_types(ct, outputs, program))
        except Exception as exc:      # noqa: BLE001 - coremltools raises ValueError, NotImplementedError, bare Exception
            raise _conversion_error(exc, watch.op) from None
    converted.save(request["out"])
    description = describe_file(request["out"])      # reloaded from disk with skip_model_load
    checks = static_checks(model.spec.to_dict(), description, request["fp16"])
    return {"tool": f"coremltools {ct.__version__} convert → mlprogram {TARGET} (torch {torch.__version__})",
            "artifact": with_source_names(description, model.spec), "static_checks": checks}


def _coremltools():
    """coremltools without its TensorFlow frontend (its __init__ imports TensorFlow when installed: seconds, for a
    converter deploykit does not use); torch stays, the torch.export frontend needs it."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    blocked = "tensorflow" not in sys.modules
    if blocked:
        sys.modules["tensorflow"] = None      # "import tensorflow" raises ImportError: coremltools skips it
    try:
        import coremltools
    finally:
        if blocked and sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]
    return coremltools


def _exported(model: LoadedModel, example: tuple, dynamic_batch: bool):
    """The source as an ExportedProgram: as saved, converted from TorchScript, or exported now (with a batch Dim for
    --dynamic-batch)."""
    import torch

    saved = model.details.get("exported_program")
    if saved is not None and not dynamic_batch:
        return saved
    if saved is None and model.format == Format.TORCHSCRIPT:
        from torch._export.converter import TS2EPConverter   # private; the ONNX and ExecuTorch edges use it too

        refuse_fused_fastpath(model.handle, "torch's TorchScript converter (hence Core ML)")
        saved = TS2EPConverter(model.handle, example).convert()
        if not dynamic_batch:
            return saved
    module = saved.module() if saved is not None else model.handle.eval()
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        shapes = tuple({0: batch} if t.dim() else None for t in example)
    try:
        return torch.export.export(module, example, dynamic_shapes=shapes)
    except torch._dynamo.exc.UserError as exc:      # noqa: SLF001 - torch.export's own "constraints violated"
        if shapes is None:
            raise
        raise ConversionError(f"the model fixes its batch size inside (torch.export: {one_line(str(exc), 120)})",
                              "drop --dynamic-batch") from None


def _tensor_types(ct, inputs: tuple, dynamic_batch: bool) -> list:
    """The source's inputs as coremltools TensorTypes: its names, shapes (a flexible batch with --dynamic-batch;
    coremltools takes a dim torch.export left symbolic from the program) and dtypes."""
    import numpy as np

    types = []
    for tensor in inputs:
        dtype = np.dtype(_COREML_DTYPE.get(tensor.dtype, tensor.dtype))
        dims = list(tensor.shape)
        if dynamic_batch and dims:
            dims[0] = None
        if dims and all(isinstance(d, int) for d in dims):
            types.append(ct.TensorType(name=tensor.name, shape=tuple(dims), dtype=dtype))
        else:
            types.append(ct.TensorType(name=tensor.name, dtype=dtype))
    return types


def _output_types(ct, outputs: tuple, program):
    """The source's output names, float outputs kept float32 (with fp16 compute coremltools would otherwise hand
    the app float16); None where the program's outputs do not line up with the source's."""
    import numpy as np

    if len(program.graph_signature.user_outputs) != len(outputs):
        return None
    return [ct.TensorType(name=t.name, dtype=np.float32) if t.dtype.startswith("float") else ct.TensorType(name=t.name)
            for t in outputs]


class _OpWatch(logging.Handler):
    """The op coremltools was converting when it failed: its torch frontend logs "converting 'KIND' op (located at:
    'WHERE')" at ERROR and re-raises the op's own exception, which rarely names the op."""

    _PATTERN = re.compile(r"converting '([^']+)' op \(located at: '([^']*)'\)")

    def __init__(self):
        super().__init__(logging.ERROR)
        self.op = None

    def emit(self, record: logging.LogRecord) -> None:
        found = self._PATTERN.search(record.getMessage())
        if found:
            self.op = (found.group(1), found.group(2))

    def __enter__(self):
        logging.getLogger("coremltools").addHandler(self)
        return self

    def __exit__(self, *exc_info):
        logging.getLogger("coremltools").removeHandler(self)
        return False


_UNKNOWN_NODE = re.compile(r"Unsupported fx node \S+, kind (\w+)")


def _conversion_error(exc: Exception, op) -> ConversionError:
    """coremltools' own reason, one line, naming the op it failed on (a ConversionError: raised in the child, it
    comes back as the same class and ends this route)."""
    reason = f"{type(exc).__name__}: {one_line(str(exc), 240)}"
    unknown = _UNKNOWN_NODE.search(str(exc))     # raised while reading the graph, before any op is converted
    op = op or ((unknown.group(1), "") if unknown else None)
    if op:
        where = f" at {op[1]!r}" if op[1] and op[1] != op[0] else ""
        return ConversionError(f"Core ML cannot convert the model: coremltools fails on the op {op[0]!r}{where} "
                               f"({reason})", "rewrite that part of the model with supported ops, or export --to "
                               "coreai / onnx / tflite")
    return ConversionError(f"coremltools could not convert the model: {reason}", REMEDY)


def static_checks(source: dict, description: dict, fp16: bool) -> dict:
    """Everything Linux can check of a saved package (``description``: runtimes.coreml's, read back with
    skip_model_load) against the source's signature (``source``: a ModelSpec dict). Raises ConversionError naming
    the first thing that does not hold; returns the facts the manifest records (``static_notes`` says them)."""
    details, package = description["details"], description["spec"]
    if details.get("model_type") != "mlProgram":
        raise ConversionError(f"coremltools wrote a {details.get('model_type')} model, not an mlprogram", REMEDY)
    if TARGET not in details.get("deployment_target", []):
        raise ConversionError(f"the package's spec version {details.get('spec_version')} is not {TARGET}'s "
                              f"(it targets {', '.join(details.get('deployment_target') or ['nothing known'])})",
                              REMEDY)
    signature = {kind: [_matched(kind, src, got) for src, got in _paired(kind, source[kind], package[kind])]
                 for kind in ("inputs", "outputs")}
    if not details.get("ops"):
        raise ConversionError("the Core ML program holds no operation", REMEDY)
    _check_precision(details, fp16)
    return {"reloaded": f"coremltools {details.get('coremltools_version') or '?'} MLModel(skip_model_load=True)",
            "spec_version": details["spec_version"], "model_type": details["model_type"], "opset": details["opset"],
            "deployment_target": details["deployment_target"], **signature, "ops": details["ops"],
            "op_count": sum(details["ops"].values()),
            **{key: details.get(key) for key in ("compute_precision", "compute_types", "const_types", "casts")}}


def _paired(kind: str, source: list, package: list) -> list:
    if len(source) != len(package):
        raise ConversionError(f"the source has {len(source)} {kind} ({', '.join(t['name'] for t in source)}), the "
                              f"package {len(package)} ({', '.join(t['name'] for t in package)})", REMEDY)
    return list(zip(source, package))


def _matched(kind: str, src: dict, got: dict) -> dict:
    """One tensor's name, shape and dtype in the package against the source's; ConversionError when they differ
    (a name only as coremltools sanitises names, a dim the package leaves flexible, int64 as int32 pass)."""
    what = f"{kind[:-1]} {src['name']!r}"
    if got["name"] != src["name"] and normalised_name(got["name"]) != normalised_name(src["name"]):
        raise ConversionError(f"{what} is named {got['name']!r} in the package", REMEDY)
    want, have = list(src["shape"]), list(got["shape"])
    if len(want) != len(have) or any(w is not None and h is not None and w != h for w, h in zip(want, have)):
        raise ConversionError(f"{what} has shape {_dims(have)} in the package, {_dims(want)} in the source", REMEDY)
    if got["dtype"] not in (src["dtype"], _COREML_DTYPE.get(src["dtype"])):
        raise ConversionError(f"{what} is {got['dtype']} in the package, {src['dtype']} in the source", REMEDY)
    return {"name": src["name"], "package_name": got["name"], "shape": have, "dtype": got["dtype"],
            "source_dtype": src["dtype"]}


def _dims(shape: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_precision(details: dict, fp16: bool) -> None:
    """fp16 asked: some op computes in float16; fp32: none does (coremltools' precision pass did what was asked)."""
    halves = (details.get("compute_types") or {}).get("float16", 0)
    if fp16 and not halves:
        raise ConversionError("--quantize fp16: no op of the package computes in float16", REMEDY)
    if not fp16 and halves:
        raise ConversionError(f"{halves} op(s) of the package compute in float16, though float32 was asked", REMEDY)


def static_notes(checks: dict) -> list:
    """The static checks in words (the route's notes: printed by export, kept in the manifest)."""
    def tensors(kind: str) -> str:
        return ", ".join(f"{t['name']} {_dims(t['shape'])} {t['dtype']}"
                         + (f" (package name {t['package_name']!r})" if t["package_name"] != t["name"] else "")
                         + (f" (source {t['source_dtype']}: Core ML has no int64)" if t["dtype"] != t["source_dtype"]
                            else "") for t in checks[kind])

    ops = checks["ops"]
    top = ", ".join(f"{op} ×{n}" for op, n in list(ops.items())[:8])
    more = f", … {len(ops) - 8} more kinds" if len(ops) > 8 else ""
    compute = ", ".join(f"{d} ×{n}" for d, n in (checks.get("compute_types") or {}).items()) or "none"
    consts = ", ".join(f"{d} ×{n}" for d, n in sorted((checks.get("const_types") or {}).items(),
                                                        key=lambda item: -item[1])) or "none"
    return [f"static checks ({checks['reloaded']}): Core ML spec {checks['spec_version']}, {checks['model_type']}, "
            f"opset {checks['opset']}, deployment target {' / '.join(checks['deployment_target'])}",
            f"signature matches the source: inputs {tensors('inputs')}; outputs {tensors('outputs')}",
            f"Core ML program: {checks['op_count']} ops ({top}{more}); compute precision "
            f"{checks.get('compute_precision')} (ops by output type: {compute}; {checks.get('casts', 0)} cast(s)); "
            f"constants (weights and attributes) {consts}"]
