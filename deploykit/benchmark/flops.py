"""FLOPs per inference, counted once per model: torch's flop counter, or the ONNX graph's conv/matmul shapes."""
from __future__ import annotations

from typing import Optional

from deploykit.formats import TORCH_FORMATS, Format, detect


def count_flops(path: str, load=None) -> Optional[dict]:
    """{"flops": n, "method": ...} or None when the format offers no way to count."""
    fmt = detect(path)
    if fmt in TORCH_FORMATS:
        return _torch_flops(path, load)
    if fmt == Format.ONNX:
        return _onnx_flops(path)
    return None


def _torch_flops(path: str, load) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from deploykit.inputs import random_feeds
    from deploykit.model import load_model

    model = load_model(path, load) if load else load_model(path)
    feeds = random_feeds(model.spec, 1)[0]
    args = [torch.from_numpy(feeds[t.name]) for t in model.spec.inputs]
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.handle(*args)
    return {"flops": int(counter.get_total_flops()), "method": "torch.utils.flop_counter (matmul/conv, 2 per MAC)"}


def _onnx_flops(path: str) -> dict:
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(path))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    total = 0
    for node in model.graph.node:
        total += _node_flops(node, shapes)
    return {"flops": int(total), "method": "ONNX graph: Conv, Gemm, MatMul (2 per MAC)"}


def _node_flops(node, shapes: dict) -> int:
    def dims(name):
        return shapes.get(name) or []

    if node.op_type == "Conv" and len(node.input) >= 2:
        weight, out = dims(node.input[1]), dims(node.output[0])
        if len(weight) >= 3 and out:
            macs = _prod(out) * _prod(weight[1:])          # each output: Cin/groups * kernel MACs
            return 2 * macs
    if node.op_type in ("Gemm", "MatMul") and len(node.input) >= 2:
        a, out = dims(node.input[0]), dims(node.output[0])
        if a and out:
            return 2 * _prod(out) * a[-1]
    return 0


def _prod(values) -> int:
    result = 1
    for value in values:
        result *= max(int(value), 1)
    return result


def job(request: dict, arrays: dict) -> dict:
    """Child side (deploykit.child): count and return."""
    return count_flops(request["path"]) or {"flops": None, "method": "format not countable"}
