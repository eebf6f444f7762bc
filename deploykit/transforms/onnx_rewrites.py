"""Rewrites of ONNX constructs that converters mishandle into equivalent forms they take.

``narrow_slices``: a multi-axis ``Slice`` whose ranges are full on all but one axis (what torch and onnxslim write
for ``x[:, :129]``) is cut down to the axes it really cuts — onnx2tf maps the full-range axes of a channels-first
tensor to the wrong channels-last axes and slices the wrong one (silero-vad's STFT: a (1, 0, 258) tensor).

``constants_as_initializers``: weights held in ``Constant`` nodes (Paddle2ONNX writes every weight that way) become
initializers — ONNX Runtime's quantizer looks for weights among the initializers only and stops with "Expected
conv2d_394.w_0 to be an initializer" otherwise.

``unroll_lstms``: fused ONNX ``LSTM`` nodes put into the form onnx2tf converts (``deploykit.transforms.lstm``): stored
zero initial states where they are absent, arithmetic (MatMul/Sigmoid/Tanh, forward, reverse or bidirectional, up to
``MAX_STEPS`` steps) where they are computed, and one line per node saying what was done or why not.
"""
from __future__ import annotations

import numpy as np

from deploykit.onnx_io import drop_unused_initializers
from deploykit.transforms import lstm
from deploykit.transforms.lstm import MAX_STEPS, known_shapes

__all__ = ["MAX_STEPS", "constants_as_initializers", "has_candidates", "narrow_slices", "unroll_lstms"]


def has_candidates(proto) -> bool:
    """Whether ``proto``'s main graph has a node either rewrite may change (cheap: no weights are read)."""
    stored = {init.name for init in proto.graph.initializer}
    return any(node.op_type == "LSTM" or node.op_type == "Slice" and len(node.input) > 3 and
               all(name in stored for name in node.input[1:4] if name) for node in proto.graph.node)


def constants_as_initializers(proto) -> int:
    """Move every main-graph ``Constant`` node with a tensor ``value`` into the initializers; returns how many."""
    moved = []
    for node in proto.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = type(node.attribute[0].t)()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            proto.graph.initializer.append(tensor)
            moved.append(node)
    for node in moved:
        proto.graph.node.remove(node)
    return len(moved)


def narrow_slices(proto) -> int:
    """Drop the full-range axes of every Slice whose parameters are stored in the file; returns how many changed."""
    from onnx import numpy_helper

    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    shapes = known_shapes(graph)
    changed = 0
    for node in graph.node:
        params = list(node.input[1:5])
        if node.op_type != "Slice" or len(params) < 3 or not all(p in weights for p in params if p):
            continue
        shape = shapes.get(node.input[0])
        starts, ends, axes = (numpy_helper.to_array(weights[p]) for p in params[:3])
        steps = numpy_helper.to_array(weights[params[3]]) if len(params) > 3 and params[3] else [1] * len(starts)
        if shape is None or len(starts) < 2 or any(not -len(shape) <= int(a) < len(shape) for a in axes):
            continue
        keep = [i for i in range(len(starts)) if not _full_range(starts[i], ends[i], steps[i], shape[axes[i]])]
        if len(keep) == len(starts) or not keep:
            continue
        for index, values in enumerate((starts, ends, axes, steps)):
            name = f"{node.name or node.output[0]}/narrowed{changed}_{('starts', 'ends', 'axes', 'steps')[index]}"
            graph.initializer.append(numpy_helper.from_array(np.asarray(values)[keep].astype(np.int64), name))
            if index < len(node.input) - 1:
                node.input[index + 1] = name
            else:
                node.input.append(name)
        changed += 1
    if changed:
        drop_unused_initializers(graph)
    return changed


def _full_range(start, end, step, size) -> bool:
    return int(start) == 0 and int(step) == 1 and isinstance(size, int) and size > 0 and int(end) >= size


def unroll_lstms(proto, notes: list | None = None) -> int:
    """Put every LSTM node of ``proto``'s main graph into a form onnx2tf converts (deploykit.transforms.lstm:
    stored zero initial states, or unrolled when its states are computed); returns how many nodes changed.
    ``notes`` (when given) gets one line per LSTM node: what was done, or why it was left as it is."""
    changed = lstm.prepare_lstms(proto, [] if notes is None else notes)
    if changed:
        drop_unused_initializers(proto.graph)
    return changed
