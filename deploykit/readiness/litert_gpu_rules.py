"""The TFLite GPU delegate's per-op rules, as data: which builtin ops have a parser, the highest op version each
parser accepts, and the constraints each one checks.

Two upstream files are the source (google-ai-edge/LiteRT, read at f67457790, 2026-08-21, after tag v2.2.0):

- ``tflite/delegates/gpu/common/model_builder.cc`` — ``NewOperationParser`` (the op list: an op without a parser
  is "Operation is not supported."), each parser's ``CheckMaxSupportedOpVersion`` (the only version limits the
  delegate has; ``gpu_compatibility.cc`` checks no version), a few parser-specific checks (comparisons must feed
  one CAST/SELECT; a bool CAST needs a single-use producer), and ``IsAllAllowedTensors`` (no tensor of 5 or more
  dims; runtime tensors float16/32, or int8/uint8 since the default options allow quantized ops);
- ``tflite/tools/versioning/gpu_compatibility.cc`` — ``CheckGpuDelegateCompatibility``, the constraints most
  parsers call (runtime/constant input counts, constant int32 axes, 3-D/4-D slices, strides > 0, activations...).

Each check returns "" when the op passes, else one short sentence. Only ops that have a parser need their
``gpu_compatibility.cc`` case here: an op without a parser is refused before it. The graph context an op sees
(``OpSig``) mirrors upstream's ``OpSignature``: a tensor is constant when its buffer holds data, an omitted
optional input (index -1) is neither constant nor runtime.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

# ai_edge_litert.schema_py_generated enums, copied as numbers so the core needs no LiteRT import to hold the table.
FLOAT32, FLOAT16, INT32, UINT8, INT16, BOOL, INT8 = 0, 1, 2, 3, 7, 6, 9
TYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING", 6: "BOOL", 7: "INT16",
              8: "COMPLEX64", 9: "INT8", 10: "FLOAT64", 11: "COMPLEX128", 12: "UINT64", 13: "RESOURCE",
              14: "VARIANT", 15: "UINT32", 16: "UINT16", 17: "INT4", 18: "BFLOAT16", 19: "INT2"}
ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT", 6: "SIGMOID"}
SIGN_BIT = 5
TANH = 4


@dataclass(frozen=True)
class Operand:
    """One input or output of an operator, as the delegate sees it."""

    type: int | None          # schema TensorType; None for an omitted optional input
    dims: tuple = ()
    is_const: bool = False


@dataclass
class OpSig:
    """An operator with what its rules read: options (the schema's ``*OptionsT`` object), the raw custom options,
    its operands, and its neighbours (for the rules that look at producers and consumers)."""

    op: str
    version: int
    is_custom: bool = False      # a CUSTOM op, named ``op``
    options: object = None
    custom: bytes = b""
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    consumers: tuple = ()        # (op name, type of its output 0) for each consumer of output 0
    producer: str | None = None   # op name producing input 0; None for a graph input or a constant
    input_uses: int = 0          # how many operators read input 0


def _runtime_inputs(sig: OpSig) -> int:
    return sum(1 for t in sig.inputs if t.type is not None and not t.is_const)


def _const_inputs(sig: OpSig) -> int:
    return sum(1 for t in sig.inputs if t.is_const)


def _io(runtime: int, outputs: int, consts: int | None = None) -> Callable:
    """The check of upstream's CheckInputsOutputs / CheckInputsConstsOutputs."""
    def check(sig: OpSig) -> str:
        if consts is not None and _const_inputs(sig) != consts:
            return f"{_const_inputs(sig)} constant inputs; the delegate takes {consts}"
        if _runtime_inputs(sig) != runtime:
            return f"{_runtime_inputs(sig)} runtime inputs; the delegate takes {runtime}"
        if len(sig.outputs) != outputs:
            return f"{len(sig.outputs)} outputs; the delegate takes {outputs}"
        return ""
    return check


def _either(*checks: Callable) -> Callable:
    """Passes when any one of ``checks`` passes (e.g. two runtime inputs, or one runtime and one constant)."""
    def check(sig: OpSig) -> str:
        reasons = [c(sig) for c in checks]
        return "" if "" in reasons else "takes 2 runtime inputs, or 1 runtime and 1 constant input"
    return check


def _ok(sig: OpSig) -> str:
    return ""


def _activation(code: int) -> str:
    return f"fused activation {ACTIVATIONS.get(code, code)} unsupported" if code == SIGN_BIT else ""


def _option(sig: OpSig, name: str, default=0):
    return getattr(sig.options, name, default) if sig.options is not None else default


def _fused(sig: OpSig) -> str:
    return _activation(_option(sig, "fusedActivationFunction"))


def _positive(what: str, *values) -> str:
    return "" if all(v > 0 for v in values) else f"{what} must be > 0 (got {', '.join(map(str, values))})"


def _conv_io(sig: OpSig) -> str:
    """CheckConvolutionInputOutput: 1 or 2 runtime inputs (a second input present), exactly 1 output."""
    n = _runtime_inputs(sig)
    if n < 1 or n > 2:
        return f"{n} runtime inputs; the delegate takes 1 or 2"
    if len(sig.outputs) != 1:
        return f"{len(sig.outputs)} outputs; the delegate takes 1"
    return "" if n == 2 or len(sig.inputs) > 1 else "the filter input is missing"


def _conv2d(sig: OpSig) -> str:
    return (_conv_io(sig) or _positive("stride", _option(sig, "strideH"), _option(sig, "strideW"))
            or _positive("dilation", _option(sig, "dilationHFactor", 1), _option(sig, "dilationWFactor", 1))
            or _fused(sig))


def _depthwise(sig: OpSig) -> str:
    reason = _conv2d(sig)
    if reason:
        return reason
    x, w, y = sig.inputs[0].dims, sig.inputs[1].dims, sig.outputs[0].dims
    bias = sig.inputs[2] if len(sig.inputs) > 2 and sig.inputs[2].type is not None else None
    if len(x) != 4 or len(w) != 4 or len(y) != 4:
        return "input, filter and output must be 4-D"
    if x[0] != y[0]:
        return "input batch != output batch"
    if w[3] != y[3]:
        return "filter channels != output channels"
    if y[3] != x[3] * _option(sig, "depthMultiplier"):
        return "output channels != input channels x depth_multiplier"
    if bias is not None and _count(bias.dims) != y[3]:
        return "bias size != output channels"
    return ""


def _transpose_conv(sig: OpSig) -> str:
    return _conv_io(sig) or _positive("stride", _option(sig, "strideH"), _option(sig, "strideW"))


def _count(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _pooling(sig: OpSig) -> str:
    """Builtin pooling: 1 runtime input, 1 output, filter and stride > 0, a supported activation."""
    return (_io(1, 1)(sig) or _positive("filter", _option(sig, "filterHeight"), _option(sig, "filterWidth"))
            or _positive("stride", _option(sig, "strideH"), _option(sig, "strideW")) or _fused(sig))


def _broadcastable(a: tuple, b: tuple) -> str:
    """Upstream's enhanced-broadcast rule (what the offline check assumes): only ranks > 1 that differ are checked."""
    ranks_differ = len(a) > 1 and len(b) > 1 and len(a) != len(b)
    if ranks_differ and any(x != y and x != 1 and y != 1 for x, y in zip(reversed(a), reversed(b))):
        return f"cannot broadcast {list(a)} with {list(b)}"
    return ""


def _add(sig: OpSig) -> str:
    if len(sig.inputs) != 2:
        return "ADD takes exactly 2 inputs"
    return _broadcastable(sig.inputs[0].dims, sig.inputs[1].dims)


def _mul(sig: OpSig) -> str:
    if len(sig.inputs) != 2:
        return "MUL takes exactly 2 inputs"
    return _broadcastable(sig.inputs[0].dims, sig.inputs[1].dims) or _fused(sig)


def _axes_const(sig: OpSig) -> str:
    """CheckAxesAreInt32Const on input 1 (checked before the input count, so the reason names the axis)."""
    if len(sig.inputs) < 2:
        return "the axis input is missing"
    axes = sig.inputs[1]
    if not axes.is_const:
        return "axis is not a constant tensor"
    return "" if axes.type == INT32 else f"axis is {TYPE_NAMES.get(axes.type, axes.type)}, not INT32"


def _reduce(sig: OpSig) -> str:
    return _axes_const(sig) or _io(1, 1, consts=1)(sig)


def _cast(sig: OpSig) -> str:
    reason = _io(1, 1)(sig)
    if reason:
        return reason
    src, dst = sig.inputs[0].type, sig.outputs[0].type
    floats = (FLOAT16, FLOAT32)
    if (src == BOOL and dst in floats) or (src in floats and dst == BOOL) \
            or (src in (FLOAT32, INT32) and dst in (FLOAT32, INT32)):
        return ""
    return f"CAST {TYPE_NAMES.get(src, src)} -> {TYPE_NAMES.get(dst, dst)} unsupported"


def _cumsum(sig: OpSig) -> str:
    if len(sig.inputs) != 2 or len(sig.outputs) != 1:
        return "takes 2 inputs and 1 output"
    x, axis = sig.inputs
    if x.type not in (FLOAT16, FLOAT32) or sig.outputs[0].type != x.type:
        return "input and output must be the same float type"
    return "" if axis.type == INT32 and axis.is_const else "axis is not a constant INT32 tensor"


def _block_size(sig: OpSig) -> str:
    return _io(1, 1)(sig) or ("" if _option(sig, "blockSize") > 1 else "block_size must be > 1")


def _dequantize(sig: OpSig) -> str:
    if len(sig.inputs) != 1 or len(sig.outputs) != 1:
        return "takes 1 input and 1 output"
    return "INT16 dequantization unsupported" if sig.inputs[0].type == INT16 else ""


def _fully_connected(sig: OpSig) -> str:
    if not sig.inputs:
        return "no input"
    if _option(sig, "weightsFormat") != 0:
        return "shuffled weights format unsupported"
    if _runtime_inputs(sig) > 2:
        return "more than 2 runtime inputs"
    if sig.inputs[0].is_const:
        return "a constant first input is unsupported"
    if _option(sig, "keepNumDims", False) and sig.outputs and len(sig.inputs[0].dims) != len(sig.outputs[0].dims):
        return "keep_num_dims with input and output ranks that differ"
    return ""


def _gather(sig: OpSig) -> str:
    if _either(_io(2, 1, consts=0), _io(1, 1, consts=1))(sig):
        return "takes 2 runtime inputs, or 1 runtime and 1 constant input"
    if sig.inputs[0].type == INT32:
        return "INT32 data unsupported"
    if len(sig.inputs[1].dims) != 1:
        return "indices must be 1-D"
    return "" if sig.inputs[1].type == INT32 else "indices must be INT32"


def _lstm(sig: OpSig) -> str:
    if _option(sig, "kernelType") == 0:      # full kernel
        if len(sig.inputs) not in (20, 24):
            return f"{len(sig.inputs)} inputs; the full LSTM kernel takes 20 or 24"
        if len(sig.outputs) != 1:
            return "the full LSTM kernel has 1 output"
        act = _option(sig, "fusedActivationFunction")
        return "" if act in (TANH, 6) else f"activation {ACTIVATIONS.get(act, act)}; only SIGMOID or TANH"
    reason = _io(3, 4, consts=2)(sig)
    if reason:
        return reason
    if sig.outputs[3].dims and sig.outputs[3].dims[-1] % 4:
        return "basic LSTM activation depth must be a multiple of 4"
    if _option(sig, "fusedActivationFunction") != TANH:
        return "basic LSTM supports only TANH"
    return "" if _option(sig, "cellClip", 0.0) == 0 and _option(sig, "projClip", 0.0) == 0 else "cell/proj clip unsupported"


def _one_hot(sig: OpSig) -> str:
    if len(sig.inputs) != 4 or len(sig.outputs) != 1:
        return "takes 4 inputs and 1 output"
    indices, _, on, off = sig.inputs
    axis, dims = _option(sig, "axis"), indices.dims
    if indices.type != INT32 or (axis != -1 and (not dims or axis != dims[-1])):
        return "indices must be INT32 and the axis -1 (last)"
    if any(d != 1 for i, d in enumerate(dims[:-1]) if not (len(dims) > 3 and i == 0)):
        return "only batch and channel dims may be non-singleton"
    scalar = all(t.type == FLOAT32 and t.is_const and len(t.dims) <= 1 and (not t.dims or t.dims[0] <= 1)
                 for t in (on, off))
    return "" if scalar else "on/off values must be constant FLOAT32 scalars"


def _pad(sig: OpSig) -> str:
    if sig.op == "MIRROR_PAD" and _option(sig, "mode") != 0:
        return "only REFLECT mirror padding"
    reason = _io(1, 1)(sig)
    if reason or len(sig.inputs) < 2:
        return reason or "the paddings input is missing"
    dims = sig.inputs[1].dims
    if len(dims) != 2 or dims[0] not in (3, 4) or dims[1] != 2:
        return f"paddings {list(dims)}; the delegate pads 3-D or 4-D tensors (paddings 3x2 or 4x2)"
    return ""


def _select(sig: OpSig) -> str:
    if len(sig.inputs) != 3 or len(sig.outputs) != 1:
        return "takes 3 inputs and 1 output"
    cond, then, other = sig.inputs
    out = sig.outputs[0].dims
    bad = "condition bool/float, branches float, each branch scalar or output-shaped"
    if cond.type not in (BOOL, FLOAT16, FLOAT32) or then.type not in (FLOAT16, FLOAT32) \
            or other.type not in (FLOAT16, FLOAT32):
        return bad
    offset = len(out) - len(cond.dims)
    if cond.dims and (offset < 0 or any(c != out[offset + i] and c != 1 for i, c in enumerate(cond.dims))):
        return bad
    for branch in (then, other):
        if branch.dims and branch.dims != out and (len(branch.dims) > 1 or branch.dims[0] > 1):
            return bad
        if not branch.is_const and len(branch.dims) == 2:
            return "a 2-D branch must be constant"
    return ""


def _slice_(sig: OpSig) -> str:
    if len(sig.inputs) < 3:
        return "takes 3 inputs"
    rank = len(sig.inputs[0].dims)
    return "" if rank in (3, 4) else f"{rank}-D input; the delegate slices 3-D or 4-D tensors"


def _strided_slice(sig: OpSig) -> str:
    for mask, name in (("ellipsisMask", "ellipsis"), ("newAxisMask", "new_axis"), ("shrinkAxisMask", "shrink_axis")):
        if _option(sig, mask):
            return f"{name}_mask unsupported"
    if len(sig.inputs) < 4:
        return "takes 4 inputs"
    rank = len(sig.inputs[0].dims)
    return "" if rank in (3, 4) else f"{rank}-D input; the delegate slices 3-D or 4-D tensors"


def _softmax(sig: OpSig) -> str:
    return "" if _option(sig, "beta", 0.0) == 1 else f"beta {_option(sig, 'beta', 0.0)} != 1"


def _resize_bilinear(sig: OpSig) -> str:
    both = _option(sig, "alignCorners", False) and _option(sig, "halfPixelCenters", False)
    return _io(1, 1)(sig) or ("align_corners with half_pixel_centers" if both else "")


def _binary(sig: OpSig) -> str:
    reason = _either(_io(2, 1, consts=0), _io(1, 1, consts=1))(sig)
    return reason or (_fused(sig) if sig.op in ("DIV", "SUB") else "")


# -- CUSTOM ops: the four the delegate parses. At run time a custom op's options reach the parser raw
# (``custom_initial_data``) and are read as the C structs TfLitePoolParams / TfLiteTransposeConvParams
# (little-endian int32 fields: padding, stride_w, stride_h, filter_w, filter_h, _activation).
def _struct(sig: OpSig, count: int) -> tuple | None:
    return struct.unpack_from(f"<{count}i", sig.custom) if len(sig.custom) >= 4 * count else None


def _transpose_conv_bias(sig: OpSig) -> str:
    fields = _struct(sig, 3)
    if len(sig.inputs) < 2 or fields is None:
        return "its inputs or custom options are missing"
    return _positive("stride", fields[2], fields[1])


def _max_pool_argmax(sig: OpSig) -> str:
    fields = _struct(sig, 6)
    if fields is None:
        return "its custom options are missing"
    return (_io(1, 2)(sig) or _positive("filter", fields[4], fields[3])
            or _positive("stride", fields[2], fields[1]) or _activation(fields[5]))


def _max_unpool(sig: OpSig) -> str:
    fields = _struct(sig, 5)
    reason = _io(2, 1)(sig)
    if reason or fields is None:
        return reason or "its custom options are missing"
    return _positive("filter", fields[4], fields[3]) or _positive("stride", fields[2], fields[1])


def _resampler(sig: OpSig) -> str:
    reason = _io(2, 1)(sig)
    if reason:
        return reason
    src, warp = sig.inputs[0].dims, sig.inputs[1].dims
    if len(src) != 4 or len(warp) != 4:
        return "src and warp must be 4-D"
    return "src batch != warp batch" if src[0] != warp[0] else ("warp has < 2 channels" if warp[3] < 2 else "")


CUSTOM_OPS = {"Convolution2DTransposeBias": _transpose_conv_bias, "MaxPoolingWithArgmax2D": _max_pool_argmax,
              "MaxUnpooling2D": _max_unpool, "Resampler": _resampler}


# -- model_builder.cc's own checks, before or instead of gpu_compatibility.cc.
LOGICAL = ("GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL")


def _logical_chain(sig: OpSig) -> str:
    """A comparison is taken only when its one consumer is a CAST/SELECT/SELECT_V2 that outputs floats."""
    if len(sig.consumers) != 1:
        return f"a comparison must feed exactly one op (it feeds {len(sig.consumers)})"
    op, out_type = sig.consumers[0]
    if op in ("CAST", "SELECT", "SELECT_V2") and out_type in (FLOAT16, FLOAT32):
        return ""
    return "a comparison is taken only when it feeds one CAST/SELECT to float"


def _cast_from_bool(sig: OpSig) -> str:
    """A bool -> float CAST must read a tensor that one op produces and only it reads, and feed one op."""
    if not sig.inputs or sig.inputs[0].type != BOOL or not sig.outputs \
            or sig.outputs[0].type not in (FLOAT16, FLOAT32):
        return ""
    if sig.producer is None or sig.input_uses != 1:
        return "a bool CAST needs an input produced by one op and used only here"
    return "" if len(sig.consumers) == 1 else "a CAST from bool must feed exactly one op"


class Parser(NamedTuple):
    """One parser of model_builder.cc: its version limit (None: none), its own check, its gpu_compatibility.cc
    case (None when the parser does not call CheckGpuDelegateCompatibility)."""

    max_version: int | None
    builder: Callable | None
    compat: Callable | None


_UNARY = ("ABS", "CEIL", "COS", "ELU", "EXP", "FLOOR", "GELU", "LOG", "LOGISTIC", "NEG", "RSQRT", "SIGN", "SIN",
          "SQRT", "SQUARE", "TANH")
_BINARY = ("DIV", "FLOOR_DIV", "FLOOR_MOD", "LOGICAL_AND", "MAXIMUM", "MINIMUM", "POW", "SQUARED_DIFFERENCE", "SUB")

# model_builder.cc's NewOperationParser, op by op (CEIL has a gpu_compatibility.cc case but no parser: left out).
PARSERS = {
    **{op: Parser(2, None, _io(1, 1, consts=0)) for op in _UNARY if op != "CEIL"},
    **{op: Parser(2, None, _binary) for op in _BINARY},
    **{op: Parser(2, _logical_chain, None) for op in LOGICAL},
    "ADD": Parser(2, None, _add), "ADD_N": Parser(2, None, lambda s: "" if len(s.inputs) == 2 else "takes 2 inputs"),
    "MUL": Parser(3, None, _mul),
    "AVERAGE_POOL_2D": Parser(2, None, _pooling), "MAX_POOL_2D": Parser(2, None, _pooling),
    "BATCH_MATMUL": Parser(None, None, lambda s: "" if (len(s.inputs), len(s.outputs)) == (2, 1)
                           else "takes 2 inputs and 1 output"),
    "CAST": Parser(None, _cast_from_bool, _cast),
    "CONCATENATION": Parser(2, None, _ok),
    "CONV_2D": Parser(6, None, _conv2d), "DEPTHWISE_CONV_2D": Parser(6, None, _depthwise),
    "TRANSPOSE_CONV": Parser(3, None, _transpose_conv),
    "CUMSUM": Parser(1, None, _cumsum), "DENSIFY": Parser(1, None, _io(0, 1)),
    "DEPTH_TO_SPACE": Parser(None, None, _block_size), "SPACE_TO_DEPTH": Parser(2, None, _block_size),
    "DEQUANTIZE": Parser(3, None, _dequantize), "QUANTIZE": Parser(2, None, _io(1, 1)),
    "FULLY_CONNECTED": Parser(9, None, _fully_connected), "GATHER": Parser(1, None, _gather),
    "HARD_SWISH": Parser(None, None, _io(1, 1)), "LSTM": Parser(4, None, _lstm),
    "MEAN": Parser(None, None, _reduce),
    **{op: Parser(None, None, _reduce) for op in ("REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "SUM")},
    "ONE_HOT": Parser(1, None, _one_hot), "PACK": Parser(None, None, _ok), "UNPACK": Parser(None, None, None),
    "PAD": Parser(2, None, _pad), "PADV2": Parser(2, None, _pad), "MIRROR_PAD": Parser(2, None, _pad),
    "PRELU": Parser(1, None, None),
    **{op: Parser(2, None, None) for op in ("RELU", "RELU6", "RELU_0_TO_1", "RELU_N1_TO_1", "LEAKY_RELU")},
    "RESHAPE": Parser(1, None, _io(1, 1)), "TILE": Parser(None, None, _io(1, 1)),
    "TRANSPOSE": Parser(4, None, _io(1, 1)),
    "RESIZE_BILINEAR": Parser(3, None, _resize_bilinear), "RESIZE_NEAREST_NEIGHBOR": Parser(3, None, _io(1, 1)),
    "SELECT": Parser(1, None, _select), "SELECT_V2": Parser(1, None, _select),
    "SLICE": Parser(2, None, _slice_), "STRIDED_SLICE": Parser(4, None, _strided_slice),
    "SOFTMAX": Parser(2, None, _softmax), "SPLIT": Parser(None, None, _ok), "SPLIT_V": Parser(None, None, _ok),
}

# Ops gpu_compatibility.cc has a case for but model_builder.cc has no parser for (LiteRT's ML Drift GPU
# accelerator parses some of them; the TFLite GPU delegate refuses them all).
COMPAT_ONLY = frozenset({
    "BITCAST", "CEIL", "DYNAMIC_UPDATE_SLICE", "EMBEDDING_LOOKUP", "REDUCE_ALL", "REDUCE_ANY", "REVERSE_V2",
    "TOPK_V2", "ATAN2", "LOGICAL_NOT", "LOGICAL_OR", "ROUND", "RIGHT_SHIFT", "STABLEHLO_REMAINDER",
    "STABLEHLO_SHIFT_LEFT", "STABLEHLO_BROADCAST_IN_DIM", "STABLEHLO_CBRT", "STABLEHLO_CLAMP"})


def tensor_problem(sig: OpSig, allow_quant: bool = True) -> tuple:
    """model_builder.cc's IsAllAllowedTensors: (reason, "ranks" | "types") or ("", "")."""
    for kind, tensors in (("input", sig.inputs), ("output", sig.outputs)):
        for t in tensors:
            if t.type is not None and len(t.dims) >= 5:
                return f"{len(t.dims)}-D {kind}; the delegate handles up to 4-D", "ranks"
    ins, outs = _allowed_types(sig.op, allow_quant)
    for kind, tensors, allowed in (("input", sig.inputs, ins), ("output", sig.outputs, outs)):
        for t in tensors:
            if t.type is not None and not t.is_const and t.type not in allowed:
                return f"runtime {kind} of type {TYPE_NAMES.get(t.type, t.type)}", "types"
    return "", ""


def _allowed_types(op: str, allow_quant: bool) -> tuple:
    ins, outs = {FLOAT32, FLOAT16}, {FLOAT32, FLOAT16}
    if allow_quant:
        ins |= {INT8, UINT8}
        outs |= {INT8, UINT8}
    if op in LOGICAL:
        outs.add(BOOL)
    extra_in = {"CAST": {BOOL, INT32}, "ONE_HOT": {INT32}, "SELECT": {BOOL}, "SELECT_V2": {BOOL},
                "LOGICAL_AND": {BOOL}, "GATHER": {INT32}}
    ins |= extra_in.get(op, set())
    if op == "CAST":
        outs |= {INT32, BOOL}
    if op == "LOGICAL_AND":
        outs.add(BOOL)
    return ins, outs
