"""ONNX rewrites for converters that mishandle a construct (deploykit.transforms.onnx_rewrites): each rewritten graph must
compute what the original does on ONNX Runtime, and a form the rewrite does not cover must be left untouched."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploykit.transforms.onnx_rewrites import MAX_STEPS, narrow_slices, unroll_lstms
from tests.hostile.builders import onnx_model

pytestmark = pytest.mark.onnxruntime


def _lstm_model(steps=3, batch=2, features=5, hidden=4, states=True, bias=True, direction=None, outputs=("Y", "Y_h",
                "Y_c"), seq_dim=None):
    """One LSTM node in the form torch.onnx writes for nn.LSTM: W, R, B stored, initial states as inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    directions = 2 if direction == "bidirectional" else 1
    weights = [numpy_helper.from_array(rng.standard_normal((directions, 4 * hidden, features)).astype(np.float32), "W"),
               numpy_helper.from_array(rng.standard_normal((directions, 4 * hidden, hidden)).astype(np.float32), "R")]
    if bias:
        weights.append(numpy_helper.from_array(rng.standard_normal((directions, 8 * hidden)).astype(np.float32), "B"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq_dim or steps, batch, features])]
    if states:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [directions, batch, hidden]) for n in ("h0", "c0")]
    attrs = {"hidden_size": hidden, **({"direction": direction} if direction else {})}
    node = helper.make_node("LSTM", ["x", "W", "R", "B" if bias else "", "", *(("h0", "c0") if states else ())],
                            [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")], name="/rnn/LSTM", **attrs)
    shapes = {"Y": [steps, directions, batch, hidden], "Y_h": [directions, batch, hidden],
              "Y_c": [directions, batch, hidden]}
    graph = helper.make_graph([node], "lstm", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outputs], weights)
    model = onnx_model(graph)
    return onnx.shape_inference.infer_shapes(model)


def _run(model, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _feeds(model):
    rng = np.random.default_rng(1)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def _copy(model):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


# States fed as inputs: what onnx2tf mislays, so what is unrolled (an LSTM without states keeps its fused form with
# stored zero states: tests/test_lstm_rewrite.py).
@pytest.mark.parametrize("states, bias, outputs", [(True, True, ("Y", "Y_h", "Y_c")), (True, False, ("Y_h",)),
                                                   (True, False, ("Y", "Y_c"))])
def test_an_unrolled_lstm_computes_what_the_fused_one_does(states, bias, outputs):
    import onnx

    model = _lstm_model(states=states, bias=bias, outputs=outputs)
    rewritten = _copy(model)
    assert unroll_lstms(rewritten) == 1
    onnx.checker.check_model(rewritten)
    ops = {n.op_type for n in rewritten.graph.node}
    assert "LSTM" not in ops and {"MatMul", "Sigmoid", "Tanh"} <= ops, ops
    assert {i.name for i in rewritten.graph.initializer}.isdisjoint({"W", "R", "B"})   # the fused weights are gone
    feeds = _feeds(model)
    for want, got in zip(_run(model, feeds), _run(rewritten, feeds)):
        assert want.shape == got.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("variant", [{"seq_dim": "seq"}, {"steps": MAX_STEPS + 1}])
def test_an_lstm_the_rewrite_does_not_cover_is_left_as_it_was(variant):
    model = _lstm_model(**variant)
    rewritten = _copy(model)
    assert unroll_lstms(rewritten) == 0
    assert rewritten == model


def _slice_model(axes=(0, 1, 2), starts=(0, 0, 0), ends=(2**63 - 1, 3, 2**63 - 1)):
    """x[:, :3, :] written as torch and onnxslim write it: one Slice over every axis, full on all but one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    params = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("starts", starts), ("ends", ends), ("axes", axes), ("steps", [1] * len(axes)))]
    graph = helper.make_graph([helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"], name="cut")],
                              "slice", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], params)
    model = onnx_model(graph)
    return onnx.shape_inference.infer_shapes(model)


def test_a_multi_axis_slice_is_narrowed_to_the_axis_it_cuts():
    from onnx import numpy_helper

    model = _slice_model()
    rewritten = _copy(model)
    assert narrow_slices(rewritten) == 1
    weights = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    node = rewritten.graph.node[0]
    assert weights[node.input[3]].tolist() == [1] and weights[node.input[2]].tolist() == [3]
    feeds = _feeds(model)
    np.testing.assert_array_equal(_run(rewritten, feeds)[0], _run(model, feeds)[0])


@pytest.mark.parametrize("variant", [{"axes": (1,), "starts": (0,), "ends": (3,)},          # one axis already
                                     {"axes": (1, 2), "starts": (0, 1), "ends": (3, 4)}])      # every axis cuts
def test_a_slice_that_cuts_only_what_it_names_is_left_alone(variant):
    model = _slice_model(**variant)
    rewritten = _copy(model)
    assert narrow_slices(rewritten) == 0 and rewritten == model


def test_a_dynamic_or_unknown_dim_is_never_taken_for_a_full_range():
    """Paddle2ONNX writes a dynamic dim as -1; a tensor may have no shape at all: neither is a known size."""
    import onnx

    from onnx import numpy_helper

    model = _slice_model(axes=(0, 1, 2), starts=(0, 0, 2), ends=(1, 2**63 - 1, 5))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    rewritten = _copy(model)
    assert narrow_slices(rewritten) == 1                            # axis 1 is full; axis 0 (-1) is kept
    weights = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    assert weights[rewritten.graph.node[0].input[3]].tolist() == [0, 2]
    shapeless = _copy(model)
    shapeless.graph.input[0].type.tensor_type.ClearField("shape")
    del shapeless.graph.value_info[:]
    assert narrow_slices(shapeless) == 0                            # no shape: nothing to judge, nothing raised
    onnx.checker.check_model(rewritten)


def test_rewrites_keep_names_unique_and_drop_inputs_that_listed_the_fused_weights():
    """Two unnamed LSTMs get their own names; an older exporter's initializers listed as graph inputs go too."""
    import onnx
    from onnx import helper

    model = _lstm_model(outputs=("Y_h",))
    lstm = model.graph.node[0]
    lstm.name = ""
    second = helper.make_node("LSTM", list(lstm.input), ["", "Y_h2"], hidden_size=4)
    model.graph.node.append(second)
    model.graph.output.append(helper.make_tensor_value_info("Y_h2", onnx.TensorProto.FLOAT, [1, 2, 4]))
    model.graph.input.extend(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims))
                             for w in model.graph.initializer)
    model = onnx.shape_inference.infer_shapes(model)
    rewritten = _copy(model)
    assert unroll_lstms(rewritten) == 2
    onnx.checker.check_model(rewritten)
    assert {i.name for i in rewritten.graph.input} == {"x", "h0", "c0"}
    feeds = _feeds(rewritten)
    for want, got in zip(_run(model, {**feeds, **{w.name: onnx.numpy_helper.to_array(w)
                                                   for w in model.graph.initializer}}), _run(rewritten, feeds)):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.litert
