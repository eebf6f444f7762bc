"""Issue 27, defects 4, 11 and 6's last sentence: the ONNX preparation pass names unnamed nodes (Paddle2ONNX leaves
hundreds), a failed conversion names the integer inputs that steer the graph with the ``--input NAME::DTYPE=VALUE``
that fixes them, and the prep pass's notes reach the error (its one line and --json) when the conversion fails.
Constructed graphs here; the field models (PP-OCRv3 det, silero-vad) at the end, marked slow."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.hostile.builders import save_graph


def _unnamed_clip_graph(path: Path) -> Path:
    """y = clip(relu(x), 0, 6) + clip(x, -1, 1), no node named: onnx2tf records the Relu→Clip(0, 6) merge under the
    Relu's name "", so every unnamed Clip after it becomes an identity (max_abs 6.3 before the naming)."""
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(np.float32(v), n) for n, v in
                 (("zero", 0.0), ("six", 6.0), ("minus1", -1.0), ("one", 1.0))]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Clip", ["r", "zero", "six"], ["a"]),
             helper.make_node("Clip", ["x", "minus1", "one"], ["b"]), helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "unnamed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], constants)
    return save_graph(graph, path)


def _rate_gated_graph(path: Path) -> Path:
    """silero-vad's construct in small: an If on Equal(sr, 16000) picks a [4, 6] or an [8, 3] reshape of x."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name, width):
        shape = numpy_helper.from_array(np.array([width, 24 // width], np.int64), f"{name}_shape")
        return helper.make_graph([helper.make_node("Reshape", ["x", f"{name}_shape"], [f"{name}_y"], name=name)],
                                 name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["w", "h"])],
                                 [shape])

    nodes = [helper.make_node("Equal", ["sr", "rate16k"], ["is16k"]),       # unnamed: the prep pass names it
             helper.make_node("If", ["is16k"], ["y"], name="pick_rate", then_branch=branch("wide", 4),
                              else_branch=branch("narrow", 8))]
    graph = helper.make_graph(nodes, "gated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 24]),
                                               helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["w", "h"])],
                              [numpy_helper.from_array(np.array(16000, np.int64), "rate16k")])
    return save_graph(graph, path)


def test_unnamed_nodes_get_stable_unique_names_from_op_type_and_first_output(tmp_path):
    import onnx

    from deploykit.transforms.onnx_prep import name_unnamed_nodes

    source = _unnamed_clip_graph(tmp_path / "unnamed.onnx")
    first, second = onnx.load(str(source)), onnx.load(str(source))
    assert name_unnamed_nodes(first.graph) == 4 and name_unnamed_nodes(second.graph) == 4
    names = [n.name for n in first.graph.node]
    assert names == ["Relu_r", "Clip_a", "Clip_b", "Add_y"] == [n.name for n in second.graph.node]   # every run alike
    assert name_unnamed_nodes(first.graph) == 0          # named nodes are left as they are


def test_a_node_name_that_is_taken_or_unsafe_gets_a_fresh_safe_one(tmp_path):
    from onnx import TensorProto, helper

    from deploykit.transforms.onnx_prep import name_unnamed_nodes

    nodes = [helper.make_node("Relu", ["x"], ["out:0"], name="Relu_out_0"), helper.make_node("Relu", ["x"], ["out:0"]),
             helper.make_node("If", ["c"], ["z"], then_branch=helper.make_graph(
                 [helper.make_node("Neg", ["x"], ["n"])], "then", [],
                 [helper.make_tensor_value_info("n", TensorProto.FLOAT, [1])]))]
    graph = helper.make_graph(nodes, "g", [], [])
    assert name_unnamed_nodes(graph) == 3
    inner = graph.node[2].attribute[0].g.node[0]
    assert [n.name for n in graph.node] + [inner.name] == ["Relu_out_0", "Relu_out_0_1", "If_z", "Neg_n"]


def test_integer_scalar_inputs_that_steer_the_graph_are_found_with_what_they_feed(tmp_path):
    import onnx

    from deploykit.transforms.onnx_verdicts import steering_inputs, steering_remedy

    proto = onnx.load(str(_rate_gated_graph(tmp_path / "gated.onnx")))
    found = steering_inputs(proto)
    assert found == [("sr", "int64", "If pick_rate (input 0)")]
    assert steering_remedy(found, {"sr": 16000}) == "--input sr::int64=16000"
    assert steering_remedy(found, {}) == "--input sr::int64=VALUE"
    assert steering_inputs(proto, skip={"sr"}) == []


def test_an_integer_input_read_as_data_steers_nothing(tmp_path):
    """Token ids into a Gather are data, not a shape: not named (a float input never is)."""
    from onnx import TensorProto, helper, numpy_helper

    from deploykit.transforms.onnx_verdicts import steering_inputs

    table = numpy_helper.from_array(np.arange(4, dtype=np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "idx"], ["y"])], "lookup",
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [table])
    import onnx

    assert steering_inputs(onnx.load(str(save_graph(graph, tmp_path / "lookup.onnx")))) == []


def test_a_conversion_error_carries_the_prep_notes_and_the_steering_remedy():
    from deploykit.errors import ConversionError, Outcome
    from deploykit.transforms.onnx_verdicts import NOTE_CHARS, with_context

    failure = ConversionError("onnx2tf failed at ONNX node Conv_29 (Conv): Depth of output", "run with --debug",
                              outcome=Outcome.CONVERT_FAILED)
    notes = ["1 LSTM node(s) left fused: over 64 steps", "x" * 1000, "1 LSTM node(s) left fused: over 64 steps"]
    said = with_context(failure, notes, [("sr", "int64", "If If_0 (input 0)")], {"sr": 16000})
    assert said.message.startswith(failure.message) and said.outcome == Outcome.CONVERT_FAILED
    assert "'sr' (int64, feeds If If_0 (input 0))" in said.message and "--input sr::int64=16000" in said.message
    assert said.message.count("left fused: over 64 steps") == 1 and "x" * NOTE_CHARS not in said.message
    assert said.details["prep_notes"] == notes and said.details["steering_inputs"][0]["value"] == 16000
    assert json.loads(json.dumps(said.to_dict()))["message"] == said.message       # what --json prints
    assert with_context(failure, [], [], {}) is failure


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_a_graph_of_unnamed_nodes_converts_and_verifies(tmp_path):
    """Before: onnx2tf (its naming off) merged the unnamed Relu→Clip(0, 6) and turned the other unnamed Clip into an
    identity: "does not match the source ... max_abs 6.32"."""
    from deploykit import api

    result = api.export(str(_unnamed_clip_graph(tmp_path / "unnamed.onnx")), "tflite", str(tmp_path / "u.tflite"))
    assert result.passed and result.parity.outputs[0].max_abs < 1e-5, result.parity
    notes = " ".join(n for hop in result.route for n in hop["notes"])
    assert "named 4 unnamed node(s)" in notes and "checked: PASS" in notes, notes


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_a_failed_conversion_names_the_steering_input_and_keeps_the_prep_notes(tmp_path):
    """The If's two branches give different shapes: onnx2tf cannot convert it with sr fed as data; the verdict says
    sr steers the If, gives the --input form, and shows what the prep pass did (here: the nodes it named)."""
    from deploykit.errors import ConversionError
    from tests.conftest import run_cli

    source = _rate_gated_graph(tmp_path / "gated.onnx")
    # sr given the natural way, as data beside x: the verdict gives the fixed form with the value the user fed
    np.savez(tmp_path / "feed.npz", x=np.ones((1, 24), np.float32), sr=np.array(16000, np.int64))
    proc = run_cli("export", str(source), "--to", "tflite", "-o", str(tmp_path / "g.tflite"),
                   "--inputs", str(tmp_path / "feed.npz"), "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == ConversionError.exit_code and not data["passed"], proc.stderr
    assert "'sr' (int64, feeds If pick_rate (input 0))" in data["message"], data["message"]
    assert "--input sr::int64=16000" in data["message"] and "the ONNX preparation before onnx2tf" in data["message"]
    assert "named 1 unnamed node(s)" in data["message"], data["message"]
    # ... and the same as lists a script reads
    assert data["steering_inputs"] == [{"name": "sr", "dtype": "int64", "feeds": "If pick_rate (input 0)",
                                        "value": 16000}], data
    assert any("named 1 unnamed node(s)" in note for note in data["prep_notes"]), data["prep_notes"]


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_the_fixed_form_the_verdict_gives_converts_the_steered_graph(tmp_path):
    from deploykit import api

    source = _rate_gated_graph(tmp_path / "gated.onnx")
    result = api.export(str(source), "tflite", str(tmp_path / "g.tflite"), load=api.load_options(["sr::int64=16000"]))
    assert result.passed, result.parity


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_paddle2onnx_ppocrv3_det_with_398_unnamed_nodes_converts(tmp_path):
    """rapidocr-onnxruntime 1.2.3's PP-OCRv3 detector (Paddle2ONNX: 398 of 712 nodes unnamed, -1 dims): before, its
    output's -1 dims hid onnx2tf's channels-last permutation ("shape [1, 320, 320, 1] != reference [1, 1, 320, 320]")
    and the prep notes were dropped from the failure."""
    from deploykit import api
    from tests.field import field_file

    source = field_file("rapidocr-onnxruntime==1.2.3", "rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx")
    result = api.export(str(source), "tflite", str(tmp_path / "det.tflite"), load=api.load_options(["x:1x3x320x320"]))
    assert result.passed and result.parity.outputs[0].cosine > 0.9999, result.parity
    notes = " ".join(n for hop in result.route for n in hop["notes"])
    assert "named 398 unnamed node(s)" in notes, notes


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_silero_vad_fed_its_sample_rate_as_data_is_told_the_input_form(tmp_path):
    """silero-vad 6.2.3 with sr in --inputs, as any other input: onnx2tf fails far away (a Conv); the verdict names
    sr as the input steering the If, with the --input form, and the prep notes.""" 
    from deploykit import api
    from deploykit.errors import ConversionError
    from tests.field import field_file

    source = field_file("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx")
    t = np.arange(512) / 16000
    np.savez(tmp_path / "vad.npz", input=(0.3 * np.sin(2 * np.pi * 440 * t)).reshape(1, 512).astype(np.float32),
             state=np.zeros((2, 1, 128), np.float32), sr=np.array(16000, np.int64))
    with pytest.raises(ConversionError) as info:
        api.export(str(source), "tflite", str(tmp_path / "vad.tflite"),
                   verify=api.VerifyOptions(inputs_npz=str(tmp_path / "vad.npz")))
    message = info.value.message
    assert "'sr' (int64, feeds If If_0 (input 0))" in message and "--input sr::int64=16000" in message, message
    assert "the ONNX preparation before onnx2tf" in message, message
