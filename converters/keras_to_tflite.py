"""Keras / SavedModel -> TFLite with TensorFlow's TFLiteConverter.

Runs in-process: TensorFlow is already loaded for the Keras source, and the converter is
TensorFlow's own, so a child process would only add a second 5 s TensorFlow import.
The layout is unchanged (Keras and TFLite are both channels-last).
"""
from __future__ import annotations

from pathlib import Path

from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.frameworks import import_tensorflow
from deploykit.model import LoadedModel
from deploykit.quiet import captured_output
from deploykit.text import one_line


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    tf = import_tensorflow()
    result = ConversionResult(path=out_path, converter="keras_to_tflite", tool=f"TFLiteConverter tf {tf.__version__}")
    try:
        with captured_output(echo=options.debug):
            if model.format == Format.SAVED_MODEL:
                converter = tf.lite.TFLiteConverter.from_saved_model(model.path)
            else:
                converter = tf.lite.TFLiteConverter.from_keras_model(model.handle)
            _configure_quantization(tf, converter, model, options, result)
            flatbuffer = converter.convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises ConverterError and others
        raise ConversionError(f"TFLiteConverter failed: {one_line(str(exc))}",
                              "ops outside the TFLite builtin set need SELECT_TF_OPS; try --to onnx") from None
    out_path.write_bytes(flatbuffer)
    if options.quantize:
        result.notes.append(f"quantized: {options.quantize}" + (", int8 inputs/outputs" if options.quantize == "int8"
                                                                and options.io_dtype == "int8" else ""))
    return accept(result, check, options, "tflite_converter", "TFLiteConverter",
                  "run deploykit verify --debug on the artifact, or try --via onnx")


def _configure_quantization(tf, converter, model: LoadedModel, options: ExportOptions, result) -> None:
    """fp16 weights, dynamic-range int8 weights, or full integer int8 with a representative dataset."""
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
