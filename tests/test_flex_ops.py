"""Issue 27, defect 5: ops LiteRT's builtin runtime cannot run. An ONNX Split with uneven sizes read from a Constant
node became onnx2tf's FlexSplitV (the .tflite then loads nowhere builtin): the prep pass writes it as Slices, checked
by parity; an op that stays Flex (Det → FlexMatrixDeterminant) is named with the ONNX node it came from."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.hostile.builders import save_graph


def _uneven_split_graph(path: Path, sizes_as_constant_node: bool = True) -> Path:
    """x [1, 16] → MatMul → Split([3, 5], axis 1) → Relu / Sigmoid. The sizes come from a Constant node, as
    Paddle2ONNX and tf2onnx write them: onnx2tf then emits SplitV with int64 sizes, i.e. FlexSplitV."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    sizes = numpy_helper.from_array(np.int64([3, 5]), "sizes")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Split", ["h", "sizes"], ["a", "b"], axis=1, name="split_uneven"),
             helper.make_node("Relu", ["a"], ["ya"], name="relu_a"), helper.make_node("Sigmoid", ["b"], ["yb"], name="sig_b")]
    initializers = [weights]
    if sizes_as_constant_node:
        nodes.insert(0, helper.make_node("Constant", [], ["sizes"], name="sizes_const", value=sizes))
    else:
        initializers.append(sizes)
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("ya", TensorProto.FLOAT, [1, 3]),
                               helper.make_tensor_value_info("yb", TensorProto.FLOAT, [1, 5])], initializers)
    return save_graph(graph, path)


def _determinant_graph(path: Path) -> Path:
    """x [1, 16] → MatMul → Reshape [2, 2, 2] → Det: TensorFlow's MatrixDeterminant has no TFLite builtin."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Reshape", ["h", "square"], ["h3"], name="to_square"),
             helper.make_node("Det", ["h3"], ["d"], name="det_node")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, [2])],
                              [weights, numpy_helper.from_array(np.int64([2, 2, 2]), "square")])
    return save_graph(graph, path)


@pytest.mark.onnxruntime
@pytest.mark.parametrize("constant_node", [True, False], ids=["constant-node", "initializer"])
def test_uneven_splits_become_slices_that_compute_the_same(tmp_path, constant_node):
    import onnx
    import onnxruntime as ort

    from deploykit.transforms.split_rewrite import slice_uneven_splits, uneven_splits

    source = _uneven_split_graph(tmp_path / "split.onnx", constant_node)
    proto = onnx.load(str(source))
    assert [n.name for n in uneven_splits(proto)] == ["split_uneven"]
    assert slice_uneven_splits(proto) == 1 and not uneven_splits(proto)
    assert [n.name for n in proto.graph.node if n.op_type == "Slice"] == ["split_uneven/slice0", "split_uneven/slice1"]
    assert "sizes" not in {t.name for t in proto.graph.initializer}      # read by no node any more
    onnx.checker.check_model(proto)
    x = {"x": np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)}
    before = ort.InferenceSession(str(source)).run(None, x)
    after = ort.InferenceSession(proto.SerializeToString()).run(None, x)
    assert all(np.array_equal(b, a) for b, a in zip(before, after))


def test_even_splits_are_left_to_onnx2tf():
    from onnx import helper, numpy_helper

    from deploykit.transforms.split_rewrite import slice_uneven_splits, uneven_splits

    graph = helper.make_graph([helper.make_node("Split", ["h", "s"], ["a", "b"], axis=1)], "even", [], [],
                              [numpy_helper.from_array(np.int64([4, 4]), "s")])
    model = helper.make_model(graph)
    assert uneven_splits(model) == [] and slice_uneven_splits(model) == 0


def _tflite_with_custom_op(path: Path, custom: str, output_names: list) -> Path:
    """A minimal flatbuffer: one custom operator ``custom`` writing tensors named as onnx2tf names them."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model, subgraph, code, operator = schema.ModelT(), schema.SubGraphT(), schema.OperatorCodeT(), schema.OperatorT()
    code.customCode, code.builtinCode, code.deprecatedBuiltinCode = custom, 32, 32
    tensors = []
    for name in ["x"] + output_names:
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.buffer = name, [1], 0
        tensors.append(tensor)
    operator.opcodeIndex, operator.inputs, operator.outputs = 0, [0], list(range(1, len(tensors)))
    subgraph.tensors, subgraph.operators, subgraph.inputs, subgraph.outputs = tensors, [operator], [0], [1]
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [subgraph], [schema.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


@pytest.mark.litert
def test_a_flex_op_is_named_with_the_onnx_node_it_came_from(tmp_path):
    """onnx2tf names a tensor after its Keras layer (model_3/tf.split/split); the layer's function leads to the ONNX
    op types whose onnx2tf converter calls it, the graph to the node. A graph output (Identity) leads to its
    producer."""
    from deploykit.transforms.onnx_verdicts import flex_ops

    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "Split.py").write_text("tf.split(value=x)")
    (ops / "Relu.py").write_text("tf.nn.relu(x)")
    source = str(_uneven_split_graph(tmp_path / "split.onnx"))
    split = _tflite_with_custom_op(tmp_path / "split.tflite", "FlexSplitV",
                                   ["model_3/tf.split/split", "model_3/tf.split/split1"])
    assert flex_ops(split, source, ops) == ["FlexSplitV (from ONNX node split_uneven (Split))"]
    det = _tflite_with_custom_op(tmp_path / "det.tflite", "FlexMatrixDeterminant", ["Identity"])
    assert flex_ops(det, str(_determinant_graph(tmp_path / "det.onnx")), ops) == \
        ["FlexMatrixDeterminant (from ONNX node det_node (Det))"]
    lost = _tflite_with_custom_op(tmp_path / "lost.tflite", "FlexFoo", ["model_1/tf.foo/Foo"])
    assert flex_ops(lost, source, ops) == ["FlexFoo (ONNX node not found; TFLite tensor model_1/tf.foo/Foo)"]


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_an_uneven_split_converts_to_a_builtin_only_tflite(tmp_path):
    """Before: "onnx2tf wrote a model that does not load: ... uses TensorFlow (Flex) ops that LiteRT's builtin
    runtime cannot run: FlexSplitV"."""
    from deploykit import api

    result = api.export(str(_uneven_split_graph(tmp_path / "split.onnx")), "tflite", str(tmp_path / "s.tflite"))
    assert result.passed and all(o.max_abs < 1e-5 for o in result.parity.outputs), result.parity
    assert _tflite_custom_ops(tmp_path / "s.tflite") == []
    notes = " ".join(n for hop in result.route for n in hop["notes"])
    assert "rewrote 1 Split node(s) with uneven sizes as Slices" in notes and "checked: PASS" in notes, notes


