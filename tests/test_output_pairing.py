"""Outputs are paired by name (issue 27, defect 1): a TFLite signature may list its outputs in another order than
the flatbuffer's output tensors, and tf2onnx writes the tensor names in the tensor order; pairing by position then
compared `alpha` [1, 3] with `zeta` [1, 6] ("shape [1, 6] != reference [1, 3]")."""
from __future__ import annotations

import numpy as np
import pytest

from deploykit import parity
from deploykit.parity import compare, pair_names, tolerance_for
from tests.field import field_file

RNG = np.random.default_rng(0)


def _outputs(**shapes) -> dict:
    return {name: RNG.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def test_exact_names_pair_whatever_the_order():
    pairs, how, left = pair_names(["a", "b"], ["b", "a", "extra"])
    assert (pairs, how, left) == ([("a", "a"), ("b", "b")], "by name", [])


@pytest.mark.parametrize("reference, candidate", [
    ("x", "serving_default_x:0"), ("output", "output_0"), ("input.1", "input_1"), ("logits", "logits:0"),
    ("StatefulPartitionedCall:1", "StatefulPartitionedCall_1"), ("Probs", "probs")])
def test_exporter_mangling_is_undone(reference, candidate):
    pairs, how, _left = pair_names(["other", reference], [candidate, "Other/0"])
    assert dict(pairs)[reference] == candidate and how == "by normalised name"


def test_a_recorded_tensor_name_pairs_by_name():
    # LiteRT's loader records {signature name: flatbuffer tensor name}; tf2onnx writes the tensor names
    aliases = {"alpha": ["StatefulPartitionedCall:0"], "zeta": ["StatefulPartitionedCall:1"]}
    pairs, how, _ = pair_names(["alpha", "zeta"], ["StatefulPartitionedCall:1", "StatefulPartitionedCall:0"],
                               aliases=aliases)
    assert pairs == [("alpha", "StatefulPartitionedCall:0"), ("zeta", "StatefulPartitionedCall:1")]
    assert how == "by name"


def test_unnamed_outputs_pair_by_shape_never_across_shapes():
    references = [_outputs(alpha=(1, 3), zeta=(1, 6))]
    swapped = [{"out_a": references[0]["zeta"], "out_b": references[0]["alpha"]}]    # the other order
    report = compare(references, swapped, tolerance_for("fp32"), "tflite", "onnx")
    assert report.passed, report.summary()          # by position (the old pairing): shape [1, 6] != [1, 3]
    assert report.pairing == "by shape and position"
    assert [(o.name, o.candidate_name) for o in report.outputs] == [("alpha", "out_b"), ("zeta", "out_a")]
    assert report.to_dict()["pairing"] == "by shape and position"
    assert any("paired by shape and position: alpha→out_b" in n for n in report.notes), report.notes


def test_same_shapes_keep_their_order_and_say_so():
    pairs, how, _ = pair_names(["p", "q"], ["u", "v"], ({"p": (2,), "q": (2,)}, {"u": (2,), "v": (2,)}))
    assert pairs == [("p", "u"), ("q", "v")] and how == "by shape and position"


def test_onnx2tf_identity_k_is_the_kth_output_unless_shapes_say_otherwise():
    shapes = ({"a": (1, 4), "b": (1, 2)}, {"Identity": (1, 4), "Identity_1": (1, 2)})
    assert pair_names(["a", "b"], ["Identity", "Identity_1"], shapes)[:2] == (
        [("a", "Identity"), ("b", "Identity_1")], "by normalised name")
    crossed = ({"a": (1, 4), "b": (1, 2)}, {"Identity": (1, 2), "Identity_1": (1, 4)})
    assert pair_names(["a", "b"], ["Identity", "Identity_1"], crossed)[:2] == (
        [("a", "Identity_1"), ("b", "Identity")], "by shape and position")


def test_savedmodel_keys_pair_with_tensorflows_kth_call_output_in_sorted_key_order():
    """basic-pitch's SavedModel (contour, note, onset) against its tf2onnx ONNX (StatefulPartitionedCall:2, :1, :0):
    note and onset have one shape, so shape and position crossed them (cosine 0.908); TensorFlow flattens the
    signature's dict in sorted key order, so :k is the k-th key."""
    keys = {"contour": (1, 172, 264), "note": (1, 172, 88), "onset": (1, 172, 88)}
    calls = {"StatefulPartitionedCall:2": (1, 172, 88), "StatefulPartitionedCall:1": (1, 172, 88),
             "StatefulPartitionedCall:0": (1, 172, 264)}
    expected = [("contour", "StatefulPartitionedCall:0"), ("note", "StatefulPartitionedCall:1"),
                ("onset", "StatefulPartitionedCall:2")]
    assert pair_names(list(keys), list(calls), (keys, calls))[:2] == (expected, "by TensorFlow output index")
    flipped, how, _ = pair_names(list(calls), list(keys), (calls, keys))
    assert sorted((b, a) for a, b in flipped) == expected and how == "by TensorFlow output index"
    # indices whose shapes disagree with the keys' are no evidence: the shape step decides
    wrong = {"StatefulPartitionedCall:0": (1, 172, 88), "StatefulPartitionedCall:1": (1, 172, 264),
             "StatefulPartitionedCall:2": (1, 172, 88)}
    assert pair_names(list(keys), list(wrong), (keys, wrong))[1] == "by shape and position"


def test_an_output_without_counterpart_is_a_problem_naming_it():
    references = [_outputs(a=(1, 2), b=(1, 3), c=(1, 4))]
    report = compare(references, [{"a": references[0]["a"]}], tolerance_for("fp32"))
    assert not report.passed and "no counterpart for b, c" in report.summary()


def test_the_input_feeds_follow_names_too():
    from types import SimpleNamespace

    from deploykit.checking.checker import Checker
    from deploykit.spec import ModelSpec, TensorSpec

    source = SimpleNamespace(spec=ModelSpec((TensorSpec("b", (1, 2), "float32"), TensorSpec("a", (1, 3), "float32"))),
                             details={})
    checker = Checker(source, tolerance_for("fp32"))
    candidate = SimpleNamespace(spec=ModelSpec((TensorSpec("serving_default_a:0", (1, 3), "float32"),
                                                TensorSpec("serving_default_b:0", (1, 2), "float32"))),
                                label="c.tflite", details={})
    feeds = {"b": np.zeros((1, 2), np.float32), "a": np.ones((1, 3), np.float32)}
    renamed = checker.feeds_for(candidate, feeds)
    assert renamed["serving_default_a:0"].shape == (1, 3) and renamed["serving_default_b:0"].shape == (1, 2)


def _signature_tflite(folder) -> str:
    """A tf.function returning {"zeta": [1, 6], "alpha": [1, 3]}, zeta made first: the flatbuffer's outputs are
    [zeta, alpha], the signature's [alpha, zeta]."""
    import tensorflow as tf

    class Module(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32))
            self.v = tf.Variable(np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32, name="x")])
        def serve(self, x):
            zeta = tf.tanh(tf.matmul(x, self.w))
            return {"zeta": zeta, "alpha": tf.matmul(x, self.v) * 2.0}

    module = Module()
    tf.saved_model.save(module, str(folder / "sm"), signatures={"serving_default": module.serve})
    path = folder / "sig.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(folder / "sm")).convert())
    return str(path)


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.litert
@pytest.mark.onnxruntime
def test_a_signature_whose_output_order_differs_exports_and_verifies(tmp_path):
    import onnx
    from ai_edge_litert import interpreter as litert

    from deploykit import api

    source = _signature_tflite(tmp_path)
    flat = [d["name"] for d in litert.Interpreter(model_path=source).get_output_details()]
    assert flat == ["StatefulPartitionedCall:1", "StatefulPartitionedCall:0"]       # zeta, alpha: the trap is set
    result = api.export(source, "onnx", str(tmp_path / "sig.onnx"))
    assert result.passed, result.parity.summary()       # before: alpha: shape [1, 6] != reference [1, 3]
    graph = onnx.load(str(tmp_path / "sig.onnx")).graph
    assert [o.name for o in graph.output] == ["alpha", "zeta"] and [i.name for i in graph.input] == ["x"]
    assert result.parity.pairing == "by name"
    # A tf2onnx file made outside deploykit keeps the tensor names: paired through LiteRT's recorded names.
    import tf2onnx

    tf2onnx.convert.from_tflite(source, opset=17, output_path=str(tmp_path / "raw.onnx"))
    verified = api.verify(source, [str(tmp_path / "raw.onnx")])
    report = verified.reports[0]
    assert verified.passed, report.summary()
    assert [(o.name, o.candidate_name) for o in report.outputs] == [
        ("alpha", "StatefulPartitionedCall:0"), ("zeta", "StatefulPartitionedCall:1")]


