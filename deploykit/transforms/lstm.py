"""Fused ONNX ``LSTM`` nodes put into the form onnx2tf converts (``prepare_lstms``).

Measured on onnx2tf 1.28.8 (bench/lstm_unroll_size.py; its handler is onnx2tf/ops/LSTM.py: a custom cell inside
``tf_keras.layers.RNN``, a TFLite WHILE loop — never UNIDIRECTIONAL_SEQUENCE_LSTM): a fused LSTM of any direction and
length converts exactly when its initial states are stored in the file. Without them onnx2tf stops ("An
`initial_state` was passed that is not compatible with `cell.state_size`"; bidirectional: "'NoneType' object is not
subscriptable"); with states fed as inputs or computed in the graph it lays them out channels-last and Keras refuses
them. A traced 3-layer speaker encoder also came out with the wrong output shape ([3, 256] for [1, 256]): onnx2tf
gathers torch's ``h_n[-1]`` from the stacked final states along the wrong axis. Hence, per node:

- states absent → stored zeros (what ONNX means by an absent state): exact, O(1), any length, the node stays fused;
- states computed in the graph (an ``nn.LSTMCell`` fed its state, silero-vad's decoder) → written out as the
  equations of the ONNX operator, per direction and step t, gates in ONNX's i, o, f, c order::

    g = X_t·Wᵀ + H·Rᵀ + Wb + Rb      i, o, f = σ(gᵢ), σ(gₒ), σ(g_f)      C = f⊙C + i⊙tanh(g_c)      H = o⊙tanh(C)

  The input projection X·Wᵀ + b does not depend on the state: one MatMul does all steps at once ([T·B, I] ×
  [I, 4H]) and only the recurrence is unrolled, 13 nodes a step (the per-step form had 26). A reverse direction walks
  the steps backwards; a bidirectional node runs both and stacks them as ONNX does (Y [T, 2, B, H]). Only the common
  form is unrolled: batch-second layout, weights stored in the file, default activations, no peepholes, clipping
  or input_forget, sequence lengths absent or all T, a known length of at most ``MAX_STEPS`` (both directions
  counted);
- ``Gather(Concat(h₀, h₁, h₂), k)`` over LSTM states → the k-th state itself.

Every LSTM node gets one note saying what was done, or why it was left. The caller checks the result against the
source with the parity engine, like every preparation step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Steps written out per LSTM node, both directions counted: 13 nodes a step, and onnx2tf took 116-289 s for 400 steps
# on a shared 2-core machine (bench/lstm_unroll_size.py): past this it may not end within the converter's 600 s.
MAX_STEPS = 512
_HANDLED = {"hidden_size", "direction", "layout", "input_forget"}
_DIRECTIONS = {b"forward": (False,), b"reverse": (True,), b"bidirectional": (False, True)}


@dataclass
class _Plan:
    """What one LSTM node computes: its sizes, directions (reverse or not) and the arrays the unroll needs."""

    steps: int
    batch: int          # -1 when unknown: Reshapes then infer it
    reverse: tuple
    w: np.ndarray       # [D, 4H, I]
    r: np.ndarray       # [D, 4H, H]
    bias: np.ndarray    # [D, 4H], Wb + Rb
    initial: tuple      # (initial_h or "", initial_c or ""): empty when absent or stored as zeros


def prepare_lstms(proto, notes: list) -> int:
    """Put every LSTM node of ``proto``'s main graph into a form onnx2tf converts; returns how many nodes changed.
    ``notes`` gets one line per LSTM node: what was done, or why it was left as it is.

    onnx2tf converts a fused LSTM (any direction or length, into a TFLite WHILE loop) exactly when its initial
    states are stored in the file; without them it fails ("An `initial_state` was passed that is not compatible",
    "'NoneType' object is not subscriptable"), and with states computed in the graph or fed as inputs it mislays
    them. So: absent states become stored zeros (what ONNX means by absent), O(1) and exact; a node whose states
    are computed is unrolled (``unroll``); torch's ``h_n[-1]`` (a Gather from the stacked final states), which
    onnx2tf picks along the wrong axis, becomes the last layer's own state (``pick_stacked_states``)."""
    picked = pick_stacked_states(proto)        # first: it looks for the LSTM nodes that unrolling replaces
    if picked:
        notes.append(f"{picked} Gather(s) of one layer from stacked LSTM states (torch's h_n[-1]) now read that "
                     "layer's state directly (onnx2tf gathered along the wrong axis: shape [3, 256] for [1, 256])")
    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    shapes = known_shapes(graph)
    to_unroll, changed = set(), picked
    for node in [n for n in graph.node if n.op_type == "LSTM" and n.domain in ("", "ai.onnx")]:
        inputs = list(node.input) + [""] * (8 - len(node.input))
        computed = [name for name in inputs[5:7] if name and name not in weights]
        batch = ((shapes.get(inputs[0]) or []) + [None, None])[1 - int(_attribute(node, "layout", 0) == 1)]
        if not computed and (isinstance(batch, int) or all(inputs[5:7])):
            absent = _state_zeros(node, inputs, batch, graph)
            changed += bool(absent)
            notes.append(f"LSTM node {_label(node)} kept fused, onnx2tf converts it into a loop" + (
                f" once given stored zero initial states ({absent}: ONNX's default)" if absent else ""))
            continue
        problem = ("onnx2tf mislays an initial state computed in the graph" if computed else
                   "its batch size is unknown, so zero initial states cannot be stored for onnx2tf")
        plan = _plan(node, weights, shapes)
        if isinstance(plan, str):
            notes.append(f"LSTM node {_label(node)} left fused although {problem}: it is not unrolled, {plan}")
        else:
            to_unroll.add(id(node))
    return changed + unroll(proto, notes, chosen=lambda node: id(node) in to_unroll)


