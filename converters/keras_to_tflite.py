"""Keras / SavedModel -> TFLite with TensorFlow's TFLiteConverter.

Runs in the command's reused child (deploykit.child), where the Keras source is already loaded
for its description and reference outputs: the CLI process never deserializes a Keras file, and
TensorFlow is imported once per command. The layout is unchanged (Keras and TFLite are both channels-last).

Full int8 that fails its preset or does not run (a transformer's attention DIV aborts in LiteRT's int8 kernel)
is repaired by deploykit.transforms.int8_repair: first the whole model in 16x8 (int16 activations, int8 weights; see
_flatbuffer_16x8 for why ai-edge-quantizer writes it, not TFLiteConverter), then through TensorFlow's
QuantizationDebugger: unweighted ops in float, then the layers --locate measures adding the most error
(denylisted_nodes).
"""
from __future__ import annotations

from pathlib import Path

from deploykit.child import CONVERT, pack_samples, run_child, unpack_samples
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError, Outcome
from deploykit.formats import Format
from deploykit.frameworks import import_tensorflow
from deploykit.model import LoadedModel, LoadOptions
from deploykit.quiet import captured_output
from deploykit.text import one_line


# Ops a "weighted layers only" int8 model keeps in float (TFLite names; QuantizationDebugger's denylisted_ops):
# the attention's DIV and SOFTMAX, LayerNorm's MEAN/RSQRT, GELU, the residual ADDs.
UNWEIGHTED_OPS = ("ADD", "SUB", "MUL", "DIV", "SOFTMAX", "LOG_SOFTMAX", "MEAN", "SUM", "RSQRT", "SQRT", "POW",
                  "SQUARED_DIFFERENCE", "EXP", "TANH", "LOGISTIC", "GELU", "HARD_SWISH", "BATCH_MATMUL", "REDUCE_MAX")


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    calibration = pack_samples(options.calibration_feeds(model)) if options.quantize == "int8" else None
    tool = _convert(model, out_path, options, calibration)
    result = ConversionResult(path=out_path, converter="keras_to_tflite", tool=tool)
    if options.quantize:
        result.notes.append(f"quantized: {options.quantize}" + (", int8 inputs/outputs" if options.quantize == "int8"
                                                                and options.io_dtype == "int8" else ""))
    try:
        return _accept(result, check, options)
    except ConversionError as exc:
        if options.quantize != "int8" or not options.repair or exc.outcome not in REPAIRABLE:
            raise
        failed = exc.details.get("parity") or {}
    from deploykit.transforms.int8_repair import repair

    written = {}        # the last quantization's child info: the file left in place is the last one written

    def quantize(settings):
        written.clear()     # an int8 file after a 16x8 one has no precisions line
        written.update(_convert(model, out_path, options, calibration, settings, info=True))

    # 16x8 keeps float inputs and outputs: not a candidate when the user asked for int8 ones
    repair(result, check, options, quantize, failed, methods=(), sixteen_by_eight=options.io_dtype != "int8")
    result.tool = written.get("tool", result.tool)      # the file in place may be ai-edge-quantizer's
    if written.get("precisions"):
        result.notes.append(written["precisions"])
    result.artifact = None       # converted again: the checked artifact is read anew
    return _accept(result, check, options)


REPAIRABLE = (Outcome.MISMATCH, Outcome.ARTIFACT_LOAD_FAILED, Outcome.ARTIFACT_RUN_FAILED)


def _accept(result: ConversionResult, check: Check, options: ExportOptions) -> ConversionResult:
    return accept(result, check, options, "tflite_converter", "TFLiteConverter",
                  "run deploykit verify --debug on the artifact, or try --via onnx")


def _convert(model: LoadedModel, out_path: Path, options: ExportOptions, calibration, settings=None, info=False):
    """Write the flatbuffer at ``out_path`` in the command's reused child, where the Keras model is loaded (the
    converter needs the live model; TensorFlow's loader may abort on a crafted file). Returns the tool (``info``:
    the child's whole answer, with the 16x8 model's ``precisions`` line)."""
    request = {"source": model.path, "format": model.format.value, "load": (model.load or LoadOptions()).to_dict(),
               "out": str(out_path), "quantize": options.quantize, "io_dtype": options.io_dtype,
               "debug": options.debug, "op_types": bool(settings and settings.op_types),
               "float_nodes": list(settings.float_nodes) if settings else [],
               "activations": settings.activations if settings else "int8",
               "wide_nodes": list(settings.wide_nodes) if settings else []}
    answer = run_child("converters.keras_to_tflite:job", request, arrays=calibration, stage=CONVERT,
                       what="TFLiteConverter", timeout=options.timeout, debug=options.debug, reuse=True).info
    return answer if info else answer["tool"]


