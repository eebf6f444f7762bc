"""How long an emulated run will take, before it starts: refuse one that cannot finish within ``--timeout``.

Emulated time grows with the arithmetic, so the estimate counts the multiply-accumulates of the ops that
dominate it (convolutions, fully connected layers, matrix products: 2 FLOPs per MAC) straight from the model
file — ``deploykit.benchmark.flops`` sits above this layer, and loading a model to count would itself be slow —
and divides them by the rate measured under qemu on this project's samples (docs/arm.md). It is an order of
magnitude, not a timing: it only decides whether a run is hopeless, and it is named again if a run times out.
"""
from __future__ import annotations

import math
from typing import Optional

from deploykit.emulation.cores import core as core_named
from deploykit.errors import UsageError
from deploykit.formats import Format

# Emulated FLOP/s on one thread of this host class (qemu 7.2, x86-64): MobileNetV2 fp32 ~3.5 s a call for 0.6
# GFLOP, two_layer_net ~30 ms a sample for 13 MFLOP; fp16 arithmetic (a core with FEAT_FP16) ~2.6x slower, int8
# XNNPACK ~9x faster than fp32 (FIELD-NOTES, third round). The lower figure of each is taken.
RATES = {"fp32": 150e6, "fp16": 60e6, "int8": 1.2e9}
START_S = 3.0           # qemu + the arm64 Python + importing the runtime, measured 1.9-3.4 s


def estimate(path: str, fmt: Format, samples: int, cpu: str) -> Optional[dict]:
    """{"seconds", "flops", "precision", "cpu"} for running ``samples`` inputs through the model on core ``cpu``,
    or None when the file cannot be counted here (no reader installed, an unreadable graph)."""
    try:
        counted = _tflite(path) if fmt == Format.TFLITE else _onnx(path) if fmt == Format.ONNX else None
    except Exception:           # an estimate never stops a run: a graph it cannot read is simply not counted
        return None
    if counted is None:
        return None
    flops, precision = counted
    chosen = core_named(cpu)
    if precision == "fp16" and not chosen.fp16_arithmetic:
        precision = "fp32"      # no fp16 arithmetic: the runtime computes in fp32 after dequantizing
    seconds = START_S + samples * flops / RATES[precision]
    return {"seconds": seconds, "flops": flops, "precision": precision, "cpu": chosen.name}


def refuse_if_too_slow(path: str, fmt: Format, samples: int, cpu: str, timeout: float) -> Optional[dict]:
    """The estimate (None when uncounted); UsageError when it exceeds ``timeout``.

    Exit 2, not 1: nothing was learnt about the artifact, the time limit the user gave is what cannot be met."""
    guess = estimate(path, fmt, samples, cpu)
    if guess is not None and guess["seconds"] > timeout:
        raise UsageError(f"running {samples} sample(s) would take about {describe(guess)} "
                         f"(limit --timeout {timeout:g} s)",
                         f"raise --timeout to {suggested_timeout(guess)}, or verify fewer --samples")
    return guess


def describe(guess: dict) -> str:
    """'41 s on the emulated cortex-a76 (1.2 GFLOP a sample, fp32)'."""
    return f"{math.ceil(guess['seconds']):g} s on the emulated {guess['cpu']} ({guess['flops'] / 1e9:.2g} GFLOP " \
           f"a sample, {guess['precision']})"


def suggested_timeout(guess: dict) -> int:
    # Twice the estimate: it is an order of magnitude, and a busy host emulates slower.
    return int(math.ceil(guess["seconds"] * 2 / 10) * 10)


def _onnx(path: str) -> tuple:
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(path, load_external_data=False))
    graph = model.graph
    shapes = {v.name: [max(d.dim_value, 1) for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    macs = 0
    for node in graph.node:
        weight, out = (shapes.get(node.input[1], []) if len(node.input) > 1 else []), shapes.get(node.output[0], [])
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger") and len(weight) >= 3:
            macs += math.prod(out) * math.prod(weight[1:])
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
            first = shapes.get(node.input[0], [])
            macs += math.prod(out) * (first[-1] if first else 1)
    types = {i.data_type for i in graph.initializer}
    ops = {n.op_type for n in graph.node}
    precision = ("int8" if ops & {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DequantizeLinear"}
                 else "fp16" if onnx.TensorProto.FLOAT16 in types else "fp32")
    return 2 * macs, precision


# TFLite's schema (tensorflow/compiler/mlir/lite/schema/schema.fbs), read with the flatbuffers library alone so the
# host needs no LiteRT for an ARM run: builtin operator codes and tensor types used here.
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, BATCH_MATMUL = 3, 4, 9, 67, 126
FLOAT16, INT8, UINT8 = 1, 9, 3


def _tflite(path: str) -> tuple:
    from flatbuffers import encode, number_types, packer, table

    buffer = bytearray(open(path, "rb").read())

    def slot(tab, index):
        return tab.Offset(4 + 2 * index)

    def tables(tab, index):
        offset = slot(tab, index)
        if not offset:
            return []
        start = tab.Vector(offset)
        return [table.Table(buffer, tab.Indirect(start + 4 * i)) for i in range(tab.VectorLen(offset))]

    def ints(tab, index):
        offset = slot(tab, index)
        if not offset:
            return []
        start = tab.Vector(offset)
        return [tab.Get(number_types.Int32Flags, start + 4 * i) for i in range(tab.VectorLen(offset))]

    def scalar(tab, index, flags):
        offset = slot(tab, index)
        return tab.Get(flags, offset + tab.Pos) if offset else 0

    model = table.Table(buffer, encode.Get(packer.uoffset, buffer, 0))
    codes = [max(scalar(c, 0, number_types.Int8Flags), scalar(c, 3, number_types.Int32Flags))
             for c in tables(model, 1)]                       # deprecated_builtin_code, builtin_code
    macs, types = 0, set()
    for graph in tables(model, 2):
        tensors = tables(graph, 0)
        shapes = [[max(d, 1) for d in ints(t, 0)] for t in tensors]
        types |= {scalar(t, 1, number_types.Uint8Flags) for t in tensors}
        for op in tables(graph, 3):
            code = codes[scalar(op, 0, number_types.Uint32Flags)]
            inputs, outputs = ints(op, 1), ints(op, 2)
            macs += _tflite_macs(code, [shapes[i] if i >= 0 else [] for i in inputs],
                                 shapes[outputs[0]] if outputs else [])
    precision = "int8" if types & {INT8, UINT8} else "fp16" if FLOAT16 in types else "fp32"
    return 2 * macs, precision


def _tflite_macs(code: int, inputs: list, out: list) -> int:
    """Multiply-accumulates of one operator (weights in TFLite's [out, kh, kw, in] / [units, in] layouts)."""
    if code == CONV_2D and len(inputs) > 1 and len(inputs[1]) == 4:
        return math.prod(out) * math.prod(inputs[1][1:])
    if code == DEPTHWISE_CONV_2D and len(inputs) > 1 and len(inputs[1]) == 4:
        return math.prod(out) * inputs[1][1] * inputs[1][2]
    if code in (FULLY_CONNECTED, BATCH_MATMUL) and inputs and inputs[0]:
        return math.prod(out) * (inputs[1][-1] if code == FULLY_CONNECTED and len(inputs) > 1 and inputs[1]
                                 else inputs[0][-1])
    if code == TRANSPOSE_CONV and len(inputs) > 2 and len(inputs[1]) == 4:
        return math.prod(inputs[2]) * math.prod(inputs[1][:3])
    return 0
