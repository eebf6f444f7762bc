"""Readiness (issue 31): ONNX Runtime's mobile checker read from recorded outputs, ONNX tables and checked rewrites
on a small graph built here, LiteRT and ExecuTorch tables on the sample exports, and the errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import ToolOutputError
from deploykit.readiness import ort_checker
from deploykit.transforms import ort_format
from deploykit.readiness.report import MAYBE, NO, YES, suitability
from tests.conftest import assert_clean_error

RECORDED = Path(__file__).parent / "data" / "readiness"

# (file, provider) -> (verdict, supported, total, partitions, unsupported ops, dynamic-blocked nodes, fixed verdict)
EXPECTED = {
    ("mobilenet_v2", "NNAPI"): (YES, 100, 100, 1, [], 0, None),
    ("mobilenet_v2", "CoreML NeuralNetwork"): (MAYBE, 99, 100, 2, ["ai.onnx:ReduceMean"], 0, None),
    ("mobilenet_v2", "CoreML MLProgram"): (YES, 100, 100, 1, [], 0, None),
    ("ppocr_cls", "NNAPI"): (NO, 0, 179, 0, ["ai.onnx:HardSigmoid"], 179, NO),
    ("ppocr_cls", "CoreML MLProgram"): (NO, 0, 179, 0, [], 179, YES),
    ("silero_vad", "CoreML NeuralNetwork"): (NO, 36, 224, 18, ["ai.onnx:ConstantOfShape", "ai.onnx:Equal",
                                                              "ai.onnx:Identity", "ai.onnx:If", "ai.onnx:LSTM",
                                                              "ai.onnx:Not", "ai.onnx:ReduceMean", "ai.onnx:Size",
                                                              "ai.onnx:Unsqueeze"], 110, NO),
}


@pytest.mark.parametrize("name,provider", sorted(EXPECTED))
def test_checker_output_is_read_into_numbers(name, provider):
    parsed = ort_checker.parse((RECORDED / f"ort_checker_{name}.txt").read_text(), "1.32.0")
    verdict, supported, total, partitions, ops, dynamic, fixed = EXPECTED[(name, provider)]
    entry = parsed[provider]
    got = entry["as_is"]
    assert (entry["verdict"], got["supported"], got["total"], got["partitions"], got["unsupported_ops"],
            got["dynamic_blocked"], entry["verdict_fixed"]) == (verdict, supported, total, partitions, ops, dynamic,
                                                                fixed)
    assert len(got["sizes"]) == partitions and sum(got["sizes"]) == supported


def test_fixed_shape_analysis_is_kept_apart_from_the_as_is_one():
    parsed = ort_checker.parse((RECORDED / "ort_checker_ppocr_cls.txt").read_text(), "1.32.0")
    fixed = parsed["NNAPI"]["fixed"]
    assert (fixed["supported"], fixed["partitions"], fixed["dynamic_blocked"]) == (170, 10, 0)
    assert any("Only 2D Conv" in line for line in parsed["NNAPI"]["as_is"]["caveats"])


@pytest.mark.parametrize("mangle,what", [
    (lambda text: text.replace("partitions with a total of", "partitions covering"), "unknown line"),
    (lambda text: text.replace("Model should perform well with CoreML MLProgram as is: YES", ""),
     "no partitions and verdict for CoreML MLProgram"),
    (lambda text: "", "no partitions and verdict for NNAPI"),
])
def test_a_changed_checker_output_is_a_one_line_error_naming_the_tool(mangle, what):
    text = mangle((RECORDED / "ort_checker_mobilenet_v2.txt").read_text())
    with pytest.raises(ToolOutputError) as caught:
        ort_checker.parse(text, "9.9.9")
    assert caught.value.exit_code == 3
    line = caught.value.one_line()
    assert "check_onnx_model_mobile_usability" in line and "9.9.9" in line and what in line and "\n" not in line


def test_required_operators_config_rows_keep_types():
    text = ('# header\nai.onnx;13;Transpose{"inputs": {"0": ["uint8_t"]}}\n'
            'ai.onnx;19;DequantizeLinear{"inputs": {"0": ["uint8_t", "int8_t"]}},Reshape\ncom.microsoft;1;QGemm\n')
    rows = ort_format.parse_config(text)
    assert [(r["domain"], r["opset"], r["op"]) for r in rows] == [
        ("ai.onnx", 13, "Transpose"), ("ai.onnx", 19, "DequantizeLinear"), ("ai.onnx", 19, "Reshape"),
        ("com.microsoft", 1, "QGemm")]
    assert rows[1]["types"] == {"inputs": {"0": ["uint8_t", "int8_t"]}} and rows[2]["types"] == {}


def test_suitability_follows_the_checker_thresholds():
    assert suitability(99, 100, 1) == YES and suitability(60, 100, 1) == MAYBE and suitability(40, 100, 1) == NO
    assert suitability(99, 100, 2) == MAYBE and suitability(70, 100, 2) == NO and suitability(100, 100, 3) == NO
    assert suitability(0, 10, 0) == NO


def _small_graph(path: Path, dynamic: bool = True) -> Path:
    """Conv -> HardSigmoid -> ReduceMean over H, W: one op NNAPI refuses, one CoreML NeuralNetwork refuses."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    batch = "n" if dynamic else 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("HardSigmoid", ["c"], ["h"], alpha=0.25, beta=0.4, name="hsig"),
         helper.make_node("ReduceMean", ["h"], ["y"], axes=[2, 3], keepdims=0, name="mean")],
        "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.slow
