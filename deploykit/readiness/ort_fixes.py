"""Rewrites that put an ONNX operator a mobile execution provider refuses into ops it takes, with the same values.

Each is applied by ``deploykit.readiness.onnx.checked_fixes`` to a copy and the checker re-run on it, so a hint that
says "CoreML NeuralNetwork then takes 100/100 nodes" was seen to, not assumed. ``hint`` names the rewrite for ops
deploykit cannot rewrite itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

HINTS = {
    "ReduceMean": "a mean over H and W of a 4-D tensor is GlobalAveragePool (deploykit checks this rewrite)",
    "HardSigmoid": "HardSigmoid(x) = Clip(alpha*x + beta, 0, 1) (deploykit checks this rewrite)",
    "HardSwish": "HardSwish(x) = x * Clip(x/6 + 0.5, 0, 1): export with the activation written out",
    "Identity": "drop Identity nodes (onnxslim removes them)",
    "Shape": "export with fixed input shapes (--input) so shape arithmetic folds to constants",
    "ConstantOfShape": "export with fixed input shapes so it folds to a constant",
    "Size": "export with fixed input shapes so it folds to a constant",
    "If": "export the branch the app uses (torch.export with static control flow)",
    "LSTM": "keep the recurrence on the CPU EP, or unroll it for a fixed sequence length",
    "Unsqueeze": "give axes as a constant initializer (opset >= 13 exporters do), or fold with fixed shapes",
    "Max": "Max(x, 0) is Relu (deploykit checks this rewrite); a Max of two tensors has no single-op equivalent",
    "DequantizeLinear": "the CoreML EPs run float graphs: ship the fp32/fp16 ONNX for CoreML, the QDQ int8 one for "
                        "NNAPI and the CPU EP",
    "QuantizeLinear": "the CoreML EPs run float graphs: ship the fp32/fp16 ONNX for CoreML, the QDQ int8 one for "
                      "NNAPI and the CPU EP",
    "Gelu": "CoreML MLProgram takes Gelu; for NeuralNetwork/NNAPI export it written out (Erf, Mul, Add)",
    "LayerNormalization": "CoreML MLProgram takes it; for NeuralNetwork/NNAPI export it written out (ReduceMean, Sub, "
                          "Pow, Sqrt, Div)",
}


def hint(op: str) -> str:
    return HINTS.get(op, "")


@dataclass(frozen=True)
class Rewrite:
    op: str
    description: str
    apply: Callable       # (onnx.ModelProto) -> number of nodes rewritten (0: nothing to do)


def _attribute(node, name: str, default):
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _initializer_values(graph) -> dict:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _spatial_mean_axes(node, values: dict, ranks: dict):
    """The keepdims of a ReduceMean over axes (2, 3) of a 4-D tensor, or None when it is another mean."""
    axes = _attribute(node, "axes", None)
    if axes is None and len(node.input) > 1:
        stored = values.get(node.input[1])
        axes = None if stored is None else stored.tolist()
    rank = ranks.get(node.input[0])
    if axes is None or rank != 4:
        return None
    if sorted(int(a) % 4 for a in axes) != [2, 3]:
        return None
    return int(_attribute(node, "keepdims", 1))


def reduce_mean_to_global_pool(model) -> int:
    """ReduceMean over (H, W) of an NCHW tensor -> GlobalAveragePool (then Flatten when keepdims=0)."""
    import onnx
    from onnx import helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
             if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    values = _initializer_values(model.graph)
    rewritten, nodes = 0, []
    for node in model.graph.node:
        keepdims = _spatial_mean_axes(node, values, ranks) if node.op_type == "ReduceMean" else None
        if keepdims is None:
            nodes.append(node)
            continue
        pooled = node.output[0] if keepdims else f"{node.output[0]}__pooled"
        nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=f"{node.name}__gap"))
        if not keepdims:
            nodes.append(helper.make_node("Flatten", [pooled], [node.output[0]], axis=1, name=f"{node.name}__flat"))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return rewritten


def hard_sigmoid_to_clip(model) -> int:
    """HardSigmoid(x; alpha, beta) -> Clip(Add(Mul(x, alpha), beta), 0, 1)."""
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    rewritten, nodes = 0, []
    for node in model.graph.node:
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        alpha, beta = float(_attribute(node, "alpha", 0.2)), float(_attribute(node, "beta", 0.5))
        for suffix, value in (("alpha", alpha), ("beta", beta), ("zero", 0.0), ("one", 1.0)):
            model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), f"{base}__{suffix}"))
        nodes += [helper.make_node("Mul", [node.input[0], f"{base}__alpha"], [f"{base}__scaled"], name=f"{base}__mul"),
                  helper.make_node("Add", [f"{base}__scaled", f"{base}__beta"], [f"{base}__shifted"],
                                   name=f"{base}__add"),
                  _clip(f"{base}__shifted", node.output[0], base, opset)]
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return rewritten


def max_zero_to_relu(model) -> int:
    """Max(x, 0) with a constant zero (how torch exports clamp(min=0), the seed's custom ReLU) -> Relu(x)."""
    from onnx import helper

    values = _initializer_values(model.graph)
    constants = {node.output[0]: _constant_value(node) for node in model.graph.node if node.op_type == "Constant"}
    rewritten, nodes = 0, []
    for node in model.graph.node:
        zero = [name for name in node.input if _is_zero(values.get(name, constants.get(name)))]
        if node.op_type != "Max" or len(node.input) != 2 or len(zero) != 1:
            nodes.append(node)
            continue
        (runtime,) = [name for name in node.input if name != zero[0]]
        nodes.append(helper.make_node("Relu", [runtime], [node.output[0]], name=f"{node.name or node.output[0]}__relu"))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return rewritten


def _constant_value(node):
    from onnx import numpy_helper

    attr = next((a for a in node.attribute if a.name == "value"), None)
    return numpy_helper.to_array(attr.t) if attr is not None and attr.HasField("t") else None


def _is_zero(value) -> bool:
    """A scalar (or one-element) constant 0: Max(x, 0) broadcasts it, so Relu(x) has x's shape either way."""
    return value is not None and np.size(value) == 1 and float(np.asarray(value).reshape(-1)[0]) == 0.0


def _clip(source: str, output: str, base: str, opset: int):
    """Clip to [0, 1]: bounds as inputs from opset 11, as attributes before (what the model's opset reads)."""
    from onnx import helper

    if opset >= 11:
        return helper.make_node("Clip", [source, f"{base}__zero", f"{base}__one"], [output], name=f"{base}__clip")
    return helper.make_node("Clip", [source], [output], min=0.0, max=1.0, name=f"{base}__clip")


REWRITES = (
    Rewrite("ReduceMean", "ReduceMean over H,W -> GlobalAveragePool", reduce_mean_to_global_pool),
    Rewrite("HardSigmoid", "HardSigmoid -> Mul, Add, Clip(0, 1)", hard_sigmoid_to_clip),
    Rewrite("Max", "Max(x, 0) -> Relu", max_zero_to_relu),
)
