"""Keras / SavedModel -> TFLite with TensorFlow's TFLiteConverter.

Runs in-process: TensorFlow is already loaded for the Keras source, and the converter is
TensorFlow's own, so a child process would only add a second 5 s TensorFlow import.
The layout is unchanged (Keras and TFLite are both channels-last).

Full int8 that fails its preset or does not run (a transformer's attention DIV aborts in LiteRT's int8 kernel)
is repaired by deploykit.transforms.int8_repair through TensorFlow's QuantizationDebugger: unweighted ops in float first,
then the layers --locate measures adding the most error (denylisted_nodes).
"""
from __future__ import annotations

from pathlib import Path

from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError, Outcome
from deploykit.formats import Format
from deploykit.frameworks import import_tensorflow
from deploykit.model import LoadedModel
from deploykit.quiet import captured_output
from deploykit.text import one_line


# Ops a "weighted layers only" int8 model keeps in float (TFLite names; QuantizationDebugger's denylisted_ops):
# the attention's DIV and SOFTMAX, LayerNorm's MEAN/RSQRT, GELU, the residual ADDs.
UNWEIGHTED_OPS = ("ADD", "SUB", "MUL", "DIV", "SOFTMAX", "LOG_SOFTMAX", "MEAN", "SUM", "RSQRT", "SQRT", "POW",
                  "SQUARED_DIFFERENCE", "EXP", "TANH", "LOGISTIC", "GELU", "HARD_SWISH", "BATCH_MATMUL", "REDUCE_MAX")


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    tf = import_tensorflow()
    result = ConversionResult(path=out_path, converter="keras_to_tflite", tool=f"TFLiteConverter tf {tf.__version__}")
    out_path.write_bytes(_convert(tf, model, options, result))
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

    repair(result, check, options, lambda settings: out_path.write_bytes(_convert(tf, model, options, result, settings)),
           failed, methods=())
    result.artifact = None       # converted again: the checked artifact is read anew
    return _accept(result, check, options)


REPAIRABLE = (Outcome.MISMATCH, Outcome.ARTIFACT_LOAD_FAILED, Outcome.ARTIFACT_RUN_FAILED)


def _accept(result: ConversionResult, check: Check, options: ExportOptions) -> ConversionResult:
    return accept(result, check, options, "tflite_converter", "TFLiteConverter",
                  "run deploykit verify --debug on the artifact, or try --via onnx")


def _convert(tf, model: LoadedModel, options: ExportOptions, result, settings=None) -> bytes:
    """The flatbuffer; with int8-repair ``settings`` (deploykit.transforms.int8_repair.Settings) TensorFlow's
    QuantizationDebugger keeps the unweighted ops and the named layers in float."""
    try:
        with captured_output(echo=options.debug):
            if model.format == Format.SAVED_MODEL:
                converter = tf.lite.TFLiteConverter.from_saved_model(model.path)
            else:
                converter = tf.lite.TFLiteConverter.from_keras_model(model.handle)
            representative = _configure_quantization(tf, converter, model, options, result)
            if settings is None or not (settings.op_types or settings.float_nodes):
                return converter.convert()
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
            debug_options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(UNWEIGHTED_OPS) if settings.op_types else None,
                denylisted_nodes=list(settings.float_nodes) or None)
            # The debugger feeds its samples by signature input name (the converter takes them by position).
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=lambda: (dict(zip(model.spec.input_names, sample))
                                                            for sample in representative()),
                debug_options=debug_options)
            return debugger.get_nondebug_quantized_model()
    except Exception as exc:  # noqa: BLE001 - the converter raises ConverterError and others
        raise ConversionError(f"TFLiteConverter failed: {one_line(str(exc))}",
                              "ops outside the TFLite builtin set need SELECT_TF_OPS; try --to onnx") from None


def _configure_quantization(tf, converter, model: LoadedModel, options: ExportOptions, result):
    """fp16 weights, dynamic-range int8 weights, or full integer int8 with a representative dataset (returned)."""
    mode = options.quantize
    if not mode:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        feeds = options.calibration_feeds(model)
        names = model.spec.input_names

        def representative():
            for feed in feeds:
                yield [feed[name] for name in names]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if options.io_dtype == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return representative
    return None
