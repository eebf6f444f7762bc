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
    from deploykit.flop_count import onnx_flops

    return {"flops": int(onnx_flops(path)[0]), "method": "ONNX graph: Conv, Gemm, MatMul (2 per MAC)"}


def job(request: dict, arrays: dict) -> dict:
    """Child side (deploykit.child): count and return."""
    return count_flops(request["path"]) or {"flops": None, "method": "format not countable"}
