"""Keras / SavedModel -> ONNX with tf2onnx.

Keras models convert through tf2onnx's Python API in the command's reused child, where the model
is already loaded for its description (~0.3 s there); SavedModel directories go through tf2onnx's
own command-line logic (signature defs, tags) run in a child of the one harness, under --timeout.
tf2onnx keeps the NHWC layout (it adds transposes inside), so no permutation is recorded. It can
"succeed" with ops ONNX Runtime refuses, which the check catches.
"""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from deploykit.child import CONVERT, run_child
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.model import LoadedModel, LoadOptions
from deploykit.quiet import captured_output
from deploykit.text import one_line

DEFAULT_OPSET = 17


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    opset = options.opset or DEFAULT_OPSET
    # The version from the package's metadata: importing tf2onnx here would import TensorFlow in the CLI.
    result = ConversionResult(path=out_path, converter="keras_to_onnx", tool=f"tf2onnx {version('tf2onnx')} "
                              f"opset {opset}")
    if model.format == Format.SAVED_MODEL:
        _convert_saved_model(model.path, out_path, opset, options)
    else:
        request = {"source": model.path, "format": model.format.value, "out": str(out_path), "opset": opset,
                   "load": (model.load or LoadOptions()).to_dict(), "debug": options.debug}
        run_child("converters.keras_to_onnx:keras_job", request, stage=CONVERT, what="tf2onnx",
                  timeout=options.timeout, debug=options.debug, reuse=True)
    return accept(result, check, options, "tf2onnx", "tf2onnx",
                  "it may contain ops ONNX Runtime lacks; try another --opset, or --to tflite")


def keras_job(request: dict, arrays: dict) -> dict:
    """Child side (the command's reused child, where the Keras model is loaded): tf2onnx's Python API."""
    import tensorflow as tf
    import tf2onnx

    from deploykit.model import load_model

    model = load_model(request["source"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    signature = [tf.TensorSpec([None if isinstance(d, str) else d for d in t.shape], tf.as_dtype(t.dtype), name=t.name)
                 for t in model.spec.inputs]
    try:
        with captured_output(echo=request["debug"]):
            tf2onnx.convert.from_keras(model.handle, input_signature=signature, opset=request["opset"],
                                       output_path=request["out"])
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"tf2onnx failed: {one_line(str(exc))}",
                              "run with --debug for its log; try --to tflite") from None
    return {}


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
