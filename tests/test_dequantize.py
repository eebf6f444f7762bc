"""Issue 27: a dynamically quantized ONNX file (onnxruntime's quantize_dynamic) converts to TFLite. onnx2tf has no
converter for com.microsoft's DynamicQuantizeLSTM ("onnx2tf has no converter for 1 op type(s) in this graph:
DynamicQuantizeLSTM ×1"), so the ONNX preparation writes it, and the ConvInteger / MatMulInteger chains, back in
float with dequantized weights (deploykit.transforms.dequantize), checked with the int8 source's preset. Constructed
graphs (torch Conv + LSTM + Linear through quantize_dynamic; the older quantizer's int32 bias by hand) and, marked
slow, ddddocr's common_old.onnx."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

_SHAPE = (1, 1, 4, 12)


def _quantized_crnn(folder: Path, per_channel: bool) -> Path:
    """Conv → ReLU → bidirectional LSTM over the 12 columns → Linear, exported by torch, then quantize_dynamic."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Crnn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.lstm = torch.nn.LSTM(32, 16, bidirectional=True)
            self.fc = torch.nn.Linear(32, 10)

        def forward(self, x):
            features = torch.relu(self.conv(x))                          # [1, 8, 4, 12]
            columns = features.permute(3, 0, 1, 2).reshape(12, 1, 32)    # [T, B, C·H]
            return self.fc(self.lstm(columns)[0])

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    float_path, path = folder / "float.onnx", folder / f"dynamic_{'channel' if per_channel else 'tensor'}.onnx"
    torch.onnx.export(Crnn().eval(), torch.randn(_SHAPE), str(float_path), input_names=["x"], output_names=["y"],
                      opset_version=13, dynamo=False)
    quantize_dynamic(str(float_path), str(path), per_channel=per_channel,
                     weight_type=QuantType.QInt8 if per_channel else QuantType.QUInt8)
    return path


@pytest.fixture(scope="module")
def crnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dynamic")
    return {per_channel: _quantized_crnn(folder, per_channel) for per_channel in (False, True)}


