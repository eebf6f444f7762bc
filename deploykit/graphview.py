"""One view of a model's graph for every format, so that layers can be matched across formats.

A runtime module describes its graph as a GraphView (ops in execution order, constant tensors with
a fingerprint of their values); the locator (``deploykit.checking.locate``) matches the *weighted layers* of
two views and compares their outputs. Framework-free: builders hand in plain names and numpy arrays.

Why weights: exporters rename every tensor (torch FX ``conv2d`` → ONNX ``getitem`` → onnx2tf
``model/tf.nn.convolution/...``), but a layer's weights survive each hop: by name (a PyTorch
parameter's path is the ONNX initializer's name), by value (onnx2tf transposes, never changes them),
or at least by size and order (folded BatchNorm, quantization, a damaged file).

A layer's comparison point is the end of its *group*: the weighted op followed by the elementwise
ops a converter may fuse into it (bias add, BatchNorm, activation, Q/DQ). Converters fuse
differently (TFLite's CONV_2D carries RELU6, ONNX has Conv then Clip), so only group ends coincide.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

# Ops a converter may fold into the weighted op before them: compared only at the group's end.
# Names are normalised (lower case, no "aten."/".default"/underscores) so one set serves ONNX, TFLite and FX.
_FOLLOWERS = frozenset("""
relu relu6 relun1to1 clip hardtanh sigmoid logistic tanh leakyrelu hardsigmoid hardswish elu selu gelu silu
softplus prelu batchnormalization batchnorm nativebatchnormlegitnotraining getitem quantizelinear
dequantizelinear quantize dequantize add mul sub div identity dropout
""".split())
# A constant of this rank or more is a layer's weight (biases, BatchNorm and LayerNorm vectors are not).
_WEIGHT_RANK = 2


def kind(op_type: str) -> str:
    """``aten.hardtanh_.default`` / ``HardTanh`` / ``HARD_TANH`` → ``hardtanh``."""
    name = op_type.lower().removeprefix("aten.").removesuffix(".default")
    return name.replace("_", "").replace(".", "")


def digest(values: np.ndarray) -> str:
    """A fingerprint of a constant's values that survives transposes and reshapes (sorted float32 bytes)."""
    flat = np.sort(np.asarray(values, dtype=np.float32).ravel())
    return hashlib.sha1(flat.tobytes()).hexdigest()[:16]


@dataclass
class Op:
    name: str
    type: str
    inputs: list
    outputs: list
    label: str = ""          # where it comes from, in its own framework's terms (a module path, a node name)


@dataclass
class Constant:
    shape: list
    digest: str
    origin: str              # the weight's own name (a PyTorch parameter path, an ONNX initializer)
    dtype: str = "float32"

    @property
    def is_weight(self) -> bool:
        """Float or quantized (8-bit) values of rank 2 or more: a layer's weights (not a shape, pads or a bias)."""
        return (len(self.shape) >= _WEIGHT_RANK and self.count > 1
                and (self.dtype.startswith(("float", "bfloat")) or self.dtype in ("int8", "uint8")))

    @property
    def count(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class Layer:
    """A weighted op and the elementwise ops after it: compared at ``end``."""

    op: Op
    weight: str              # the weight tensor's name in its graph
    end: str                 # the tensor compared
    chain: list = field(default_factory=list)   # op types from the weighted op to ``end``
    index: int = 0           # position among the graph's layers (execution order)

    @property
    def start(self) -> str:
        """The weighted op's own output (before what a converter may fuse into it)."""
        return self.op.outputs[0]


@dataclass
class GraphView:
    ops: list                                    # Op, in execution order; constant-only ops removed
    constants: dict                              # tensor name -> Constant
    outputs: list = field(default_factory=list)  # the graph's output tensors

    def layers(self) -> list:
        """The weighted ops in execution order, each with the end of its group."""
        consumers = self._consumers()
        anchors = [op for op in self.ops if self.weight_of(op)]
        anchor_names = {op.name for op in anchors}
        return [Layer(op, self.weight_of(op), *self._group_end(op, consumers, anchor_names), index=i)
                for i, op in enumerate(anchors)]

    def weight_of(self, op: Op) -> str:
        """The op's largest weight input ("" when it has none)."""
        weights = [name for name in op.inputs if name in self.constants and self.constants[name].is_weight]
        return max(weights, key=lambda name: self.constants[name].count, default="")

    def _consumers(self) -> dict:
        consumers: dict = {}
        for op in self.ops:
            for name in op.inputs:
                consumers.setdefault(name, []).append(op)
        return consumers

    def _group_end(self, op: Op, consumers: dict, anchor_names: set) -> tuple:
        tensor, chain = op.outputs[0], [op.type]
        while tensor not in self.outputs:
            users = consumers.get(tensor, [])
            if len(users) != 1:
                break
            user = users[0]
            variable = [name for name in user.inputs if name and name not in self.constants]
            if user.name in anchor_names or kind(user.type) not in _FOLLOWERS or variable != [tensor]:
                break
            tensor, chain = user.outputs[0], chain + [user.type]
        return tensor, chain

    def to_dict(self) -> dict:
        return {"ops": [asdict(op) for op in self.ops], "outputs": list(self.outputs),
                "constants": {name: asdict(c) for name, c in self.constants.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "GraphView":
        return cls([Op(**op) for op in data["ops"]], {n: Constant(**c) for n, c in data["constants"].items()},
                   list(data.get("outputs", [])))


def fold_constant_ops(ops: list, constants: dict) -> list:
    """Drop ops whose inputs are all constants (a weight's DequantizeLinear, Transpose, Cast), making their
    outputs constants that keep the fingerprint and origin of their largest input."""
    kept = []
    for op in ops:
        inputs = [name for name in op.inputs if name]
        if inputs and all(name in constants for name in inputs):
            largest = max(inputs, key=lambda name: constants[name].count)
            for name in op.outputs:
                constants[name] = Constant(**asdict(constants[largest]))
        else:
            kept.append(op)
    return kept


def onnx_view(model) -> GraphView:
    """The GraphView of an ONNX ModelProto (weights from initializers and Constant nodes)."""
    from onnx import numpy_helper

    constants = {t.name: _constant(numpy_helper.to_array(t), t.name) for t in model.graph.initializer}
    ops = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            value = numpy_helper.to_array(node.attribute[0].t)
            constants[node.output[0]] = _constant(value, node.output[0])
            continue
        ops.append(Op(node.name or node.output[0], node.op_type, list(node.input), list(node.output),
                      node.name or node.output[0]))
    return GraphView(fold_constant_ops(ops, constants), constants, [o.name for o in model.graph.output])


def _constant(value: np.ndarray, name: str) -> Constant:
    value = np.asarray(value)
    fingerprint = digest(value) if value.dtype.kind in "fiub" and value.size > 1 else ""
    return Constant(list(value.shape), fingerprint, origin_name(name), value.dtype.name)


def origin_name(name: str) -> str:
    """A weight's name without the suffixes quantizers and exporters add (``w_quantized``, ``w_DequantizeLinear_Output``)."""
    for suffix in ("_DequantizeLinear_Output", "_quantized", "_scale", "_zero_point"):
        name = name.removesuffix(suffix)
    return name


def view_points(view: GraphView) -> list:
    """The tensors a capture must keep: every layer's output and its group's end, and the graph's outputs."""
    ends = [name for layer in view.layers() for name in (layer.start, layer.end)]
    return list(dict.fromkeys(ends + list(view.outputs)))

