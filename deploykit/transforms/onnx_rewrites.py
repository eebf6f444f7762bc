"""Rewrites of ONNX constructs that converters mishandle into equivalent forms they take.

``narrow_slices``: a multi-axis ``Slice`` whose ranges are full on all but one axis (what torch and onnxslim write
for ``x[:, :129]``) is cut down to the axes it really cuts — onnx2tf maps the full-range axes of a channels-first
tensor to the wrong channels-last axes and slices the wrong one (silero-vad's STFT: a (1, 0, 258) tensor).

``constants_as_initializers``: weights held in ``Constant`` nodes (Paddle2ONNX writes every weight that way) become
initializers — ONNX Runtime's quantizer looks for weights among the initializers only and stops with "Expected
conv2d_394.w_0 to be an initializer" otherwise.

``unroll_lstms``: fused ONNX ``LSTM`` nodes written out as MatMul/Sigmoid/Tanh arithmetic.

onnx2tf lays an LSTM's initial state out channels-last and Keras then refuses it ("An `initial_state` was passed
that is not compatible with `cell.state_size`"), and onnx2torch has no LSTM converter at all; an ``nn.LSTMCell``
exported from PyTorch (silero-vad's decoder) is exactly such a node with one time step. Written out as the
equations of the ONNX operator — per step t, with gates in ONNX's i, o, f, c order::

    g = X_t·Wᵀ + H·Rᵀ + Wb + Rb      i, o, f = σ(gᵢ), σ(gₒ), σ(g_f)      C = f⊙C + i⊙tanh(g_c)      H = o⊙tanh(C)

— the graph has only ops every converter takes. Only the common form is unrolled: one forward direction, batch-second
layout, weights stored in the file, no peepholes, clipping, sequence lengths or custom activations, and a known,
short sequence (the graph grows with each step). Anything else is left as it is. The caller checks the result
against the source with the parity engine, like every preparation step.
"""
from __future__ import annotations

import numpy as np

from deploykit.onnx_io import every_node

MAX_STEPS = 64          # unrolling grows the graph by ~14 nodes a step: past this a loop is the better form
_DEFAULTS = {"direction": b"forward", "layout": 0, "input_forget": 0}


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
    shapes = _known_shapes(graph)
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
        _drop_unused_initializers(graph)
    return changed


def _full_range(start, end, step, size) -> bool:
    return int(start) == 0 and int(step) == 1 and isinstance(size, int) and size > 0 and int(end) >= size


def unroll_lstms(proto) -> int:
    """Replace every LSTM node of ``proto``'s main graph that has the supported form; returns how many were."""
    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    shapes = _known_shapes(graph)
    nodes, unrolled = [], 0
    for node in graph.node:
        sizes = _supported_sizes(node, weights, shapes)
        if sizes is None:
            nodes.append(node)
            continue
        new_nodes, new_weights = _unroll(node, *sizes, weights, f"{node.name or node.output[0]}/unrolled{unrolled}")
        nodes.extend(new_nodes)
        graph.initializer.extend(new_weights)
        unrolled += 1
    if unrolled:
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unused_initializers(graph)
    return unrolled


def _drop_unused_initializers(graph) -> None:
    """The fused op's W, R and B are now read by nobody: runtimes warn about them and they double the file."""
    used = {name for node in every_node(graph) for name in node.input} | {o.name for o in graph.output}
    dropped = {init.name for init in graph.initializer if init.name not in used}
    kept = [init for init in graph.initializer if init.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in dropped]    # older exporters list initializers as inputs too
    del graph.input[:]
    graph.input.extend(inputs)


def _known_shapes(graph) -> dict:
    values = list(graph.input) + list(graph.value_info) + list(graph.output)
    # A dim_value of 0 or -1 (Paddle2ONNX's "dynamic") is no known size; a tensor without a shape is not listed.
    return {v.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in v.type.tensor_type.shape.dim]
            for v in values if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def _supported_sizes(node, weights: dict, shapes: dict):
    """(time steps, batch or -1) when ``node`` is an LSTM of the supported form, else None."""
    if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx"):
        return None
    attributes = {a.name: a for a in node.attribute}
    if set(attributes) - {"hidden_size", "direction", "layout", "input_forget"}:
        return None               # activations, clip, peephole-free forms only
    for name, default in _DEFAULTS.items():
        attribute = attributes.get(name)
        if attribute is not None and (attribute.s or attribute.i) != default:
            return None
    inputs = list(node.input) + [""] * (8 - len(node.input))
    if inputs[4] or inputs[7] or not all(n in weights for n in inputs[1:3]) or (inputs[3] and inputs[3] not in weights):
        return None
    shape = shapes.get(inputs[0]) or []
    steps, batch = (shape + [None, None])[:2]
    if not (isinstance(steps, int) and 0 < steps <= MAX_STEPS):
        return None
    # A concrete batch keeps every shape static: a converter guessing a -1 can mislay it (onnx2tf did)
    return steps, batch if isinstance(batch, int) and batch > 0 else -1


