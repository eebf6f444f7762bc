"""FLOPs of a model file, read from its graph: the multiply-accumulates of the ops that dominate the arithmetic
(convolutions, fully connected layers, matrix products; 2 FLOPs per MAC) and the precision they compute in.

One count for bench's FLOPs column (``deploykit.benchmark.flops``) and for the emulated ARM runs' time estimate
(``deploykit.emulation.estimate``). Shapes come from the file (ONNX shape inference; TFLite's stored tensor shapes,
read with LiteRT's own flatbuffer schema): nothing is run. A dynamic dim counts as 1.
"""
from __future__ import annotations

import functools
import math

QUANTIZED_ONNX_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DequantizeLinear"}


def onnx_flops(path: str) -> tuple:
    """(FLOPs per inference, "fp32" | "fp16" | "int8") of an .onnx file."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(path, load_external_data=False))
    graph = model.graph
    shapes = {v.name: [max(d.dim_value, 1) for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    macs = 0
    for node in graph.node:
        weight = shapes.get(node.input[1], []) if len(node.input) > 1 else []
        out = shapes.get(node.output[0], []) if node.output else []
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger") and len(weight) >= 3 and out:
            macs += math.prod(out) * math.prod(weight[1:])      # each output: Cin/groups × kernel MACs
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul") and out:
            first = shapes.get(node.input[0], [])
            macs += math.prod(out) * (first[-1] if first else 1)
    types = {i.data_type for i in graph.initializer}
    ops = {n.op_type for n in graph.node}
    precision = ("int8" if ops & QUANTIZED_ONNX_OPS else "fp16" if onnx.TensorProto.FLOAT16 in types else "fp32")
    return 2 * macs, precision


def tflite_flops(path: str) -> tuple:
    """(FLOPs per inference, "fp32" | "fp16" | "int8") of a .tflite file."""
    per_op, precision = tflite_op_flops(path)
    return sum(sum(ops) for ops in per_op), precision


def read_tflite(path: str):
    """The .tflite's flatbuffer as LiteRT's schema objects (``ModelT``), parsed once per file state: the readiness
    probe's FLOP counts, GPU verdicts, partitions and operator list all read it, and unpacking a large model (an LLM's
    weights) is the slow part. Callers only read it."""
    import os

    stat = os.stat(path)
    return _parsed_tflite(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _parsed_tflite(path: str, _mtime_ns: int, _size: int):
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as handle:
        return schema.ModelT.InitFromPackedBuf(bytearray(handle.read()), 0)


def tflite_op_flops(path: str) -> tuple:
    """([[FLOPs of each operator] for each subgraph], precision) of a .tflite file: the per-node counts the
    readiness tables weigh delegated nodes by."""
    from ai_edge_litert import schema_py_generated as schema

    model = read_tflite(path)
    ops = schema.BuiltinOperator
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes or []]
    per_graph, types = [], set()
    for graph in model.subgraphs or []:
        tensors = graph.tensors or []
        shapes = [[max(int(d), 1) for d in (t.shape if t.shape is not None else [])] for t in tensors]
        types |= {t.type for t in tensors}
        counts = []
        for op in graph.operators or []:
            inputs = [shapes[i] if i >= 0 else [] for i in (op.inputs if op.inputs is not None else [])]
            outputs = list(op.outputs if op.outputs is not None else [])
            counts.append(2 * _tflite_macs(codes[op.opcodeIndex], inputs, shapes[outputs[0]] if outputs else [], ops))
        per_graph.append(counts)
    kinds = schema.TensorType
    precision = ("int8" if types & {kinds.INT8, kinds.UINT8} else "fp16" if kinds.FLOAT16 in types else "fp32")
    return per_graph, precision


def _tflite_macs(code: int, inputs: list, out: list, ops) -> int:
    """Multiply-accumulates of one operator (weights in TFLite's [out, kh, kw, in] / [units, in] layouts)."""
    weight = inputs[1] if len(inputs) > 1 else []
    if code == ops.CONV_2D and len(weight) == 4:
        return math.prod(out) * math.prod(weight[1:])
    if code == ops.DEPTHWISE_CONV_2D and len(weight) == 4:
        return math.prod(out) * weight[1] * weight[2]
    if code in (ops.FULLY_CONNECTED, ops.BATCH_MATMUL) and inputs and inputs[0]:
        return math.prod(out) * (weight[-1] if code == ops.FULLY_CONNECTED and weight else inputs[0][-1])
    if code == ops.TRANSPOSE_CONV and len(inputs) > 2 and len(weight) == 4:
        return math.prod(inputs[2]) * math.prod(weight[:3])
    return 0
