"""A dynamically quantized ONNX graph (onnxruntime's ``quantize_dynamic``) written back in float (``dequantize``).

``quantize_dynamic`` stores int8/uint8 weights and quantizes activations at run time: ``DynamicQuantizeLinear``
feeds ``ConvInteger`` / ``MatMulInteger``, whose int32 result is cast to float and scaled by (activation scale ×
weight scale); LSTMs become ``com.microsoft``'s ``DynamicQuantizeLSTM``. onnx2tf 1.28.8 has no converter for
``DynamicQuantizeLSTM`` (the export stopped there: ddddocr's common_old.onnx), and the integer chains around the
convolutions would reach TFLite as float arithmetic on rounded values anyway. So each is written back as the float op
it stands for, weights dequantized once here as ``(w - zero_point) * scale`` (per channel where the file is):

- ``DynamicQuantizeLSTM`` → ``LSTM`` (W [D, I, 4H] and R [D, H, 4H] transposed to ONNX's [D, 4H, I] / [D, 4H, H]);
  the LSTM step (``deploykit.transforms.lstm``) then takes it like any other;
- ``DynamicQuantizeLinear(x)`` → ``ConvInteger`` / ``MatMulInteger`` → [int32 ``Add`` of the bias quantized in the
  graph, ``Reshape(Cast(Floor(Div(bias, scale))))``, older quantizers] → ``Cast`` to float → ``Mul`` by
  ``Mul(x_scale, w_scale)`` → ``Conv(x, w, bias)`` / ``MatMul(x, w)`` writing the ``Mul``'s output.

What no longer feeds anything (the quantizing of activations, the bias arithmetic, the int weights) is dropped.
A chain of any other form is left as it is. The result computes in float, so it differs from the int8 source by the
source's own rounding: the caller checks it against the source with the source's (int8) preset.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from deploykit.onnx_io import drop_unused_initializers, every_node

__all__ = ["DYNAMIC_OPS", "dequantize", "dynamic_ops"]

DYNAMIC_OPS = ("DynamicQuantizeLSTM", "ConvInteger", "MatMulInteger")
_LSTM_INPUTS = 8            # X, W, R, B, sequence_lens, initial_h, initial_c, P; then W/R scales and zero points
_FLOAT = 1                  # onnx.TensorProto.FLOAT


def dynamic_ops(proto) -> Counter:
    """How many nodes of each kind ``dequantize`` may rewrite in ``proto``'s main graph (cheap: no weights read)."""
    return Counter(node.op_type for node in proto.graph.node if node.op_type in DYNAMIC_OPS and
                   node.domain in (("com.microsoft",) if node.op_type == "DynamicQuantizeLSTM" else ("", "ai.onnx")))


def dequantize(proto) -> tuple:
    """Rewrite ``proto``'s dynamically quantized nodes as float ones, in place; returns (done, left): Counters of
    the op types rewritten and of those left (a form not recognised: weights computed, another scale chain)."""
    graph = _Index(proto.graph)
    done, left, present = Counter(), Counter(), dynamic_ops(proto)
    for node in list(proto.graph.node):
        if node.op_type not in present:
            continue
        rewrite = _lstm if node.op_type == "DynamicQuantizeLSTM" else _integer
        (done if rewrite(node, graph) else left)[node.op_type] += 1
    if done:
        _prune(proto)
    return _ordered(done), _ordered(left)


def _ordered(counts: Counter) -> Counter:
    return Counter({op_type: counts[op_type] for op_type in DYNAMIC_OPS if counts[op_type]})


class _Index:
    """The main graph's producers, consumers and stored weights, kept current as nodes are replaced."""

    def __init__(self, graph):
        self.graph = graph
        self.stored = {init.name: init for init in graph.initializer}
        self.producer = {name: node for node in graph.node for name in node.output}
        self.outputs = {o.name for o in graph.output}

    def weight(self, name: str):
        """The stored array ``name``, or None when it is computed (or absent)."""
        from onnx import numpy_helper

        return numpy_helper.to_array(self.stored[name]) if name in self.stored else None

    def consumers(self, name: str) -> list:
        return [node for node in every_node(self.graph) if name in node.input]

    def only_consumer(self, name: str, op_type: str):
        """The one node reading ``name``, if it is an ``op_type`` and ``name`` is no graph output; else None."""
        readers = self.consumers(name)
        if len(readers) == 1 and readers[0].op_type == op_type and name not in self.outputs:
            return readers[0]
        return None

    def store(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = _fresh(name, set(self.stored) | set(self.producer))
        self.stored[name] = numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name)
        self.graph.initializer.append(self.stored[name])
        return name

    def replace(self, old: list, new) -> None:
        """Put ``new`` where the first of ``old`` was, and remove ``old``."""
        nodes = self.graph.node
        position = min(list(nodes).index(node) for node in old)
        for node in old:
            nodes.remove(node)
        nodes.insert(position, new)
        self.producer.update({name: new for name in new.output})


def _lstm(node, graph: _Index) -> bool:
    """DynamicQuantizeLSTM → LSTM with W and R dequantized (per direction, or per direction and gate column)."""
    from onnx import helper

    inputs = list(node.input) + [""] * (12 - len(node.input))
    w = _dequantized(graph, inputs[1], inputs[8], inputs[9])
    r = _dequantized(graph, inputs[2], inputs[10], inputs[11])
    if w is None or r is None:
        return False
    label = node.name or node.output[0]
    names = [graph.store(f"{label}/W", w.transpose(0, 2, 1)), graph.store(f"{label}/R", r.transpose(0, 2, 1))]
    float_inputs = [inputs[0], *names, *inputs[3:_LSTM_INPUTS]]
    while float_inputs and not float_inputs[-1]:
        float_inputs.pop()
    lstm = helper.make_node("LSTM", float_inputs, list(node.output), name=node.name)
    lstm.attribute.extend(node.attribute)      # the contrib op's attributes are LSTM's own
    graph.replace([node], lstm)
    return True


