"""Keras / SavedModel -> ONNX with tf2onnx.

Keras models convert in-process through tf2onnx's Python API (TensorFlow is already loaded;
~0.3 s); SavedModel directories go through tf2onnx's command line in a child process with
the --timeout. tf2onnx keeps the NHWC layout (it adds transposes inside), so no permutation
is recorded. It can "succeed" with ops ONNX Runtime refuses, which the check catches.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from converters.base import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.model import LoadedModel
from deploykit.quiet import captured_output

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
        raise ConversionError(f"tf2onnx failed: {' '.join(str(exc).split())[:300]}",
                              "run with --debug for its log; try --to tflite") from None


def _convert_saved_model(path: str, out_path: Path, opset: int, options: ExportOptions) -> None:
    command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", path, "--output", str(out_path),
               "--opset", str(opset)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=options.timeout)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"tf2onnx did not finish within {options.timeout:.0f} s", "raise --timeout") from None
    if options.debug:
        sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out_path.exists():
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise ConversionError(f"tf2onnx failed on {path}: {tail[0][:300]}", "run with --debug for its log")