@pytest.mark.onnxruntime
def test_onnx_tables_name_the_refused_ops_and_the_rewrites_are_checked(tmp_path):
    from deploykit import api

    found = api.readiness(str(_small_graph(tmp_path / "small.onnx")))
    nnapi, coreml_nn = found.table("NNAPI"), found.table("CoreML NeuralNetwork")
    assert [i.op for i in nnapi.unsupported] == ["HardSigmoid"]
    assert {i.op for i in coreml_nn.unsupported} == {"HardSigmoid", "ReduceMean"}
    assert all(i.count == 1 and i.fix for i in coreml_nn.unsupported)
    assert any("--input x:nx3x8x8" in b for b in nnapi.blockers), nnapi.blockers
    rewritten = {(fix.op, fix.before.split(":")[0]) for fix in found.fixes}
    assert {("HardSigmoid", "NNAPI"), ("ReduceMean", "CoreML NeuralNetwork")} <= rewritten
    assert found.operators["runtime"] == "onnxruntime"
    # the reduced build's config is the optimized graph's: ORT fuses Conv + HardSigmoid into FusedConv
    assert {row["op"] for row in found.operators["operators"]} == {"FusedConv", "ReduceMean"}


@pytest.mark.slow
@pytest.mark.onnxruntime
def test_pinned_dims_lift_the_dynamic_shape_blocker_and_rewrites_reach_full_coverage(tmp_path):
    from deploykit import api

    load = api.load_options(("x:1x3x8x8",), None, False, 120.0)
    found = api.readiness(str(_small_graph(tmp_path / "small.onnx")), load)
    assert any(note.startswith("dims pinned by --input: x:1x3x8x8") for note in found.notes)
    assert not found.table("NNAPI").blockers
    by_op = {(fix.op, fix.before.split(":")[0]): fix for fix in found.fixes}
    after = by_op[("ReduceMean", "CoreML NeuralNetwork")].after
    assert by_op[("ReduceMean", "CoreML NeuralNetwork")].before != after
    assert by_op[("HardSigmoid", "NNAPI")].after.endswith("YES") or "1 partition" in by_op[("HardSigmoid", "NNAPI")].after


@pytest.mark.onnxruntime
def test_the_rewrites_keep_the_values(tmp_path):
    import onnx
    import onnxruntime as ort

    from deploykit.readiness import ort_fixes

    path = _small_graph(tmp_path / "small.onnx", dynamic=False)
    model = onnx.load(path)
    assert ort_fixes.hard_sigmoid_to_clip(model) == 1 and ort_fixes.reduce_mean_to_global_pool(model) == 1
    assert {n.op_type for n in model.graph.node} == {"Conv", "Mul", "Add", "Clip", "GlobalAveragePool", "Flatten"}
    feed = {"x": np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)}
    before = ort.InferenceSession(str(path)).run(None, feed)[0]
    after = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    np.testing.assert_allclose(after, before, atol=1e-6)