def job(request: dict, arrays: dict) -> dict:
    """Child side: the source (loaded by an earlier job of the command, or now), converted and written."""
    from deploykit.model import load_model

    tf = import_tensorflow()
    model = load_model(request["source"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    feeds = unpack_samples(arrays) if arrays else []
    if request.get("activations") in ("int16", "mixed"):
        data, answer = _flatbuffer_16x8(tf, _float_converter(tf, model), model.spec.input_names, feeds, request)
    else:
        data, answer = _flatbuffer(tf, model, request, feeds), {"tool": f"TFLiteConverter tf {tf.__version__}"}
    Path(request["out"]).write_bytes(data)
    return answer


def _flatbuffer(tf, model: LoadedModel, request: dict, feeds: list) -> bytes:
    """The flatbuffer; with int8-repair settings (``op_types``, ``float_nodes``) TensorFlow's
    QuantizationDebugger keeps the unweighted ops and the named layers in float."""
    try:
        with captured_output(echo=request["debug"]):
            converter = _float_converter(tf, model)
            representative = _configure_quantization(tf, converter, model, request, feeds)
            if not (request["op_types"] or request["float_nodes"]):
                return converter.convert()
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
            debug_options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(UNWEIGHTED_OPS) if request["op_types"] else None,
                denylisted_nodes=list(request["float_nodes"]) or None)
            # The debugger feeds its samples by signature input name (the converter takes them by position).
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=lambda: (dict(zip(model.spec.input_names, sample))
                                                            for sample in representative()),
                debug_options=debug_options)
            return debugger.get_nondebug_quantized_model()
    except Exception as exc:  # noqa: BLE001 - the converter raises ConverterError and others
        raise ConversionError(f"TFLiteConverter failed: {one_line(str(exc))}",
                              "ops outside the TFLite builtin set need SELECT_TF_OPS; try --to onnx") from None


def _float_converter(tf, model: LoadedModel):
    """A TFLiteConverter of the source, not yet told to quantize."""
    if model.format == Format.SAVED_MODEL:
        return tf.lite.TFLiteConverter.from_saved_model(model.path)
    return tf.lite.TFLiteConverter.from_keras_model(model.handle)


def _configure_quantization(tf, converter, model: LoadedModel, request: dict, feeds: list):
    """fp16 weights, dynamic-range int8 weights, or full integer int8 with a representative dataset (returned)."""
    mode = request["quantize"]
    if not mode:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        names = model.spec.input_names

        def representative():
            for feed in feeds:
                yield [feed[name] for name in names]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if request["io_dtype"] == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return representative
    return None


# Ops whose int8 tables are weights (an embedding's rows): int8 storage keeps the file int8-sized; their output is
# requantized to int16 for the next op.
TABLE_OPS = ("GATHER",)          # EMBEDDING_LOOKUP: ai-edge-quantizer 0.10 has no int8 recipe for it
# The weighted ops a "mixed" model runs in int8 (XNNPACK's fast kernels), unless named in wide_nodes.
WEIGHTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
# A float value no integer scale can hold beside ordinary ones: float32's lowest (HuggingFace's attention-mask
# fill, -3.4e38) or a stand-in for -inf. A tensor holding one would take a scale that rounds every real score to 0.
SENTINEL = 1e30


def _flatbuffer_16x8(tf, converter, input_names: list, feeds: list, request: dict) -> tuple:
    """16x8: int16 activations, int8 weights, written by ai-edge-quantizer from the float flatbuffer.

    Why not TFLiteConverter (TF 2.21): its 16x8 mode (EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8)
    runs the deprecated calibrate-and-quantize pass for the whole model, with no denylist, and it tries to quantize
    integer index arithmetic (a BERT's int64 input_ids: "Max and min for dynamic tensors should be recorded");
    the MLIR quantizer the QuantizationDebugger uses takes one activation type, and at int16 it fails to verify a
    binary op with a constant operand (LayerNorm's mul). ai-edge-quantizer takes a recipe per op: 16x8 by default,
    tables (TABLE_OPS) int8, ops touching a SENTINEL value and ``float_nodes`` float.
    Returns the flatbuffer and the child's answer (``precisions``: which ops run 16x8, int8, float)."""
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError:
        raise ConversionError("16x8 quantization needs ai-edge-quantizer, which is not installed",
                              "pip install ai-edge-quantizer") from None
    with captured_output(echo=request["debug"]):
        float_model, calibration, sentinels = _calibrated(converter, input_names, feeds, request)
        engine = quantizer.Quantizer(float_model, recipe.static_wi8_ai16())
        _recipe_16x8(engine, sentinels | set(request["float_nodes"]), request)
        data = bytes(engine.quantize(calibration, enable_progress_report=False).quantized_model)
    from importlib.metadata import version

    tool = f"ai-edge-quantizer {version('ai-edge-quantizer')} 16x8 on TFLiteConverter tf {tf.__version__}"
    return data, {"tool": tool, "precisions": _precisions(data)}


