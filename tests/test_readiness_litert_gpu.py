"""LiteRT GPU-delegate readiness: deploykit's per-op verdict from the delegate's rules, and the analyzer's claim.

Models are flatbuffers written here with LiteRT's own schema (no converter: milliseconds). Recorded analyzer text
under tests/data/readiness/: ``analyzer_litert_tf_model.txt`` (ai-edge-litert 2.3.0 on a TF 2.21 conversion of
rfft2d + segment_sum + top_k + sort + while_loop: 3 subgraphs), ``analyzer_litert_constraints.txt`` and
``analyzer_tf221_constraints.txt`` (ai-edge-litert 2.3.0 and TF 2.21 on a hand-built model the delegate refuses
op by op), ``analyzer_synthetic_warnings.txt`` (SYNTHETIC, labelled in its first lines: the warning format of
TensorFlow's older analyzer, which no installed build prints).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import ModelLoadError, ToolOutputError

pytestmark = pytest.mark.litert

DATA = Path(__file__).parent / "data" / "readiness"
F32, F16, I32, C64, BOOL = 0, 1, 2, 8, 6


def _tflite(path: Path, tensors: list, ops: list, inputs: list, outputs: list, consts: dict | None = None) -> str:
    """Write a one-subgraph .tflite: tensors are (shape, type); ops are (name or ("CUSTOM", name), version,
    inputs, outputs, options or None); consts maps a tensor index to its data."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT()
    model.version, model.buffers, model.operatorCodes = 3, [s.BufferT()], []
    graph = s.SubGraphT()
    graph.name, graph.inputs, graph.outputs, graph.tensors, graph.operators = "main", inputs, outputs, [], []
    for i, (shape, kind) in enumerate(tensors):
        tensor = s.TensorT()
        tensor.shape, tensor.type, tensor.name, tensor.buffer = list(shape), kind, f"t{i}", 0
        if i in (consts or {}):
            buffer = s.BufferT()
            buffer.data = list(np.asarray(consts[i]).tobytes())
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1
        graph.tensors.append(tensor)
    codes = {}
    for name, version, ins, outs, options in ops:
        if (name, version) not in codes:
            code = s.OperatorCodeT()
            custom = isinstance(name, tuple)
            code.builtinCode = s.BuiltinOperator.CUSTOM if custom else getattr(s.BuiltinOperator, name)
            code.customCode = name[1] if custom else None
            code.deprecatedBuiltinCode, code.version = min(code.builtinCode, 127), version
            codes[(name, version)] = len(model.operatorCodes)
            model.operatorCodes.append(code)
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes[(name, version)], ins, outs
        if options is not None:
            op.builtinOptionsType = getattr(s.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        graph.operators.append(op)
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return str(path)


def _conv(activation: int = 0):
    from ai_edge_litert import schema_py_generated as s

    options = s.Conv2DOptionsT()
    options.strideH = options.strideW = 1
    options.fusedActivationFunction = activation
    return options


def _by_op(verdicts: list) -> dict:
    return {v["op"]: v for v in verdicts}


def test_rfft2d_segment_sum_topk_are_named_though_the_analyzer_says_compatible(tmp_path):
    from deploykit.readiness import litert_analyzer, litert_gpu

    path = _tflite(tmp_path / "fft.tflite",
                   [([1, 8, 8], F32), ([2], I32), ([1, 8, 5], C64), ([6, 4], F32), ([6], I32), ([3, 4], F32),
                    ([16], F32), ([], I32), ([3], F32), ([3], I32)],
                   [("RFFT2D", 1, [0, 1], [2], None), ("SEGMENT_SUM", 1, [3, 4], [5], None),
                    ("TOPK_V2", 1, [6, 7], [8, 9], None)],
                   [0, 3, 6], [2, 5, 8], consts={1: np.int32([8, 8]), 4: np.int32([0, 0, 1, 1, 2, 2]),
                                                 7: np.int32(3)})
    verdicts = _by_op(litert_gpu.gpu_verdicts(path))
    assert not any(v["supported"] for v in verdicts.values())
    for op in ("RFFT2D", "SEGMENT_SUM"):
        assert verdicts[op]["reason"] == "not in the GPU delegate's op list"
        assert verdicts[op]["rule"] == "gpu_compatibility.cc: op list"
    # TOPK_V2 has a gpu_compatibility.cc case since LiteRT 76ed14655 (2025-10) but no TFLite GPU delegate parser.
    assert verdicts["TOPK_V2"]["rule"] == "model_builder.cc: op list"
    # The trap: the installed analyzer calls the same file GPU-compatible. If a build fixes it, this fails.
    claim = litert_analyzer.parse_analyzer(litert_analyzer.run_analyzer(path), "test")
    assert claim["gpu_claim"] == "compatible" and claim["gpu_failures"] == []
    assert [o["op"] for o in claim["subgraphs"][0]["ops"]] == ["RFFT2D", "SEGMENT_SUM", "TOPK_V2"]


def test_constraints_refuse_an_op_with_their_reason_and_rule(tmp_path):
    from deploykit.readiness import litert_gpu

    path = _tflite(tmp_path / "constraints.tflite",
                   [([1, 8, 8, 3], F32), ([4, 3, 3, 3], F32), ([4], F32), ([1, 8, 8, 4], F32), ([1], I32),
                    ([1, 8, 4], F32), ([1, 2, 2, 2, 2], F32), ([1, 2, 2, 2, 2], F32), ([1, 8, 4], F32),
                    ([1, 8, 8, 4], F32)],
                   [("CONV_2D", 7, [0, 1, 2], [3], _conv()), ("MEAN", 1, [3, 4], [5], None),
                    ("ADD", 1, [6, 6], [7], None), (("CUSTOM", "Landmarks2TransformMatrix"), 1, [5], [8], None),
                    ("CONV_2D", 1, [0, 1, 2], [9], _conv(activation=5))],
                   [0, 4, 6], [5, 7, 8, 9], consts={1: np.zeros((4, 3, 3, 3), np.float32), 2: np.zeros(4, np.float32)})
    got = [(v["op"], v["supported"], v["reason"], v["rule"]) for v in litert_gpu.gpu_verdicts(path)]
    assert got == [
        ("CONV_2D", False, "version 7 > supported 6", "model_builder.cc: CONV_2D version"),
        ("MEAN", False, "axis is not a constant tensor", "gpu_compatibility.cc: MEAN rule"),
        ("ADD", False, "5-D input; the delegate handles up to 4-D", "model_builder.cc: tensor ranks"),
        ("Landmarks2TransformMatrix", False, "custom op 'Landmarks2TransformMatrix' is not a GPU delegate custom op",
         "gpu_compatibility.cc: custom op list"),
        ("CONV_2D", False, "fused activation SIGN_BIT unsupported", "gpu_compatibility.cc: CONV_2D rule")]


def test_a_plain_conv_add_relu_model_is_fully_supported(tmp_path):
    from deploykit.readiness import litert_gpu

    path = _tflite(tmp_path / "plain.tflite",
                   [([1, 8, 8, 3], F32), ([4, 3, 3, 3], F32), ([4], F32), ([1, 8, 8, 4], F32), ([1, 8, 8, 4], F32),
                    ([1, 8, 8, 4], F32)],
                   [("CONV_2D", 1, [0, 1, 2], [3], _conv()), ("ADD", 1, [3, 3], [4], None),
                    ("RELU", 1, [4], [5], None)],
                   [0], [5], consts={1: np.ones((4, 3, 3, 3), np.float32), 2: np.zeros(4, np.float32)})
    verdicts = litert_gpu.gpu_verdicts(path)
    assert [(v["index"], v["op"], v["supported"], v["reason"]) for v in verdicts] == [
        (0, "CONV_2D", True, ""), (1, "ADD", True, ""), (2, "RELU", True, "")]
    assert verdicts[0]["rule"] == "gpu_compatibility.cc: CONV_2D rule"


@pytest.mark.parametrize("with_fft", [False, True])
def test_fp16_weights_are_read_through_their_dequantize(tmp_path, with_fft):
    """The partitioner judges a conv as reading its fp16 constant weights, and takes their DEQUANTIZE only when it
    delegates the whole graph (FP16GraphPartitionHelper)."""
    from deploykit.readiness import litert_gpu

    tensors = [([1, 8, 8, 3], F32), ([4, 3, 3, 3], F16), ([4, 3, 3, 3], F32), ([1, 8, 8, 4], F32)]
    ops = [("DEQUANTIZE", 2, [1], [2], None), ("CONV_2D", 1, [0, 2], [3], _conv())]
    outputs = [3]
    if with_fft:
        tensors += [([1, 8, 8], F32), ([2], I32), ([1, 8, 5], C64)]
        ops.append(("RFFT2D", 1, [4, 5], [6], None))
        outputs.append(6)
    path = _tflite(tmp_path / "fp16.tflite", tensors, ops, [0] + ([4] if with_fft else []), outputs,
                   consts={1: np.ones((4, 3, 3, 3), np.float16), 5: np.int32([8, 8])})
    verdicts = _by_op(litert_gpu.gpu_verdicts(path))
    assert verdicts["CONV_2D"]["supported"]
    assert verdicts["DEQUANTIZE"]["supported"] is not with_fft
    assert verdicts["DEQUANTIZE"]["rule"] == "delegates/utils.cc: FP16GraphPartitionHelper"


def test_a_comparison_is_taken_only_when_it_feeds_a_float_select(tmp_path):
    from deploykit.readiness import litert_gpu

    tensors = [([1, 4, 4, 2], F32), ([1, 4, 4, 2], F32), ([1, 4, 4, 2], BOOL), ([1, 4, 4, 2], F32),
               ([1, 4, 4, 2], BOOL)]
    ops = [("LESS", 1, [0, 1], [2], None), ("SELECT_V2", 1, [2, 0, 1], [3], None), ("GREATER", 1, [0, 1], [4], None)]
    verdicts = litert_gpu.gpu_verdicts(_tflite(tmp_path / "cmp.tflite", tensors, ops, [0, 1], [3, 4]))
    assert [(v["op"], v["supported"]) for v in verdicts] == [("LESS", True), ("SELECT_V2", True), ("GREATER", False)]
    assert verdicts[2]["rule"] == "model_builder.cc: GREATER rule"


def test_a_file_that_is_not_tflite_is_a_load_error(tmp_path):
    from deploykit.readiness import litert_analyzer, litert_gpu

    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a TFLite flatbuffer"):
        litert_gpu.gpu_verdicts(str(bad))
    with pytest.raises(ModelLoadError, match="not a valid Flatbuffer"):
        litert_analyzer.run_analyzer(str(bad))


@pytest.mark.parametrize("name, runtime, ops", [
    ("analyzer_litert_tf_model.txt", "2.22.0-dev0+selfbuilt",
     [["SEGMENT_SUM", "TOPK_V2", "NEG", "TOPK_V2", "NEG", "RFFT2D", "COMPLEX_ABS", "WHILE"], ["LESS"],
      ["ADD", "ADD", "ADD"]]),
    ("analyzer_litert_constraints.txt", "2.22.0-dev0+selfbuilt",
     [["CONV_2D", "MEAN", "ADD", "Landmarks2TransformMatrix"]]),
    ("analyzer_tf221_constraints.txt", "2.21.0", [["CONV_2D", "MEAN", "ADD", "Landmarks2TransformMatrix"]]),
])
def test_recorded_analyzer_text_parses_to_its_ops_and_claim(name, runtime, ops):
    from deploykit.readiness.litert_analyzer import parse_analyzer

    parsed = parse_analyzer((DATA / name).read_text(), "2.3.0")
    assert [[o["op"] for o in g["ops"]] for g in parsed["subgraphs"]] == ops
    assert [o["index"] for o in parsed["subgraphs"][0]["ops"]] == list(range(len(ops[0])))
    assert (parsed["gpu_claim"], parsed["gpu_failures"], parsed["runtime_version"]) == ("compatible", [], runtime)


def test_synthetic_warning_lines_parse_to_failures():
    from deploykit.readiness.litert_analyzer import parse_analyzer

    parsed = parse_analyzer((DATA / "analyzer_synthetic_warnings.txt").read_text(), "2.3.0")
    assert parsed["gpu_claim"] == "incompatible" and parsed["runtime_version"] == "2.21.0"
    assert [g["name"] for g in parsed["subgraphs"]] == ["main", "while_cond", "while_body"]
    assert [(f["subgraph"], f["index"], f["op"], f["reason"]) for f in parsed["gpu_failures"]] == [
        (0, 0, "SEGMENT_SUM", "Not supported op SEGMENT_SUM"), (0, 5, "RFFT2D", "Not supported op RFFT2D"),
        (0, 6, "COMPLEX_ABS", "Not supported op COMPLEX_ABS"), (0, 7, "WHILE", "Not supported op WHILE")]


def _drop(prefix):
    return lambda text: "\n".join(line for line in text.splitlines() if not line.startswith(prefix))


@pytest.mark.parametrize("mangle, what", [
    (_drop("Your model looks compatible"), "no GPU verdict line"),
    (_drop(("Subgraph#", "  Op#")), "no 'Subgraph#' header"),
    (_drop("  Op#0"), "unknown shape"),
    (_drop("Your TFLite model has"), "subgraph(s)' line"),
    (lambda t: t.replace("on TFLite runtime version", "for runtime"), "unknown shape"),
    (lambda t: t.replace("  Op#1 MEAN", "  Op#2 MEAN"), "unknown shape"),
    (lambda t: t.replace("Your model looks", "GPU COMPATIBILITY WARNING: odd\nYour model looks"), "unknown shape"),
])
def test_a_changed_analyzer_format_is_a_tool_output_error(mangle, what):
    from deploykit.readiness.litert_analyzer import parse_analyzer

    text = mangle((DATA / "analyzer_litert_constraints.txt").read_text())
    with pytest.raises(ToolOutputError) as caught:
        parse_analyzer(text, "9.9.9")
    error = caught.value
    assert error.exit_code == 3
    assert "TFLite model analyzer (ai-edge-litert) 9.9.9" in error.one_line() and what in error.one_line()


def test_warnings_that_disagree_with_their_summary_are_a_tool_output_error():
    from deploykit.readiness.litert_analyzer import parse_analyzer

    text = (DATA / "analyzer_synthetic_warnings.txt").read_text().replace("nodes 0, 5, 6, 7", "nodes 0, 5, 6")
    with pytest.raises(ToolOutputError, match="disagree"):
        parse_analyzer(text, "9.9.9")


def _sig(op, inputs, outputs, options=None, custom=b"", version=1):
    from deploykit.readiness.litert_gpu_rules import Operand, OpSig

    return OpSig(op=op, version=version, options=options, custom=custom, is_custom=not op.isupper(),
                 inputs=[Operand(*t) for t in inputs], outputs=[Operand(*t) for t in outputs])


def _options(name, **fields):
    from ai_edge_litert import schema_py_generated as s

    options = getattr(s, name)()
    for key, value in fields.items():
        setattr(options, key, value)
    return options


X4, W = (F32, (1, 8, 8, 4)), (F32, (4, 3, 3, 4), True)
POOL = struct.pack("<6i", 1, 2, 2, 2, 2, 0)      # TfLitePoolParams: padding, strides, filter, activation


@pytest.mark.parametrize("sig, supported, reason", [
    (lambda: _sig("STRIDED_SLICE", [X4, (I32, (4,), True), (I32, (4,), True), (I32, (4,), True)], [X4],
                  _options("StridedSliceOptionsT", shrinkAxisMask=1)), False, "shrink_axis_mask unsupported"),
    (lambda: _sig("SLICE", [(F32, (2, 8)), (I32, (2,), True), (I32, (2,), True)], [(F32, (2, 4))]), False,
     "2-D input; the delegate slices 3-D or 4-D tensors"),
    (lambda: _sig("SOFTMAX", [X4], [X4], _options("SoftmaxOptionsT", beta=2.0)), False, "beta 2.0 != 1"),
    (lambda: _sig("SOFTMAX", [X4], [X4], _options("SoftmaxOptionsT", beta=1.0)), True, ""),
    (lambda: _sig("RESHAPE", [X4, (I32, (2,))], [(F32, (8, 32))]), False, "2 runtime inputs; the delegate takes 1"),
    (lambda: _sig("CAST", [(I32, (4,))], [(BOOL, (4,))]), False, "CAST INT32 -> BOOL unsupported"),
    (lambda: _sig("TANH", [(I32, (4,))], [(I32, (4,))]), False, "runtime input of type INT32"),
    (lambda: _sig("DEPTHWISE_CONV_2D", [X4, W], [(F32, (1, 8, 8, 8))],
                  _options("DepthwiseConv2DOptionsT", strideH=1, strideW=1, depthMultiplier=1)), False,
     "filter channels != output channels"),
    (lambda: _sig("MaxPoolingWithArgmax2D", [X4], [(F32, (1, 4, 4, 4)), (F32, (1, 4, 4, 4))], custom=POOL),
     True, ""),
    (lambda: _sig("MaxPoolingWithArgmax2D", [X4], [(F32, (1, 4, 4, 4))], custom=POOL), False,
     "1 outputs; the delegate takes 2"),
    (lambda: _sig("TRANSPOSE", [X4, (I32, (4,), True)], [X4], version=5), False, "version 5 > supported 4"),
])
def test_each_rule_reads_its_operands_and_options(sig, supported, reason):
    from deploykit.readiness.litert_gpu import verdict

    assert verdict(sig())[:2] == (supported, reason)