def _unroll(node, steps: int, batch: int, weights: dict, prefix: str):
    from onnx import helper, numpy_helper

    inputs = list(node.input) + [""] * (8 - len(node.input))
    w = numpy_helper.to_array(weights[inputs[1]])[0]          # [4H, I]
    r = numpy_helper.to_array(weights[inputs[2]])[0]          # [4H, H]
    hidden = r.shape[1]
    bias = (numpy_helper.to_array(weights[inputs[3]])[0] if inputs[3] else None)
    new_weights, made = [], []

    def weight(name, array):
        new_weights.append(numpy_helper.from_array(array, f"{prefix}/{name}"))
        return new_weights[-1].name

    def add(op, ins, name, **attrs):
        out = f"{prefix}/{name}"
        made.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    gates = {}
    for index, gate in enumerate("iofc"):                       # ONNX's gate order
        rows = slice(index * hidden, (index + 1) * hidden)
        gate_bias = (bias[rows] + bias[4 * hidden:][rows]) if bias is not None else np.zeros(hidden, w.dtype)
        gates[gate] = (weight(f"W{gate}", np.ascontiguousarray(w[rows].T)),
                       weight(f"R{gate}", np.ascontiguousarray(r[rows].T)), weight(f"b{gate}", gate_bias))
    to_batch = weight("shape_bh", np.array([batch, hidden], np.int64))
    h = add("Reshape", [inputs[5], to_batch], "h_init") if inputs[5] else None
    c = add("Reshape", [inputs[6], to_batch], "c_init") if inputs[6] else None
    outputs_y = []
    for t in range(steps):
        x_t = add("Gather", [inputs[0], weight(f"t{t}", np.array(t, np.int64))], f"x{t}", axis=0)
        act = {}
        for gate, (wg, rg, bg) in gates.items():
            pre = add("Add", [add("MatMul", [x_t, wg], f"xw{gate}{t}"), bg], f"xwb{gate}{t}")
            if h is not None:
                pre = add("Add", [pre, add("MatMul", [h, rg], f"hr{gate}{t}")], f"pre{gate}{t}")
            act[gate] = add("Tanh" if gate == "c" else "Sigmoid", [pre], f"act_{gate}{t}")
        new_c = add("Mul", [act["i"], act["c"]], f"ic{t}")
        c = new_c if c is None else add("Add", [add("Mul", [act["f"], c], f"fc{t}"), new_c], f"cell{t}")
        h = add("Mul", [act["o"], add("Tanh", [c], f"tanhc{t}")], f"h{t}")
        outputs_y.append(h)
    _write_outputs(node, outputs_y, h, c, weight, add, (batch, hidden), made)
    return made, new_weights


def _write_outputs(node, outputs_y, h, c, weight, add, sizes, made):
    """Y [T, 1, B, H], Y_h and Y_c [1, B, H] under the LSTM's own output names, for the outputs it has."""
    from onnx import helper

    outputs = list(node.output) + [""] * (3 - len(node.output))
    state_shape = weight("shape_1bh", np.array([1, *sizes], np.int64))
    if outputs[0]:
        step_shape = weight("shape_11bh", np.array([1, 1, *sizes], np.int64))
        steps = [add("Reshape", [y, step_shape], f"y{t}") for t, y in enumerate(outputs_y)]
        made.append(helper.make_node("Concat", steps, [outputs[0]], name=f"{outputs[0]}/concat", axis=0)
                    if len(steps) > 1 else helper.make_node("Identity", steps, [outputs[0]]))
    for name, value in ((outputs[1], h), (outputs[2], c)):
        if name:
            made.append(helper.make_node("Reshape", [value, state_shape], [name], name=f"{name}/state"))