def _state_zeros(node, inputs: list, batch, graph) -> str:
    """Give ``node`` stored zero initial states where it has none; which ones it got ("" when none)."""
    from onnx import helper, numpy_helper

    absent = [k for k in (5, 6) if not inputs[k]]
    if not absent:
        return ""
    count = 2 if _attribute(node, "direction", b"forward") == b"bidirectional" else 1
    hidden = int(_attribute(node, "hidden_size", 0))
    shape = (batch, count, hidden) if _attribute(node, "layout", 0) == 1 else (count, batch, hidden)
    stored = next((i.data_type for i in graph.initializer if i.name == inputs[1]), 1)   # W's type, else float
    name = f"{_key(node)}/zero_state"
    graph.initializer.append(numpy_helper.from_array(np.zeros(shape, helper.tensor_dtype_to_np_dtype(stored)), name))
    for k in absent:
        inputs[k] = name
    while not inputs[-1]:
        inputs.pop()
    node.input[:] = inputs
    return " and ".join(("initial_h", "initial_c")[k - 5] for k in absent)


def _attribute(node, name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def unroll(proto, notes: list | None = None, chosen=lambda node: True) -> int:
    """Write out every LSTM node of ``proto``'s main graph that has a supported form (and that ``chosen`` picks) as
    arithmetic; returns how many were. ``notes`` (when given) gets one line per node: unrolled, or why not."""
    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    shapes = known_shapes(graph)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    nodes, unrolled = [], 0
    for node in graph.node:
        if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx") or not chosen(node):
            nodes.append(node)
            continue
        plan = _plan(node, weights, shapes)
        if isinstance(plan, str):
            if notes is not None:
                notes.append(f"LSTM node {_label(node)} left fused: {plan}")
            nodes.append(node)
            continue
        writer = _Writer(f"{_key(node)}/unrolled{unrolled}", opset)
        _unroll(node, plan, writer)
        nodes.extend(writer.nodes)
        graph.initializer.extend(writer.weights)
        if notes is not None:
            notes.append(f"LSTM node {_label(node)} unrolled into MatMul/Sigmoid/Tanh ({plan.steps} steps, "
                         f"{len(writer.nodes)} nodes): onnx2tf mislays an initial state computed in the graph")
        unrolled += 1
    if unrolled:
        del graph.node[:]
        graph.node.extend(nodes)
    return unrolled


def pick_stacked_states(proto) -> int:
    """``Gather(Concat(s₀, s₁, …), k)`` along the Concat's axis, where every sᵢ is an LSTM state of size 1 on that
    axis, becomes ``Reshape(s_k)``; returns how many Gathers changed."""
    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    shapes = known_shapes(graph)
    made_by = {out: node for node in graph.node for out in node.output}
    states = {out for node in graph.node if node.op_type == "LSTM" for out in node.output[1:3] if out}
    picked = 0
    for index, node in enumerate(graph.node):
        stacked = made_by.get(node.input[0]) if node.op_type == "Gather" else None
        choice = _picked(node, stacked, weights, shapes, states)
        if choice is None:
            continue
        from onnx import helper, numpy_helper

        shape = numpy_helper.from_array(np.array(shapes[node.output[0]], np.int64), f"{node.output[0]}/picked_shape")
        graph.initializer.append(shape)
        graph.node[index].CopyFrom(helper.make_node("Reshape", [choice, shape.name], list(node.output),
                                                    name=node.name or f"{node.output[0]}/picked"))
        picked += 1
    return picked


def _picked(gather, stacked, weights: dict, shapes: dict, states: set):
    """The Concat input ``gather`` selects whole, or None when the pattern does not hold exactly."""
    from onnx import numpy_helper

    if stacked is None or stacked.op_type != "Concat" or gather.input[1] not in weights:
        return None
    index = numpy_helper.to_array(weights[gather.input[1]])
    rank = len(shapes.get(stacked.input[0]) or [])
    axis, out_shape = _attribute(gather, "axis", 0), shapes.get(gather.output[0])
    if index.ndim or not rank or axis % rank != _attribute(stacked, "axis", 0) % rank or not out_shape or \
            None in out_shape or not all(i in states and (shapes.get(i) or [None] * rank)[axis % rank] == 1
                                         for i in stacked.input):
        return None
    return stacked.input[int(index) % len(stacked.input)] if -len(stacked.input) <= int(index) < len(
        stacked.input) else None


def _label(node) -> str:
    from deploykit.text import quoted

    return quoted(_key(node))


def _key(node) -> str:
    """The node's name, else its first output's (an LSTM may omit Y: its first output name is then empty)."""
    return node.name or next(name for name in node.output if name)


def known_shapes(graph) -> dict:
    """{tensor: dims} for the main graph's tensors with a declared shape; None for a dim that is not known."""
    values = list(graph.input) + list(graph.value_info) + list(graph.output)
    # A dim_value of 0 or -1 (Paddle2ONNX's "dynamic") is no known size; a tensor without a shape is not listed.
    return {v.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in v.type.tensor_type.shape.dim]
            for v in values if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def _plan(node, weights: dict, shapes: dict):
    """A _Plan for ``node``, or the reason it is not unrolled (a string)."""
    from onnx import helper, numpy_helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    extra = sorted(set(attributes) - _HANDLED)
    if extra:
        return f"it sets {', '.join(extra)}, which the unroll does not write out (default activations only)"
    if attributes.get("layout", 0) or attributes.get("input_forget", 0):
        return "batch-first layout (layout=1) or input_forget=1 is not unrolled"
    inputs = list(node.input) + [""] * (8 - len(node.input))
    if inputs[7]:
        return "peephole weights (input P) are not unrolled"
    if not all(name in weights for name in inputs[1:3]) or (inputs[3] and inputs[3] not in weights):
        return "its weights W, R, B are computed in the graph, not stored in the file"
    steps, batch = ((shapes.get(inputs[0]) or []) + [None, None])[:2]
    if not isinstance(steps, int):
        return "its sequence length is unknown (give the input's shape with --input)"
    count = 2 if attributes.get("direction") == b"bidirectional" else 1
    if steps * count > MAX_STEPS:
        return (f"{steps} steps{' × 2 directions' * (count > 1)} is over the {MAX_STEPS} the unroll writes out (13 "
                "nodes a step: onnx2tf would take over 10 minutes)")
    if inputs[4] and not _all_equal(weights.get(inputs[4]), steps):
        return "per-example sequence lengths (input sequence_lens) are not unrolled"
    w, r = (numpy_helper.to_array(weights[name]) for name in inputs[1:3])
    hidden = r.shape[-1]
    both = numpy_helper.to_array(weights[inputs[3]]) if inputs[3] else np.zeros((w.shape[0], 8 * hidden), w.dtype)
    initial = tuple("" if _zeros(weights.get(name)) else name for name in inputs[5:7])
    reverse = _DIRECTIONS.get(attributes.get("direction", b"forward"))
    if reverse is None or w.shape[0] != len(reverse):
        return f"direction {attributes.get('direction')!r} does not match its weights"
    # A concrete batch keeps every shape static: a converter guessing a -1 can mislay it (onnx2tf did)
    return _Plan(steps, batch if isinstance(batch, int) else -1, reverse, w, r,
                 both[:, :4 * hidden] + both[:, 4 * hidden:], initial)


def _all_equal(tensor, steps: int) -> bool:
    from onnx import numpy_helper

    return tensor is not None and bool(np.all(numpy_helper.to_array(tensor) == steps))


def _zeros(tensor) -> bool:
    """An initial state stored as zeros (torch's default, once onnxslim folds its Expand) is no state at all."""
    from onnx import numpy_helper

    return tensor is not None and not np.any(numpy_helper.to_array(tensor))


class _Writer:
    """Collects the nodes and weights of one unrolled LSTM, all named under ``prefix``."""

    def __init__(self, prefix: str, opset: int):
        """Nodes and weights named under ``prefix``, for a graph of default-domain ``opset``."""
        self.prefix, self.opset, self.nodes, self.weights, self.made = prefix, opset, [], [], set()

    def weight(self, name: str, array) -> str:
        """A stored tensor; one name is one value (step indices and shapes are shared by both directions)."""
        from onnx import numpy_helper

        full = f"{self.prefix}/{name}"
        if full not in self.made:
            self.made.add(full)
            self.weights.append(numpy_helper.from_array(np.asarray(array), full))
        return full

    def add(self, op: str, inputs: list, name: str, outputs: int = 1, output: str = "", **attrs):
        from onnx import helper

        names = [output or f"{self.prefix}/{name}"] if outputs == 1 else [f"{self.prefix}/{name}_{k}"
                                                                           for k in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{self.prefix}/{name}", **attrs))
        return names[0] if outputs == 1 else names

    def split4(self, tensor: str, hidden: int, name: str) -> list:
        """``tensor`` [B, 4H] cut into its four gates (Split's size list moved from attribute to input at 13)."""
        sizes = [hidden] * 4
        if self.opset < 13:
            return self.add("Split", [tensor], name, outputs=4, axis=1, split=sizes)
        return self.add("Split", [tensor, self.weight("gate_sizes", np.array(sizes, np.int64))], name, outputs=4,
                        axis=1)


def _unroll(node, plan: _Plan, writer: _Writer) -> None:
    """Write ``node``'s computation into ``writer``, ending in tensors named as the node's outputs."""
    hidden, features = plan.r.shape[-1], plan.w.shape[-1]
    flat = writer.add("Reshape", [node.input[0], writer.weight("shape_flat", np.array([-1, features], np.int64))],
                      "x_flat")
    directions = []
    for index, backwards in enumerate(plan.reverse):
        directions.append(_direction(plan, index, backwards, flat, writer, hidden))
    _write_outputs(node, plan, directions, writer, hidden)


def _direction(plan: _Plan, index: int, backwards: bool, flat: str, writer: _Writer, hidden: int):
    """One direction's recurrence: (H of each step in time order, last H, last C)."""
    tag = "b" if backwards else "f"
    # All steps' input projections at once: [T·B, I] × [I, 4H] + b, then [T, B, 4H] to take a step from
    projected = writer.add("Add", [writer.add("MatMul", [flat, writer.weight(f"W{tag}", plan.w[index].T.copy())],
                                              f"xw{tag}"), writer.weight(f"b{tag}", plan.bias[index])], f"xwb{tag}")
    per_step = writer.add("Reshape", [projected, writer.weight("shape_steps", np.array([plan.steps, plan.batch,
                                                                                          4 * hidden], np.int64))],
                          f"xwb{tag}_steps")
    recurrent = writer.weight(f"R{tag}", plan.r[index].T.copy())
    to_state = writer.weight("shape_bh", np.array([plan.batch, hidden], np.int64))
    direction = writer.weight(f"direction{index}", np.array(index, np.int64))
    h, c = (writer.add("Reshape", [writer.add("Gather", [name, direction], f"{kind}{tag}_init_d", axis=0), to_state],
                       f"{kind}{tag}_init") if name else None for kind, name in zip("hc", plan.initial))
    outputs = [None] * plan.steps
    for t in (reversed(range(plan.steps)) if backwards else range(plan.steps)):
        gates = writer.add("Gather", [per_step, writer.weight(f"t{t}", np.array(t, np.int64))], f"g{tag}{t}", axis=0)
        if h is not None:
            gates = writer.add("Add", [gates, writer.add("MatMul", [h, recurrent], f"hr{tag}{t}")], f"pre{tag}{t}")
        i, o, f, g = writer.split4(gates, hidden, f"gates{tag}{t}")
        update = writer.add("Mul", [writer.add("Sigmoid", [i], f"i{tag}{t}"), writer.add("Tanh", [g], f"c~{tag}{t}")],
                            f"ic{tag}{t}")
        forget = writer.add("Sigmoid", [f], f"f{tag}{t}")
        c = update if c is None else writer.add("Add", [writer.add("Mul", [forget, c], f"fc{tag}{t}"), update],
                                                f"c{tag}{t}")
        h = writer.add("Mul", [writer.add("Sigmoid", [o], f"o{tag}{t}"), writer.add("Tanh", [c], f"tanhc{tag}{t}")],
                       f"h{tag}{t}")
        outputs[t] = h
    return outputs, h, c


def _write_outputs(node, plan: _Plan, directions: list, writer: _Writer, hidden: int) -> None:
    """Y [T, D, B, H], Y_h and Y_c [D, B, H] under the LSTM's own output names, for the outputs it has."""
    names = list(node.output) + [""] * (3 - len(node.output))
    count = len(directions)
    if names[0]:
        # Each direction's steps stacked [T·B, H]; side by side [T·B, D·H] is [T, B, D, H], which ONNX orders D first
        stacked = [writer.add("Concat", outputs, f"y{k}", axis=0) if len(outputs) > 1 else outputs[0]
                   for k, (outputs, _, _) in enumerate(directions)]
        joined = writer.add("Concat", stacked, "y_joined", axis=1) if count > 1 else stacked[0]
        shape = writer.weight("shape_y", np.array([plan.steps, plan.batch, count, hidden], np.int64))
        if count == 1:
            writer.add("Reshape", [joined, writer.weight("shape_y1", np.array([plan.steps, 1, plan.batch, hidden],
                                                                               np.int64))], "y", output=names[0])
        else:
            writer.add("Transpose", [writer.add("Reshape", [joined, shape], "y_tbdh")], "y", output=names[0],
                       perm=[0, 2, 1, 3])
    state_shape = writer.weight("shape_dbh", np.array([count, plan.batch, hidden], np.int64))
    for position, name in ((1, names[1]), (2, names[2])):
        if name:
            last = [d[position] for d in directions]
            joined = writer.add("Concat", last, f"state{position}", axis=0) if count > 1 else last[0]
            writer.add("Reshape", [joined, state_shape], f"state{position}_dbh", output=name)