@pytest.mark.slow
@pytest.mark.onnxruntime
def test_cli_readiness_json(cli, tmp_path):
    proc = cli("inspect", str(_small_graph(tmp_path / "small.onnx")), "--readiness", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [t["target"] for t in data["readiness"]["tables"]] == list(ort_checker.PROVIDERS)
    assert data["ops"] and data["readiness"]["operators"]["required_operators_config"].startswith("# required")


def test_a_source_is_refused_before_it_is_loaded(cli, samples_dir):
    refused = cli("inspect", str(samples_dir / "two_layer_net.pt2"), "--readiness")
    assert_clean_error(refused, 2, "not a deployable artifact", "export it first")


@pytest.mark.slow
@pytest.mark.litert
def test_litert_tables_measure_xnnpack_and_predict_the_gpu_delegate(exported):
    from deploykit import api

    found = api.readiness(exported("two_layer_net.pt2", "tflite").artifact)
    xnnpack, gpu = found.table("XNNPACK (CPU)"), found.table("GPU delegate")
    assert (xnnpack.measured, xnnpack.supported, xnnpack.total, xnnpack.verdict) == (True, 2, 2, "ALL")
    assert xnnpack.flop_share == pytest.approx(1.0)
    assert (gpu.measured, gpu.supported, gpu.total, gpu.verdict) == (False, 2, 2, YES) and not gpu.unsupported
    ops = {e["op"]: e for e in found.operators["builtin_operators"]}
    assert ops["FULLY_CONNECTED"]["nodes"] == 2 and ops["FULLY_CONNECTED"]["versions"]


@pytest.mark.slow
@pytest.mark.executorch
def test_executorch_table_and_selected_operators(exported):
    from deploykit import api

    found = api.readiness(exported("two_layer_net.pt2", "executorch").artifact)
    table, = found.tables
    assert (table.measured, table.unit, table.verdict, table.supported) == (True, "instructions", "ALL", 1)
    assert found.operators["delegate_backends"] == ["XnnpackBackend"]
    assert any(note.startswith("at export: XNNPACK took ") for note in found.notes), found.notes
    assert "operators:" in found.operators["selected_operators_yaml"]


@pytest.mark.slow
@pytest.mark.onnxruntime
def test_an_ort_file_lists_its_own_operators_and_points_at_its_onnx(tmp_path):
    from deploykit import api

    ort_path, config = ort_format.convert(str(_small_graph(tmp_path / "small.onnx", dynamic=False)), tmp_path)
    found = api.readiness(str(ort_path))
    assert found.format == "ort" and not found.tables
    assert {row["op"] for row in found.operators["operators"]} == {row["op"] for row in ort_format.parse_config(config)}
    assert any("run --readiness on the .onnx" in note for note in found.notes)
    broken = tmp_path / "cut.ort"
    broken.write_bytes(ort_path.read_bytes()[:200])
    with pytest.raises(Exception) as caught:
        api.readiness(str(broken))
    assert getattr(caught.value, "exit_code", None) == 2


@pytest.mark.onnxruntime
def test_max_with_zero_becomes_relu_with_the_same_values():
    """torch exports the seed's custom ReLU (clamp(min=0)) as Max(x, 0), which CoreML NeuralNetwork refuses."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from deploykit.readiness import ort_fixes

    graph = helper.make_graph(
        [helper.make_node("Max", ["x", "zero"], ["y"]), helper.make_node("Max", ["y", "x"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 5])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    before = model.SerializeToString()
    assert ort_fixes.max_zero_to_relu(model) == 1        # the Max of two tensors stays
    assert [n.op_type for n in model.graph.node] == ["Relu", "Max"]
    onnx.checker.check_model(model)
    feed = {"x": np.random.default_rng(2).normal(size=(2, 5)).astype(np.float32)}
    np.testing.assert_array_equal(ort.InferenceSession(model.SerializeToString()).run(None, feed)[0],
                                  ort.InferenceSession(before).run(None, feed)[0])