_CALIBRATED = {}     # (source, samples' digest) -> (float model, calibration, sentinel ops): once per child


def _calibrated(converter, input_names: list, feeds: list, request: dict) -> tuple:
    """The float flatbuffer, ai-edge-quantizer's calibration of every tensor (what any recipe needs) and the ops
    touching a SENTINEL value — computed once per source in the reused child, so each repair attempt only requantizes."""
    from ai_edge_quantizer import quantizer, recipe

    import hashlib

    digest = hashlib.sha256(b"".join(feed[name].tobytes() for feed in feeds for name in input_names)).hexdigest()
    key = (request["source"], digest)
    if key not in _CALIBRATED:
        float_model = converter.convert()
        samples = [dict(zip(input_names, (feed[name] for name in input_names))) for feed in feeds]
        engine = quantizer.Quantizer(float_model, recipe.static_wi8_ai16())
        calibration = engine.calibrate({_signature_key(float_model): samples}, num_threads=2)
        _CALIBRATED.clear()
        _CALIBRATED[key] = float_model, calibration, _sentinel_ops(float_model, samples[:4])
    return _CALIBRATED[key]


def _recipe_16x8(engine, floated: set, request: dict) -> None:
    """16x8 everywhere (the loaded recipe), int8 tables, for a "mixed" model the weighted ops int8 but the
    ``wide_nodes``, the named ops float (later rules win in the recipe)."""
    import re

    from ai_edge_quantizer import qtyping

    names = qtyping.TFLOperationName
    for op in TABLE_OPS + (WEIGHTED_OPS if request["activations"] == "mixed" else ()):
        engine.add_static_config(".*", getattr(names, op), 8, 8)
    for node in sorted(set(request["wide_nodes"]) - floated):    # weighted ops only: a table stays int8 (size)
        for op in WEIGHTED_OPS:
            engine.add_static_config(f"^{re.escape(node)};$", getattr(names, op), 16, 8)
    for boundary in (names.INPUT, names.OUTPUT):    # float inputs and outputs, as plain int8 has them here
        engine.update_quantization_recipe(regex=".*", operation_name=boundary, algorithm_key="no_quantize")
    for node in sorted(floated):      # an op's scope is its output names joined by ";", with a trailing ";"
        engine.update_quantization_recipe(regex=f"^{re.escape(node)};$", operation_name=names.ALL_SUPPORTED,
                                          algorithm_key="no_quantize")


def _signature_key(float_model: bytes) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return next(iter(Interpreter(model_content=float_model).get_signature_list()), "serving_default")


def _sentinel_ops(float_model: bytes, samples: list) -> set:
    """The ops (by output names, as the quantizer scopes them) that read or write a SENTINEL value on the samples:
    they stay float. The range is measured here, on every tensor, because the quantizer's calibration drops such
    values from its min/max, and the quantized mask would then be 0 — the padding would be attended to."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=float_model, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    runner, tensors, huge = interpreter.get_signature_runner(), interpreter.get_tensor_details(), set()
    for sample in samples:
        runner(**sample)
        for tensor in tensors:
            try:
                value = interpreter.get_tensor(tensor["index"])
            except ValueError:      # a tensor freed or never written
                continue
            if value.dtype.kind == "f" and value.size and float(np.abs(value).max()) >= SENTINEL:
                huge.add(tensor["index"])
    names = {t["index"]: t["name"] for t in tensors}
    return {";".join(names[i] for i in op["outputs"]) for op in interpreter._get_ops_details()   # noqa: SLF001
            if huge & set(op["inputs"]) | huge & set(op["outputs"])}


def _precisions(data: bytes) -> str:
    """One line: how many ops of each type run 16x8, int8 or float in the written file (by their output dtype;
    QUANTIZE/DEQUANTIZE and integer index arithmetic are left out), the float ones by name up to 12."""
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=data,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    kinds = {"int16": "16x8", "int8": "int8", "float32": "float"}
    counts, floats = {kind: Counter() for kind in kinds.values()}, []
    for op in interpreter._get_ops_details():   # noqa: SLF001 - LiteRT's public API lists tensors, not ops
        outputs = [tensors[i] for i in op["outputs"] if i >= 0]
        kind = kinds.get(outputs[0]["dtype"].__name__) if outputs else None
        if kind is None or op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        counts[kind][op["op_name"]] += 1
        if kind == "float":
            floats.append(outputs[0]["name"])
    parts = [f"{kind}: {sum(c.values())} op(s) ({', '.join(f'{op} ×{n}' for op, n in c.most_common())})"
             for kind, c in counts.items() if c]
    named = f"; float ops: {', '.join(floats[:12])}{' …' if len(floats) > 12 else ''}" if floats else ""
    return "layers by precision — " + "; ".join(parts) + named