BASIC_PITCH = ("basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/")


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.litert
@pytest.mark.onnxruntime
def test_field_basic_pitch_tflite_outputs_pair_by_name(tmp_path):
    """Spotify's basic-pitch ships nmp.tflite (signature contour/note/onset; flatbuffer tensors
    StatefulPartitionedCall:2/:1/:0, [1,172,88] ×2 and [1,172,264]) and nmp.onnx (tf2onnx, the tensor names)."""
    from deploykit import api

    tflite = field_file(BASIC_PITCH[0], BASIC_PITCH[1] + "nmp.tflite")
    onnx_file = field_file(BASIC_PITCH[0], BASIC_PITCH[1] + "nmp.onnx")
    result = api.export(str(tflite), "onnx", str(tmp_path / "nmp.onnx"))
    assert result.passed, result.parity.summary()     # before: contour: shape [1, 172, 88] != reference [1, 172, 264]
    verified = api.verify(str(onnx_file), [str(tflite)])
    assert verified.passed, verified.reports[0].summary()
    assert {(o.name, o.candidate_name) for o in verified.reports[0].outputs} == {
        ("StatefulPartitionedCall:0", "contour"), ("StatefulPartitionedCall:1", "note"),
        ("StatefulPartitionedCall:2", "onset")}
    assert parity.PAIRINGS[0] == verified.reports[0].pairing
