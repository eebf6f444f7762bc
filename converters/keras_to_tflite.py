"""Keras / SavedModel -> TFLite with TensorFlow's TFLiteConverter.

Runs in the command's reused child (deploykit.child), where the Keras source is already loaded
for its description and reference outputs: the CLI process never deserializes a Keras file, and
TensorFlow is imported once per command. The layout is unchanged (Keras and TFLite are both channels-last).

Full int8 that fails its preset or does not run (a transformer's attention DIV aborts in LiteRT's int8 kernel)
is repaired by deploykit.transforms.int8_repair through TensorFlow's QuantizationDebugger: unweighted ops in float first,
then the layers --locate measures adding the most error (denylisted_nodes).
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

    repair(result, check, options, lambda settings: _convert(model, out_path, options, calibration, settings),
           failed, methods=())
    result.artifact = None       # converted again: the checked artifact is read anew
    return _accept(result, check, options)


REPAIRABLE = (Outcome.MISMATCH, Outcome.ARTIFACT_LOAD_FAILED, Outcome.ARTIFACT_RUN_FAILED)


def _accept(result: ConversionResult, check: Check, options: ExportOptions) -> ConversionResult:
    return accept(result, check, options, "tflite_converter", "TFLiteConverter",
                  "run deploykit verify --debug on the artifact, or try --via onnx")


def _convert(model: LoadedModel, out_path: Path, options: ExportOptions, calibration, settings=None) -> str:
    """Write the flatbuffer at ``out_path`` in the command's reused child, where the Keras model is loaded (the
    converter needs the live model; TensorFlow's loader may abort on a crafted file). Returns the tool."""
    request = {"source": model.path, "format": model.format.value, "load": (model.load or LoadOptions()).to_dict(),
               "out": str(out_path), "quantize": options.quantize, "io_dtype": options.io_dtype,
               "debug": options.debug, "op_types": bool(settings and settings.op_types),
               "float_nodes": list(settings.float_nodes) if settings else []}
    return run_child("converters.keras_to_tflite:job", request, arrays=calibration, stage=CONVERT,
                     what="TFLiteConverter", timeout=options.timeout, debug=options.debug, reuse=True).info["tool"]


def job(request: dict, arrays: dict) -> dict:
    """Child side: the source (loaded by an earlier job of the command, or now), converted and written."""
    from deploykit.model import load_model

    tf = import_tensorflow()
    model = load_model(request["source"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    feeds = unpack_samples(arrays) if arrays else []
    Path(request["out"]).write_bytes(_flatbuffer(tf, model, request, feeds))
    return {"tool": f"TFLiteConverter tf {tf.__version__}"}


def _flatbuffer(tf, model: LoadedModel, request: dict, feeds: list) -> bytes:
    """The flatbuffer; with int8-repair settings (``op_types``, ``float_nodes``) TensorFlow's
    QuantizationDebugger keeps the unweighted ops and the named layers in float."""
    try:
        with captured_output(echo=request["debug"]):
            if model.format == Format.SAVED_MODEL:
                converter = tf.lite.TFLiteConverter.from_saved_model(model.path)
            else:
                converter = tf.lite.TFLiteConverter.from_keras_model(model.handle)
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
