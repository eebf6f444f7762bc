"""What a failed ONNX → TFLite conversion's verdict names beyond the converter's own exception.

* ``flex_ops``: the TensorFlow (Flex) ops in a .tflite that LiteRT's builtin runtime cannot run, each with the ONNX
  node it came from. onnx2tf names a tensor after the Keras layer that made it (``model_3/tf.split/split``) or, for a
  graph output, ``Identity_k``: the layer names the TensorFlow function (``tf.split``), and onnx2tf's converter for
  an ONNX op type is the module ``onnx2tf/ops/<OpType>.py`` that calls it — so the layer leads to the op types, and
  the graph to the nodes.
* ``steering_inputs``: integer scalar (or one-element) inputs that feed shape arithmetic or control flow (an If's
  condition, a Reshape's shape, a Range's bounds...). Fed as data, their value is unknown to the converter, and
  onnx2tf fails far away (silero-vad: "Depth of output (258) is not a multiple of the number of groups" at a Conv,
  behind an If on the sample rate); fixed with ``--input NAME::DTYPE=VALUE`` they fold away. Named, never fixed
  silently.
* ``with_context``: a ConversionError with the prep pass's notes (what was pinned, renamed, rewritten or left
  untouched, and why) and the steering inputs' remedy carried into its message, where the CLI's one line and
  ``--json`` show it.

Nothing here imports a framework at module level.
"""
from __future__ import annotations

import re
from pathlib import Path

# (op type, input positions) that take a shape, a size, an index bound or a condition: a value there steers the graph.
STEERING_SLOTS = {"If": (0,), "Loop": (0, 1), "Reshape": (1,), "Expand": (1,), "Range": (0, 1, 2),
                  "Slice": (1, 2, 3, 4), "Tile": (1,), "ConstantOfShape": (0,), "Resize": (1, 2, 3), "Pad": (1, 2),
                  "TopK": (1,), "Split": (1,), "Unsqueeze": (1,), "Squeeze": (1,), "OneHot": (1,), "Where": (0,),
                  "Upsample": (1,), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,)}
INTEGER_TYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 12: "uint32", 13: "uint64"}
_LAYER = re.compile(r"^(?:[^/]*/)?(tf\.[A-Za-z0-9_.]+?)(?:_(\d+))?/")
_OUTPUT = re.compile(r"^Identity(?:_(\d+))?$")
NOTE_CHARS = 300         # a note in an error line: its gist (the manifest of a kept artifact has them whole)


def steering_inputs(proto, skip: set = frozenset()) -> list:
    """[(input name, dtype name, what it steers)] for the graph's integer inputs with at most one element whose
    value reaches a steering slot (through any arithmetic: Equal, Div, Cast...), in the graph's order."""
    graph = proto.graph
    stored = {t.name for t in graph.initializer}
    found = []
    for graph_input in graph.input:
        tensor_type = graph_input.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if graph_input.name in stored | set(skip) or tensor_type.elem_type not in INTEGER_TYPES or \
                any(d != 1 for d in dims):
            continue
        steered = _steered_by(graph, graph_input.name)
        if steered:
            found.append((graph_input.name, INTEGER_TYPES[tensor_type.elem_type], steered))
    return found


def _steered_by(graph, name: str) -> str:
    """'If If_0 (condition)' — the first node whose steering slot depends on ``name``; '' when none does."""
    from deploykit.onnx_io import every_node

    tainted = {name}
    for node in every_node(graph):          # graph order is topological: one pass carries the dependency
        slots = STEERING_SLOTS.get(node.op_type, ())
        hit = next((i for i in slots if i < len(node.input) and node.input[i] in tainted), None)
        if hit is not None:
            return f"{node.op_type} {node.name or '(unnamed)'} (input {hit})"
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
    return ""


def steering_remedy(steering: list, values: dict) -> str:
    """'--input sr::int64=16000' per steering input (VALUE where the user's value is unknown here)."""
    return " ".join(f"--input {name}::{dtype}={values.get(name, 'VALUE')}" for name, dtype, _ in steering)


def with_context(error, notes: list, steering: list, values: dict):
    """``error`` (a ConversionError) with the prep notes and the steering inputs said in its message, the lists in
    its details; the error itself when there is nothing to add."""
    from deploykit.errors import ConversionError
    from deploykit.text import quoted

    message, remedy, details = error.message, error.remedy, dict(error.details)
    if steering:
        names = ", ".join(f"{quoted(name)} ({dtype}, feeds {what})" for name, dtype, what in steering)
        message += (f"; the graph is steered by integer input(s) fed as data: {names} — a converter cannot see "
                    f"their value; fix it with {steering_remedy(steering, values)}")
        details["steering_inputs"] = [{"name": n, "dtype": d, "feeds": w, "value": values.get(n)}
                                      for n, d, w in steering]
    if notes:
        said = [note if len(note) <= NOTE_CHARS else note[:NOTE_CHARS - 1] + "…" for note in dict.fromkeys(notes)]
        message += " [the ONNX preparation before onnx2tf: " + "; ".join(said) + "]"
        details["prep_notes"] = list(notes)
    if message == error.message:
        return error
    return ConversionError(message, remedy, details, outcome=error.outcome, report=error.report)


def flex_ops(tflite: Path, onnx_path: str, onnx2tf_ops: Path) -> list:
    """['FlexSplitV (from ONNX node split_uneven (Split))', ...]: each non-builtin op of the .tflite once, with the
    ONNX node(s) it came from when the tensor names lead there."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(tflite.read_bytes()), 0)
    custom = {}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(o)
            code = model.OperatorCodes(operator.OpcodeIndex()).CustomCode()
            if code:
                outputs = [_text(subgraph.Tensors(operator.Outputs(k)).Name()) for k in range(operator.OutputsLength())]
                custom.setdefault(_text(code), []).extend(outputs)
    if not custom:
        return []
    from deploykit.onnx_io import read_onnx

    graph = read_onnx(onnx_path).graph
    return [f"{op}{_origin(outputs, graph, onnx2tf_ops)}" for op, outputs in custom.items()]


def _origin(tensor_names: list, graph, onnx2tf_ops: Path) -> str:
    nodes = []
    producers = {out: node for node in graph.node for out in node.output}
    for tensor in tensor_names:
        output = _OUTPUT.match(tensor)
        if output and int(output.group(1) or 0) < len(graph.output):
            node = producers.get(graph.output[int(output.group(1) or 0)].name)
            nodes += [node] if node is not None else []
            continue
        layer = _LAYER.match(tensor)
        if layer:
            nodes += _nodes_calling(layer.group(1), int(layer.group(2) or 0), graph, onnx2tf_ops)
    unique = list({id(n): n for n in nodes}.values())
    if not unique:
        return f" (ONNX node not found; TFLite tensor {tensor_names[0]})" if tensor_names else ""
    named = ", ".join(f"{n.name or '(unnamed)'} ({n.op_type})" for n in unique[:3])
    return f" (from ONNX node {named}{', ...' if len(unique) > 3 else ''})"


def _nodes_calling(function: str, index: int, graph, onnx2tf_ops: Path) -> list:
    """The ONNX nodes whose onnx2tf converter calls ``function`` (tf.split): the index-th of them when Keras's layer
    suffix (tf.split_1) says which, else all."""
    types = {path.stem for path in onnx2tf_ops.glob("*.py") if f"{function}(" in path.read_text(errors="replace")}
    nodes = [node for node in graph.node if node.op_type in types]
    return [nodes[index]] if len(nodes) > 1 and index < len(nodes) else nodes


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