def _run(path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _ops(proto) -> Counter:
    return Counter(node.op_type for node in proto.graph.node)


@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_quantize_dynamic_output_is_written_in_float_and_computes_what_it_did(crnn, tmp_path, per_channel):
    """Per channel, DynamicQuantizeLSTM's scales are [D, 4H] and MatMulInteger's [N]: each column its own scale."""
    import onnx

    from deploykit.transforms.dequantize import dequantize, dynamic_ops

    source = onnx.load(str(crnn[per_channel]))
    assert dynamic_ops(source) == {"DynamicQuantizeLSTM": 1, "ConvInteger": 1, "MatMulInteger": 1}, _ops(source)
    done, left = dequantize(source)
    assert done == {"DynamicQuantizeLSTM": 1, "ConvInteger": 1, "MatMulInteger": 1} and not left
    onnx.checker.check_model(source)
    ops = _ops(source)
    assert ops["LSTM"] == ops["Conv"] == ops["MatMul"] == 1, ops
    assert not {"DynamicQuantizeLinear", "Cast", "Mul"} & set(ops), ops       # the scale arithmetic is gone
    assert {o.domain for o in source.opset_import} <= {"", "ai.onnx"}
    stored = {init.name: init.data_type for init in source.graph.initializer}
    weights = [name for node in source.graph.node if node.op_type in ("Conv", "MatMul", "LSTM")
               for name in node.input[1:3] if name in stored]
    assert len(weights) == 4 and {stored[name] for name in weights} == {onnx.TensorProto.FLOAT}, weights
    onnx.save(source, tmp_path / "float.onnx")
    rng = np.random.default_rng(0)
    for _ in range(3):
        feeds = {"x": rng.standard_normal(_SHAPE).astype(np.float32)}
        quantized, written = _run(crnn[per_channel], feeds), _run(tmp_path / "float.onnx", feeds)
        assert quantized.shape == written.shape == (12, 1, 10)
        # int8 activations in the source, float here: close, not equal (measured 0.99999 / 0.0018 of 0.29)
        assert _cosine(quantized, written) > 0.9995 and np.abs(quantized - written).max() < 0.02
        # ... and the float graph is the torch model up to weight rounding: far closer to the unquantized export
        assert _cosine(_run(crnn[per_channel].parent / "float.onnx", feeds), written) > 0.9995


def _old_quantizer_conv(path: Path) -> Path:
    """onnxruntime's older quantize_dynamic (ddddocr's common_old.onnx): the bias is quantized in the graph,
    Reshape(Cast(Floor(Div(b, x_scale·w_scale)))), and added to ConvInteger's int32 result before the Cast."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.integers(0, 256, (4, 2, 3, 3)).astype(np.uint8), "w_q"),
               numpy_helper.from_array(np.uint8(121), "w_zero"), numpy_helper.from_array(np.float32(0.02), "w_scale"),
               numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
               numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), "bias_shape")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zero"], name="quantize_x"),
             helper.make_node("Mul", ["x_scale", "w_scale"], ["bias_scale"]),
             helper.make_node("Div", ["bias", "bias_scale"], ["bias_div"]),
             helper.make_node("Floor", ["bias_div"], ["bias_floor"]),
             helper.make_node("Cast", ["bias_floor"], ["bias_q"], to=TensorProto.INT32),
             helper.make_node("Reshape", ["bias_q", "bias_shape"], ["bias_q4"]),
             helper.make_node("ConvInteger", ["x_q", "w_q", "x_zero", "w_zero"], ["acc"], name="conv_quant",
                              pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Add", ["acc", "bias_q4"], ["acc_b"]),
             helper.make_node("Cast", ["acc_b"], ["acc_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x_scale", "w_scale"], ["scales"]),
             helper.make_node("Mul", ["acc_f", "scales"], ["conv"]),
             helper.make_node("Sigmoid", ["conv"], ["y"])]
    graph = helper.make_graph(nodes, "old_quantizer", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                     [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], weights)
    from tests.hostile.builders import save_graph

    return save_graph(graph, path)


@pytest.mark.onnxruntime
def test_the_older_quantizers_int32_bias_becomes_the_float_convs_bias(tmp_path):
    import onnx
    from onnx import numpy_helper

    from deploykit.transforms.dequantize import dequantize

    source = _old_quantizer_conv(tmp_path / "old.onnx")
    proto = onnx.load(str(source))
    assert dequantize(proto) == ({"ConvInteger": 1}, {})
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Sigmoid"]
    conv = proto.graph.node[0]
    stored = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    assert conv.name == "conv_quant" and conv.input[0] == "x" and conv.output[0] == "conv"
    original = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(source)).graph.initializer}
    np.testing.assert_allclose(stored[conv.input[1]], (original["w_q"].astype(np.float32) - 121) * np.float32(0.02))
    np.testing.assert_array_equal(stored[conv.input[2]], original["bias"])
    assert set(stored) == {conv.input[1], conv.input[2]}          # the int weights and the bias arithmetic are gone
    onnx.save(proto, tmp_path / "float.onnx")
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 2, 6, 6)).astype(np.float32)}
    quantized, written = _run(source, feeds), _run(tmp_path / "float.onnx", feeds)
    assert _cosine(quantized, written) > 0.999 and np.abs(quantized - written).max() < 0.05


def test_an_integer_op_not_fed_by_dynamic_quantization_is_left_as_it_is():
    """A MatMulInteger of a uint8 graph input (no DynamicQuantizeLinear, no scale chain) has no float form here."""
    from onnx import TensorProto, helper, numpy_helper

    from deploykit.transforms.dequantize import dequantize

    weight = numpy_helper.from_array(np.ones((4, 3), np.uint8), "w")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 3])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    before = proto.SerializeToString()
    assert dequantize(proto) == ({}, {"MatMulInteger": 1})
    assert proto.SerializeToString() == before


def _notes(result) -> str:
    return " ".join(n for hop in json.loads(Path(result.manifest).read_text())["route"] for n in hop["notes"])


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_a_quantize_dynamic_crnn_converts_to_tflite_and_verifies_against_its_int8_source(crnn, tmp_path):
    """Before: "onnx2tf has no converter for 1 op type(s) in this graph: DynamicQuantizeLSTM ×1"."""
    from deploykit import api

    result = api.export(str(crnn[True]), "tflite", str(tmp_path / "crnn.tflite"))
    assert result.passed and result.parity.outputs[0].cosine > 0.999, result.parity
    notes = _notes(result)
    assert "dequantized 1 DynamicQuantizeLSTM, 1 ConvInteger, 1 MatMulInteger to float" in notes, notes
    assert "the TFLite runs float (checked: PASS" in notes and "kept fused" in notes, notes


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_ddddocr_old_dynamic_int8_crnn_converts_to_tflite(tmp_path):
    """ddddocr 1.6.1's common_old.onnx (onnx.quantize 0.1.0: 21 ConvInteger with int32 biases, a bidirectional
    DynamicQuantizeLSTM, a MatMulInteger over 8210 classes). Measured: max_abs 1.1 of logits up to ~18, cosine
    0.9995 against the int8 source (int8 preset), 33 s on a shared 2-core machine."""
    from deploykit import api
    from tests.field import field_file

    source = field_file("ddddocr==1.6.1", "ddddocr/common_old.onnx")
    result = api.export(str(source), "tflite", str(tmp_path / "ocr.tflite"),
                        load=api.load_options(["input1:1x1x64x256"]))
    # the TFLite is the float graph to 3e-5; all the difference is the source's int8 rounding (per sample 0.9988 to
    # 0.9998, the same best class at every step)
    assert result.passed and result.parity.outputs[0].cosine > 0.998, result.parity
    notes = _notes(result)
    assert "dequantized 1 DynamicQuantizeLSTM, 21 ConvInteger, 1 MatMulInteger to float" in notes, notes
