"""TFLite -> ONNX with tf2onnx's TFLite reader, in a child process.

tf2onnx can leave TFLite-only fused ops in the graph, or exit 0 after logging "Unsupported
ops"; the check loads and runs the result in ONNX Runtime, so such a file is a failed
conversion, never a success. The layout is the TFLite file's own.
"""
from __future__ import annotations

from pathlib import Path

from deploykit.child import CONVERT, run_child
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.model import LoadedModel

DEFAULT_OPSET = 17


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    payload = {"tflite": model.path, "out": str(out_path), "opset": options.opset or DEFAULT_OPSET}
    info = run_child("converters.tflite_to_onnx:job", payload, stage=CONVERT, what="tf2onnx", timeout=options.timeout,
                     debug=options.debug).info
    result = ConversionResult(path=out_path, converter="tflite_to_onnx", tool=info["tool"])
    return accept(result, check, options, "tf2onnx", "tf2onnx (from TFLite)",
                  "the TFLite file may use fused TFLite-only ops; convert from the original model instead")


def job(payload: dict, arrays: dict) -> dict:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf2onnx

    tf2onnx.convert.from_tflite(payload["tflite"], opset=payload["opset"], output_path=payload["out"])
    return {"tool": f"tf2onnx {tf2onnx.__version__} (from TFLite) opset {payload['opset']}"}
