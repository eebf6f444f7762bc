"""TFLite -> ONNX with tf2onnx's TFLite reader, in a child process.

tf2onnx can leave TFLite-only fused ops in the graph, or exit 0 after logging "Unsupported
ops"; the check loads and runs the result in ONNX Runtime, so such a file is a failed
conversion, never a success. The layout is the TFLite file's own.
"""
from __future__ import annotations

from pathlib import Path

from converters.base import Check, ConversionResult, ExportOptions
from converters.child import run_job
from deploykit.errors import ConversionError, DeploykitError
from deploykit.model import LoadedModel

DEFAULT_OPSET = 17


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    payload = {"tflite": model.path, "out": str(out_path), "opset": options.opset or DEFAULT_OPSET}
    info = run_job("converters.tflite_to_onnx:job", payload, options.timeout, options.debug)
    result = ConversionResult(path=out_path, converter="tflite_to_onnx", tool=info["tool"])
    try:
        report = check(out_path, options.samples)
    except DeploykitError as exc:
        raise ConversionError(f"tf2onnx wrote a model that ONNX Runtime cannot run: {exc.message}",
                              "the TFLite file may use fused TFLite-only ops; convert from the original model") from None
    result.attempts.append({"tool": "tf2onnx", "ok": report.passed, "why": report.summary()})
    result.parity = report
    if not report.passed:
        raise ConversionError("the ONNX model does not match the TFLite source: " + report.summary(),
                              "convert from the original model instead of the TFLite file")
    return result


def job(payload: dict) -> dict:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf2onnx

    tf2onnx.convert.from_tflite(payload["tflite"], opset=payload["opset"], output_path=payload["out"])
    return {"tool": f"tf2onnx {tf2onnx.__version__} (from TFLite) opset {payload['opset']}"}
