"""The precision a source model file itself computes in, read from the file: the tolerance preset its conversions
are judged with when no ``--precision`` is given.

A weight-quantized TFLite file runs hybrid kernels that quantize activations on the fly, so a faithful float copy
(ONNX, SavedModel) differs from it by int8 rounding (max_abs ~0.02, cosine ~0.9998): the fp32 preset would call a
correct conversion broken. Likewise a QDQ / integer-op ONNX file, and (at fp16 level) fp16 weights.

    source_precision(model)   # ("int8", "source is weight-quantized int8 (24 int8 constant tensor(s)): int8 preset")

Only the file is read (the flatbuffer through LiteRT's generated schema, the ONNX protobuf without external
weights), inside the functions: importing this module imports no framework.
"""
from __future__ import annotations

from collections import Counter

from deploykit.formats import Format

FP32 = ("fp32", "")
# ONNX ops that compute on (or dequantize from) integer values
_ONNX_INTEGER_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeLSTM",
                     "MatMulInteger", "ConvInteger", "MatMulNBits", "QLinearConv", "QLinearMatMul", "QGemm",
                     "QAttention", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
                     "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
                     "QLinearSoftmax", "GatherBlockQuantized"}
_ONNX_FP16_TYPES = {10: "float16", 16: "bfloat16"}


def source_precision(model) -> tuple:
    """(preset, why) for a loaded source model (anything with ``path`` and ``format``): ("fp32", "") unless the file
    itself is quantized. A file that cannot be read this way is taken as fp32 (its loader has already judged it)."""
    path, fmt = getattr(model, "path", None), getattr(model, "format", None)
    try:
        if fmt == Format.TFLITE and path:
            return tflite_precision(open(path, "rb").read())
        if fmt == Format.ONNX and path:
            from deploykit.onnx_io import read_onnx

            return onnx_precision(read_onnx(str(path)))
    except Exception:  # noqa: BLE001 - a reading failure must not fail the check: fp32 is the old behaviour
        return FP32
    return FP32


def tflite_precision(model_bytes: bytes) -> tuple:
    """(preset, why) of a .tflite flatbuffer: int8 activations (full integer) or int8 weights (dynamic range) → int8,
    float16 constants (DEQUANTIZE'd fp16 weights) → fp16."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(bytearray(model_bytes), 0)
    kinds = {schema.TensorType.INT8: "int8", schema.TensorType.UINT8: "uint8", schema.TensorType.INT16: "int16"}
    if hasattr(schema.TensorType, "INT4"):
        kinds[schema.TensorType.INT4] = "int4"
    weights, activations, halves = Counter(), Counter(), 0
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            constant = _has_data(root, tensor.Buffer())
            quantized = tensor.Quantization() is not None and tensor.Quantization().ScaleLength() > 0
            if tensor.Type() in kinds and quantized:
                (weights if constant else activations)[kinds[tensor.Type()]] += 1
            elif tensor.Type() == schema.TensorType.FLOAT16 and constant:
                halves += 1
    if activations:
        return "int8", f"source is full-integer quantized, activations {_counted(activations)}: int8 preset"
    if weights:
        return "int8", f"source is weight-quantized {_counted(weights)}: int8 preset"
    if halves:
        return "fp16", f"source has float16 weights ({halves} fp16 constant tensor(s)): fp16 preset"
    return FP32


def _has_data(root, index: int) -> bool:
    if index <= 0 or index >= root.BuffersLength():
        return False
    buffer = root.Buffers(index)
    return buffer.DataLength() > 0 or (buffer.Offset() or 0) > 1     # > 2 GB models keep data outside


def _counted(counts: Counter) -> str:
    """"int8 (24 tensor(s))" or "int8/int16 (30 tensor(s))"."""
    return f"{'/'.join(kind for kind, _n in counts.most_common())} ({sum(counts.values())} tensor(s))"


def onnx_precision(proto) -> tuple:
    """(preset, why) of an ONNX ModelProto: Q/DQ or integer ops (QDQ, MatMulInteger, ConvInteger, MatMulNBits,
    QLinear*) → int8, float16/bfloat16 initializers → fp16."""
    from deploykit.onnx_io import every_node

    ops = Counter(n.op_type for n in every_node(proto.graph) if n.op_type in _ONNX_INTEGER_OPS)
    if ops:
        shown = ", ".join(f"{op} ×{count}" for op, count in ops.most_common(3))
        return "int8", f"source is quantized ({shown}): int8 preset"
    halves = Counter(_ONNX_FP16_TYPES[t.data_type] for t in proto.graph.initializer if t.data_type in _ONNX_FP16_TYPES)
    if halves:
        shown = ", ".join(f"{kind} ×{count}" for kind, count in halves.most_common())
        return "fp16", f"source has half-precision weights ({shown} initializer(s)): fp16 preset"
    return FP32
