"""ONNX ``Split`` nodes with uneven sizes written out as one ``Slice`` per output, before onnx2tf.

onnx2tf turns such a Split into TensorFlow's SplitV; when it cannot see the split axis's size (a dim its own shape
tracking lost, an int64 sizes tensor) it keeps SplitV, which the TFLite converter can only emit as ``FlexSplitV``
— a TensorFlow op that LiteRT's builtin interpreter refuses to load. A Slice with constant starts and ends needs no
size: onnx2tf writes it as a builtin STRIDED_SLICE. Even splits are left alone (tf.split is the builtin SPLIT).

The prep pass (deploykit.transforms.onnx_prep) applies this on a copy and keeps it only if parity holds.
``onnx`` is imported inside the functions.
"""
from __future__ import annotations

from deploykit.onnx_io import drop_unused_initializers


def uneven_splits(proto) -> list:
    """The top-level Split nodes whose sizes are constants of unequal values (what this module rewrites)."""
    constants = _constants(proto.graph)
    return [node for node in proto.graph.node if node.op_type == "Split"
            and len(set(_sizes(node, constants) or [0])) > 1]


def slice_uneven_splits(proto) -> int:
    """Replace each uneven Split in ``proto`` (in place) by Slices named ``<split>/slice<k>``; returns how many."""
    from onnx import helper, numpy_helper
    import numpy as np

    constants = _constants(proto.graph)
    rewritten = 0
    nodes = []
    for node in proto.graph.node:
        sizes = _sizes(node, constants) if node.op_type == "Split" else None
        if not sizes or len(set(sizes)) == 1:
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        name = node.name or f"Split_{node.output[0]}"
        start = 0
        for index, (output, size) in enumerate(zip(node.output, sizes)):
            prefix = f"{name}/slice{index}"
            arrays = {"starts": [start], "ends": [start + size], "axes": [axis]}
            inputs = [node.input[0]]
            for key, value in arrays.items():
                proto.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{prefix}/{key}"))
                inputs.append(f"{prefix}/{key}")
            start += size
            if output:        # an omitted output needs no Slice
                nodes.append(helper.make_node("Slice", inputs, [output], name=prefix))
        rewritten += 1
    if rewritten:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        drop_unused_initializers(proto.graph)
    return rewritten


def _sizes(node, constants: dict):
    """The Split's sizes as ints: its ``split`` input (opset ≥ 13) or attribute (older opsets); None when they are
    not constants or not given (an even split into num_outputs)."""
    if node.op_type != "Split":
        return None
    if len(node.input) > 1 and node.input[1]:
        value = constants.get(node.input[1])
        return [int(v) for v in value.reshape(-1)] if value is not None else None
    attribute = next((a for a in node.attribute if a.name == "split"), None)
    return [int(v) for v in attribute.ints] if attribute is not None else None


def _constants(graph) -> dict:
    """{tensor name: numpy array} of the graph's initializers and Constant nodes' values."""
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                found[node.output[0]] = numpy_helper.to_array(value)
    return found