def _dequantized(graph: _Index, quantized: str, scale: str, zero_point: str):
    """(w - zero_point) * scale of a DynamicQuantizeLSTM weight [D, rows, 4H]: scale and zero point [D] or [D, 4H]."""
    w, s = graph.weight(quantized), graph.weight(scale)
    z = graph.weight(zero_point) if zero_point else np.zeros_like(s, dtype=np.int32)
    if w is None or s is None or z is None or w.ndim != 3 or s.shape != z.shape:
        return None
    if s.shape not in ((w.shape[0],), (w.shape[0], w.shape[2])):
        return None
    shape = (w.shape[0], 1, -1)
    return (w.astype(np.float32) - z.astype(np.float32).reshape(shape)) * s.astype(np.float32).reshape(shape)


def _integer(node, graph: _Index) -> bool:
    """ConvInteger / MatMulInteger fed by DynamicQuantizeLinear and scaled back to float → Conv / MatMul."""
    from onnx import helper

    quantize = graph.producer.get(node.input[0])
    if quantize is None or quantize.op_type != "DynamicQuantizeLinear":
        return False
    if len(node.input) > 2 and node.input[2] not in ("", quantize.output[2]):
        return False
    chain = _scaled_output(node, graph, quantize.output[1])
    if chain is None:
        return False
    nodes, weight_scale, bias = chain
    conv = node.op_type == "ConvInteger"
    weight = _weight(graph, node, weight_scale, conv)
    if weight is None or (bias is not None and (not conv or bias.shape != (weight.shape[0],))):
        return False
    label = node.name or node.output[0]
    float_inputs = [quantize.input[0], graph.store(f"{label}/W", weight)]
    if bias is not None:
        float_inputs.append(graph.store(f"{label}/B", bias))
    replacement = helper.make_node("Conv" if conv else "MatMul", float_inputs, [nodes[-1].output[0]], name=node.name)
    if conv:
        replacement.attribute.extend(node.attribute)     # ConvInteger's attributes are Conv's own
    graph.replace([node, *nodes], replacement)
    return True


def _scaled_output(node, graph: _Index, input_scale: str):
    """The nodes that take ``node``'s int32 result back to float ([Add,] Cast, Mul), the weight scale's name and the
    float bias added in integers (or None); None when the chain has another form."""
    nodes, bias = [], None
    add = graph.only_consumer(node.output[0], "Add")
    if add is not None:
        bias = _quantized_bias(graph, next(n for n in add.input if n != node.output[0]))
        if bias is None:
            return None
        nodes.append(add)
    cast = graph.only_consumer(nodes[-1].output[0] if nodes else node.output[0], "Cast")
    if cast is None or _attribute(cast, "to") != _FLOAT:
        return None
    scale = graph.only_consumer(cast.output[0], "Mul")
    if scale is None:
        return None
    product = graph.producer.get(next((n for n in scale.input if n != cast.output[0]), ""))
    if product is None or product.op_type != "Mul" or input_scale not in product.input:
        return None
    weight_scale = next((n for n in product.input if n != input_scale), input_scale)
    return [*nodes, cast, scale], weight_scale, bias


def _quantized_bias(graph: _Index, name: str):
    """The float bias behind [Reshape](Cast(Floor(Div(bias, scale)))) (onnxruntime's older quantizer), else None."""
    node = graph.producer.get(name)
    if node is not None and node.op_type == "Reshape":
        node = graph.producer.get(node.input[0])
    for op_type in ("Cast", "Floor", "Div"):
        if node is None or node.op_type != op_type:
            return None
        if op_type != "Div":
            node = graph.producer.get(node.input[0])
    bias = graph.weight(node.input[0])
    return None if bias is None or bias.ndim != 1 else bias.astype(np.float32)


def _weight(graph: _Index, node, scale_name: str, conv: bool):
    """(w - zero_point) * scale of a ConvInteger weight [M, C, k...] (per output channel M) or a MatMulInteger
    weight [..., K, N] (per column N); None when anything is computed or the shapes do not fit."""
    w, scale = graph.weight(node.input[1]), graph.weight(scale_name)
    zero = graph.weight(node.input[3]) if len(node.input) > 3 and node.input[3] else np.zeros((), np.int32)
    if w is None or scale is None or zero is None or w.ndim < 2:
        return None
    channels = w.shape[0] if conv else w.shape[-1]
    shape = (-1,) + (1,) * (w.ndim - 1) if conv else (-1,)
    terms = []
    for array in (zero, scale):
        if array.size not in (1, channels):
            return None
        terms.append(array.astype(np.float32).reshape(shape if array.size > 1 else ()))
    return (w.astype(np.float32) - terms[0]) * terms[1]


def _attribute(node, name: str):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def _prune(proto) -> None:
    """Drop the nodes nothing reads any more (the activations' quantizing, the bias arithmetic), the initializers
    they leave unread and the com.microsoft opset once no node uses it."""
    graph = proto.graph
    while True:
        read = {name for node in every_node(graph) for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(name in read for name in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    drop_unused_initializers(graph)
    domains = {node.domain for node in every_node(graph)}
    imports = [o for o in proto.opset_import if o.domain in ("", "ai.onnx") or o.domain in domains]
    del proto.opset_import[:]
    proto.opset_import.extend(imports)


def _fresh(base: str, used: set) -> str:
    name, index = base, 1
    while name in used:
        name, index = f"{base}_{index}", index + 1
    return name