def test_an_lstm_with_initial_states_converts_to_tflite_once_unrolled(tmp_path):
    """nn.LSTM's ONNX form with initial states: onnx2tf alone fails on it (the state laid out channels-last)."""
    import onnx

    from deploykit import api

    source = tmp_path / "lstm.onnx"
    onnx.save(_lstm_model(steps=8, batch=1, features=40, hidden=64), str(source))
    result = api.export(str(source), "tflite", str(tmp_path / "lstm.tflite"))
    assert result.passed, result.parity
    notes = [n for hop in json.loads(Path(result.manifest).read_text())["route"] for n in hop["notes"]]
    assert any("unrolled" in n and "checked: PASS" in n for n in notes), notes


def test_constant_weights_become_initializers_that_ort_quantizes(tmp_path):
    """Paddle2ONNX keeps weights in Constant nodes; ORT's quantizer finds weights among initializers only."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from deploykit.transforms.onnx_rewrites import constants_as_initializers

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w_value")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=weight), helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    original = tmp_path / "constant.onnx"
    onnx.save(proto, original)
    assert constants_as_initializers(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["MatMul"] and proto.graph.initializer[0].name == "w"
    prepared = tmp_path / "prepared.onnx"
    onnx.save(proto, prepared)
    x = {"x": np.ones((2, 8), np.float32)}
    outputs = [ort.InferenceSession(str(p)).run(None, x)[0] for p in (original, prepared)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    quantize_dynamic(str(prepared), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    assert any(n.op_type.startswith("DynamicQuantize") or "Integer" in n.op_type
               for n in onnx.load(tmp_path / "q.onnx").graph.node)


def test_every_name_onnx2tf_cannot_take_gets_a_unique_safe_one_that_computes_the_same(tmp_path):
    """onnx_prep's renaming (the step before onnx2tf): spaces, brackets, quotes, ';', '\\', ':0', non-ASCII, leading
    digits; "a b", "a;b" and an existing "a_b" collide once cleaned; inputs become identifiers (TensorFlow turned
    "_n_" into "Placeholder"); torch's "onnx::Gemm_5" and "/fc1/Gemm_output_0" are no reason to rename."""
    import re

    import onnx

    from deploykit.transforms.onnx_prep import _sanitize_names
    from tests.hostile.builders import HOSTILE_INPUTS, HOSTILE_OUTPUTS, hostile_names_onnx

    model = onnx.load(str(hostile_names_onnx(tmp_path / "m.onnx")))
    renamed = _copy(model)
    mapping = _sanitize_names(renamed.graph)
    onnx.checker.check_model(renamed)
    assert set(HOSTILE_INPUTS + HOSTILE_OUTPUTS) | {"a<b>", "a b", "a;b", "1st", "é\\2", "m(1)", "m;2"} <= set(mapping)
    assert "a_b" not in mapping and "w/1" not in mapping                # names onnx2tf takes are left as they are
    assert len(set(mapping.values())) == len(mapping) and "a_b" not in mapping.values()
    assert all(re.fullmatch(r"[A-Za-z/][A-Za-z0-9_./-]*", new) for new in mapping.values()), mapping
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", i.name) for i in renamed.graph.input), renamed.graph.input
    assert all(re.fullmatch(r"[A-Za-z/][A-Za-z0-9_./-]*", n.name) for n in renamed.graph.node if n.name)
    feeds = {name: np.random.default_rng(1).standard_normal((1, 4)).astype(np.float32) for name in HOSTILE_INPUTS}
    # The graph's outputs keep their order: output k of the renamed graph is output k of the source.
    assert [o.name for o in renamed.graph.output] == [mapping[name] for name in HOSTILE_OUTPUTS]
    for was, now in zip(_run(model, feeds), _run(renamed, {mapping[k]: v for k, v in feeds.items()})):
        np.testing.assert_array_equal(was, now)

    from onnx import TensorProto, helper

    torch_like = helper.make_graph([helper.make_node("Relu", ["x"], ["/fc1/Gemm_output_0"]),
                                    helper.make_node("Relu", ["/fc1/Gemm_output_0"], ["onnx::Gemm_5"])], "t",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                   [helper.make_tensor_value_info("onnx::Gemm_5", TensorProto.FLOAT, [1])])
    assert _sanitize_names(torch_like) == {}