def _tflite_custom_ops(path: Path) -> list:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    return [code.customCode for code in model.operatorCodes if code.customCode]


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_an_op_that_stays_flex_is_named_with_its_onnx_node(tmp_path):
    """Before, the verdict named only FlexMatrixDeterminant (the runtime's refusal), not the ONNX node."""
    from deploykit import api
    from deploykit.errors import ConversionError

    with pytest.raises(ConversionError) as info:
        api.export(str(_determinant_graph(tmp_path / "det.onnx")), "tflite", str(tmp_path / "d.tflite"))
    assert "FlexMatrixDeterminant (from ONNX node det_node (Det))" in info.value.message, info.value.message


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_nudenet_yolov8_head_split_is_sliced_and_still_verifies(tmp_path):
    """nudenet 3.4.2's 320n.onnx (a YOLOv8n export): its head splits 82 channels into [64, 18] (box distribution,
    classes). The prep pass writes that Split as two Slices, parity-checked, and the TFLite verifies."""
    from deploykit import api
    from tests.field import field_file

    source = field_file("nudenet==3.4.2", "nudenet/320n.onnx")
    result = api.export(str(source), "tflite", str(tmp_path / "n.tflite"), load=api.load_options(["images:1x3x320x320"]))
    assert result.passed and result.parity.outputs[0].cosine > 0.9999, result.parity
    assert _tflite_custom_ops(tmp_path / "n.tflite") == []
    notes = " ".join(n for hop in result.route for n in hop["notes"])
    assert "rewrote 1 Split node(s) with uneven sizes as Slices" in notes, notes
