"""ONNX -> quantized ONNX with ONNX Runtime's tools: fp16, dynamic int8, static int8 (QDQ).

Static QDQ is the int8 default for ONNX: ORT's dynamic int8 runs convolutions as
ConvInteger, which made a CNN ~13x slower here (FIELD-NOTES), so `dynamic` on a
conv-heavy graph comes with that warning.

A static int8 model that fails its preset is repaired by a bounded, logged search
(``deploykit.transforms.int8_repair``): other calibration methods, then only the weighted layers quantized,
then the layers where ``deploykit.checking.locate`` measured the error growing most kept in float.
"""
from __future__ import annotations

from pathlib import Path

from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError, Outcome
from deploykit.frameworks import import_onnxruntime
from deploykit.quiet import captured_output

MODES = ("fp16", "dynamic", "int8")


def convert(model, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="deploykit-quantize-") as tmp:
        return _convert(_weights_as_initializers(model, Path(tmp)), out_path, options, check)


def _convert(model, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    with captured_output(echo=options.debug):   # ORT's quantizer logs advice on the root logger
        result = _quantize(model, out_path, options)
    try:
        return _accept(result, check, options)
    except ConversionError as exc:
        if options.quantize != "int8" or not options.repair or exc.outcome != Outcome.MISMATCH:
            raise
        failed = exc.details.get("parity") or {}
    from deploykit.transforms.int8_repair import repair

    with captured_output(echo=options.debug):
        repair(result, check, options, lambda settings: _quantize_static(model, out_path, options, settings),
               failed)
    result.artifact = None       # the file was quantized again: the checked artifact is read anew
    return _accept(result, check, options)


def _weights_as_initializers(model, folder: Path):
    """The source itself, or (when its weights sit in Constant nodes, as Paddle2ONNX writes them) a copy in
    ``folder`` with those weights as initializers: the only place ORT's quantizer looks for them."""
    import dataclasses

    import onnx

    from deploykit.transforms.onnx_rewrites import constants_as_initializers

    proto = onnx.load(model.path)
    if not constants_as_initializers(proto):
        return model
    prepared = folder / "weights-as-initializers.onnx"
    onnx.save(proto, str(prepared))
    return dataclasses.replace(model, path=str(prepared))


def _accept(result: ConversionResult, check: Check, options: ExportOptions) -> ConversionResult:
    return accept(result, check, options, "ort_quantization", f"ONNX Runtime {options.quantize} quantization",
                  "try another --quantize mode, or give representative --calibration data")


def _quantize(model, out_path: Path, options: ExportOptions) -> ConversionResult:
    import onnx

    onnxruntime = import_onnxruntime()

    mode = options.quantize
    result = ConversionResult(path=out_path, converter="onnx_quantize", tool=f"onnxruntime {onnxruntime.__version__} "
                              f"quantization ({mode})")
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        # keep_io_types inserts Casts at the graph's edges out of order; re-sort so the checker accepts it.
        half = OnnxModel(convert_float_to_float16(onnx.load(model.path), keep_io_types=True))
        half.topological_sort()
        onnx.save(half.model, str(out_path))
    elif mode == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(model.path, str(out_path), weight_type=QuantType.QInt8)
        if _conv_count(model.path) > 0:
            result.warnings.append("ORT dynamic int8 runs convolutions as ConvInteger, which was ~13x slower on a "
                                   "CNN here: prefer --quantize int8 (static QDQ) for conv nets")
    else:
        _quantize_static(model, out_path, options)
    return result


def _quantize_static(model, out_path: Path, options: ExportOptions, settings=None) -> None:
    """QDQ int8; ``settings`` (an int8_repair.Settings) picks the calibration method, the op types quantized and
    the nodes kept in float."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    feeds = options.calibration_feeds(model)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    # U8 activations (post-ReLU values are non-negative, asymmetric ranges fit them), S8 per-channel weights.
    chosen = {}
    if settings is not None:
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}
        chosen = {"calibrate_method": methods[settings.method], "nodes_to_exclude": list(settings.float_nodes)}
        if settings.op_types:
            chosen["op_types_to_quantize"] = list(settings.op_types)
    quantize_static(model.path, str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **chosen)


def _conv_count(path: str) -> int:
    import onnx

    return sum(1 for node in onnx.load(path, load_external_data=False).graph.node if node.op_type == "Conv")
