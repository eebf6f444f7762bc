"""Keras / SavedModel -> ONNX with tf2onnx.

Keras models convert in-process through tf2onnx's Python API (TensorFlow is already loaded;
~0.3 s); SavedModel directories go through tf2onnx's own command-line logic (signature defs,
tags) run in a child of the one harness, under --timeout. tf2onnx keeps the NHWC layout (it adds transposes inside), so no permutation
is recorded. It can "succeed" with ops ONNX Runtime refuses, which the check catches.
"""
from __future__ import annotations

from pathlib import Path

from deploykit.child import CONVERT, run_child
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.model import LoadedModel
from deploykit.quiet import captured_output
from deploykit.text import one_line

DEFAULT_OPSET = 17


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    import tf2onnx

    opset = options.opset or DEFAULT_OPSET
    result = ConversionResult(path=out_path, converter="keras_to_onnx", tool=f"tf2onnx {tf2onnx.__version__} "
                              f"opset {opset}")
    if model.format == Format.SAVED_MODEL:
        _convert_saved_model(model.path, out_path, opset, options)
    else:
        _convert_keras(model, out_path, opset, options)
    return accept(result, check, options, "tf2onnx", "tf2onnx",
                  "it may contain ops ONNX Runtime lacks; try another --opset, or --to tflite")


def _convert_keras(model: LoadedModel, out_path: Path, opset: int, options: ExportOptions) -> None:
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec([None if isinstance(d, str) else d for d in t.shape], tf.as_dtype(t.dtype), name=t.name)
                 for t in model.spec.inputs]
    try:
        with captured_output(echo=options.debug):
            tf2onnx.convert.from_keras(model.handle, input_signature=signature, opset=opset,
                                       output_path=str(out_path))
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"tf2onnx failed: {one_line(str(exc))}",
                              "run with --debug for its log; try --to tflite") from None


def _convert_saved_model(path: str, out_path: Path, opset: int, options: ExportOptions) -> None:
    run_child("converters.keras_to_onnx:saved_model_job", {"saved_model": path, "out": str(out_path), "opset": opset},
              stage=CONVERT, what="tf2onnx", timeout=options.timeout, debug=options.debug)


def saved_model_job(request: dict, arrays: dict) -> dict:
    """Child side: tf2onnx's command-line entry point, in this process (it exits; its code decides)."""
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tf2onnx import convert

    sys.argv = ["tf2onnx.convert", "--saved-model", request["saved_model"], "--output", request["out"],
                "--opset", str(request["opset"])]
    try:
        convert.main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise ConversionError(f"tf2onnx failed on {request['saved_model']} (exit {exc.code})",
                                  "run with --debug for its log") from None
    if not Path(request["out"]).exists():
        raise ConversionError(f"tf2onnx wrote no model for {request['saved_model']}", "run with --debug for its log")
    return {}
