"""--locate: layers matched across formats by their weights, and a fault planted at a known layer found there.

Quick tests use ONNX graphs built here and the two-layer sample (no converter runs); the routes that
convert (torch→ONNX, ONNX→TFLite, torch→TFLite) are in test_locate_routes.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit import api
from deploykit.errors import OutputExistsError
from deploykit.graphview import Constant, GraphView, Op, kind
from deploykit.checking.locate import align, match_layers
from tests.conftest import run_cli
from tests.hostile.builders import save_graph

pytestmark = pytest.mark.onnxruntime


def _conv_net(path, scale_conv2: float = 1.0, rename: bool = False):
    """x[1,3,8,8] → conv1+bias → Relu → conv2 → Relu → mean → fc: three weighted layers with PyTorch-style
    weight names (or opaque ones, as another exporter would write them)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    arrays = {"conv1.weight": rng.standard_normal((4, 3, 3, 3)), "conv1.bias": rng.standard_normal(4),
              "conv2.weight": rng.standard_normal((6, 4, 3, 3)) * scale_conv2, "fc.weight": rng.standard_normal((5, 6))}
    names = {name: (f"const_{i}" if rename else name) for i, name in enumerate(arrays)}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), names[k]) for k, v in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", names["conv1.weight"], names["conv1.bias"]], ["c1"], name="conv_a",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", names["conv2.weight"]], ["c2"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("ReduceMean", ["r2"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["m", names["fc.weight"]], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    return save_graph(graph, path, opset=17)


def _verify_located(source, artifact, **options):
    result = api.verify(str(source), [str(artifact)], options=api.VerifyOptions(locate=True, **options))
    return result, result.locations[0]


def test_a_damaged_layer_is_named_and_the_layers_before_it_pass(tmp_path):
    source, damaged = _conv_net(tmp_path / "net.onnx"), _conv_net(tmp_path / "bad.onnx", scale_conv2=1.05)
    result, location = _verify_located(source, damaged)
    assert not result.passed
    rows = location.rows
    assert [r.layer for r in rows] == ["conv1", "conv2", "fc"]
    assert [r.matched_by for r in rows] == ["weight name"] * 3
    assert location.first_diverging == 1 and rows[1].status == "fail" and rows[0].status == "pass"
    assert rows[0].max_abs == 0.0 and rows[1].relative_error > 0.01
    assert rows[0].source_tensor == "r1" and rows[0].op == "Conv → Relu"     # compared after the fused activation
    assert "first layer outside the fp32 preset: conv2" in location.summary()


def test_renamed_weights_are_matched_by_values_and_a_damaged_one_by_size_and_order(tmp_path):
    source = _conv_net(tmp_path / "net.onnx")
    renamed = _conv_net(tmp_path / "renamed.onnx", scale_conv2=1.05, rename=True)
    _result, location = _verify_located(source, renamed)
    assert [r.matched_by for r in location.rows] == ["weight values", "weight size and order", "weight values"]
    assert location.rows[location.first_diverging].layer == "conv2"
    assert location.rows[1].artifact_op == "conv_b"


def test_an_identical_artifact_passes_every_layer(tmp_path):
    source = _conv_net(tmp_path / "net.onnx")
    result, location = _verify_located(source, _conv_net(tmp_path / "same.onnx", rename=True))
    assert result.passed and location.first_diverging is None and location.matched == 3
    assert all(r.status == "pass" and r.max_abs == 0.0 for r in location.rows)
    assert "every matched layer is within the fp32 preset" in location.summary()


def test_verify_locate_cli_prints_the_table_and_json(tmp_path, capsys):
    from deploykit.render import print_verify

    source, damaged = _conv_net(tmp_path / "net.onnx"), _conv_net(tmp_path / "bad.onnx", scale_conv2=1.05)
    proc = run_cli("verify", str(source), str(damaged), "--locate", "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    location = data["locate"][0]
    assert location["rows"][location["first_diverging"]]["layer"] == "conv2"
    assert any(n.startswith("locate: ") for n in data["comparisons"][0]["notes"])
    print_verify(data)                      # the human form of the same result
    text = capsys.readouterr().out
    assert "conv2" in text and "◀ first outside the preset" in text and "layers of bad.onnx" in text


@pytest.mark.torch
@pytest.mark.slow     # a PyTorch source's layers in its child: seconds
def test_torch_source_against_an_onnx_written_by_hand(samples_dir, tmp_path):
    """The two-layer sample against an ONNX graph of its own weights (Gemm, transB) with other names: matched by
    weight values, in the module's names; a damaged second layer is named as `linear2`."""
    import torch

    program = torch.export.load(str(samples_dir / "two_layer_net.pt2"))
    state = {k: v.detach().numpy() for k, v in program.state_dict.items()}
    good = _two_layer_onnx(tmp_path / "good.onnx", state)
    _result, location = _verify_located(samples_dir / "two_layer_net.pt2", good)
    assert [r.layer for r in location.rows] == ["linear1", "linear2"]
    assert all(r.status == "pass" and r.matched_by == "weight values" for r in location.rows)
    bad = _two_layer_onnx(tmp_path / "bad.onnx", {**state, "linear2.weight": state["linear2.weight"] * 1.05})
    _result, location = _verify_located(samples_dir / "two_layer_net.pt2", bad)
    assert location.rows[location.first_diverging].layer == "linear2"
    assert location.rows[0].status == "pass" and location.rows[0].op == "linear → relu"


@pytest.mark.torch
@pytest.mark.slow     # a PyTorch source's layers in its child: seconds
def test_a_torchscript_source_is_refused_with_a_reason_and_verify_goes_on(samples_dir, tmp_path):
    import torch

    program = torch.export.load(str(samples_dir / "two_layer_net.pt2"))
    onnx_file = _two_layer_onnx(tmp_path / "good.onnx", {k: v.detach().numpy() for k, v in program.state_dict.items()})
    result, location = _verify_located(samples_dir / "two_layer_net.pt", onnx_file)
    assert result.passed and location.problems and not location.rows
    assert "TorchScript" in location.summary() and ".pt2" in location.summary()


def _two_layer_onnx(path, state: dict):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(state[k], np.float32), f"w{i}") for i, k in
             enumerate(("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"))]
    nodes = [helper.make_node("Gemm", ["x", "w0", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "w3"], ["output"], transB=1)]
    graph = helper.make_graph(nodes, "two_layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 1000])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [64, 10])], inits)
    return save_graph(graph, path, opset=17)


# --- matching and layout, on graph views alone ---

def _view(layers: list) -> GraphView:
    """A chain x → op_i(weight_i) → ...; ``layers`` = [(weight origin, shape, digest)]."""
    ops, constants, previous = [], {}, "x"
    for i, (origin, shape, fingerprint) in enumerate(layers):
        constants[f"w{i}"] = Constant(list(shape), fingerprint, origin)
        ops.append(Op(f"op{i}", "MatMul", [previous, f"w{i}"], [f"t{i}"]))
        previous = f"t{i}"
    return GraphView(ops, constants, [previous])


def test_layers_pair_by_name_then_values_then_size_and_order():
    ref = _view([("a.weight", (4, 4), "d1"), ("b.weight", (4, 4), "d2"), ("c.weight", (8, 2), "d3"),
                 ("d.weight", (3, 3), "d4")])
    cand = _view([("a.weight", (4, 4), "x1"), ("other", (4, 4), "d2"), ("opaque", (2, 8), "changed"),
                  ("extra", (5, 5), "d5")])
    pairs = match_layers(ref, ref.layers(), cand, cand.layers())
    assert {i: (layer.op.name, how) for i, (layer, how) in pairs.items()} == {
        0: ("op0", "weight name"), 1: ("op1", "weight values"), 2: ("op2", "weight size and order")}
    assert 3 not in pairs       # no weight of that size left: no counterpart, never a guess


def test_equal_sized_layers_left_unmatched_in_unequal_numbers_are_not_paired():
    ref = _view([("p", (4, 4), "d1"), ("q", (4, 4), "d2")])
    cand = _view([("r", (4, 4), "x1"), ("s", (4, 4), "x2"), ("t", (4, 4), "x3")])
    assert match_layers(ref, ref.layers(), cand, cand.layers()) == {}


def test_a_group_ends_after_fusable_ops_and_stops_at_a_branch():
    constants = {"w": Constant([4, 4], "d", "w"), "b": Constant([4], "e", "b"), "w2": Constant([4, 4], "f", "w2")}
    ops = [Op("mm", "MatMul", ["x", "w"], ["h"]), Op("bias", "Add", ["h", "b"], ["hb"]),
           Op("act", "aten.hardtanh_.default", ["hb"], ["a"]), Op("mm2", "MatMul", ["a", "w2"], ["h2"]),
           Op("res", "Add", ["h2", "a"], ["y"])]
    layers = GraphView(ops, constants, ["y"]).layers()
    assert [(layer.op.name, layer.end, layer.chain) for layer in layers] == [
        ("mm", "a", ["MatMul", "Add", "aten.hardtanh_.default"]),  # `a` feeds two ops: the group ends there
        ("mm2", "h2", ["MatMul"])]           # the residual Add has two variable inputs: not part of the layer
    assert kind("aten.hardtanh_.default") == kind("HardTanh") == "hardtanh"


def test_biases_shapes_and_integer_tables_are_not_weights():
    view = GraphView([Op("pad", "PAD", ["x", "pads"], ["y"]), Op("add", "ADD", ["y", "bias"], ["z"])],
                     {"pads": Constant([4, 2], "p", "pads", "int32"), "bias": Constant([8], "b", "bias")}, ["z"])
    assert view.layers() == []


@pytest.mark.parametrize("got_shape, ref_shape, expected", [
    ((1, 4, 5, 3), (1, 3, 4, 5), (0, 3, 1, 2)),      # NHWC → NCHW
    ((2, 7, 3), (2, 3, 7), (0, 2, 1)),               # channels-last 1-D sequence
    ((1, 3, 3, 3), (1, 3, 3, 3), None),              # same shape: taken as is
])
def test_align_undoes_channels_last(got_shape, ref_shape, expected):
    value = np.arange(np.prod(got_shape), dtype=np.float32).reshape(got_shape)
    aligned = align(value, ref_shape)
    assert aligned.shape == ref_shape
    assert np.array_equal(aligned, value if expected is None else value.transpose(expected))


def test_align_drops_size_one_axes_and_refuses_what_no_layout_explains():
    assert align(np.zeros((64, 100)), (1, 64, 100)).shape == (1, 64, 100)
    assert align(np.zeros((64, 100)), (100, 64)) is None          # rank 2: a transpose would be a guess
    assert align(np.zeros((6, 5)), (5, 7)) is None


def test_verify_report_draws_error_along_depth(tmp_path):
    source, damaged = _conv_net(tmp_path / "net.onnx"), _conv_net(tmp_path / "bad.onnx", scale_conv2=1.05)
    result = api.verify(str(source), [str(damaged)], options=api.VerifyOptions(locate=True),
                        report_dir=str(tmp_path / "report"))
    page = (tmp_path / "report" / "locate.html").read_text()
    assert "error along depth" in page and "first layer outside the fp32 preset: conv2" in page
    assert json.loads((tmp_path / "report" / "locate.json").read_text())["locate"][0]["first_diverging"] == 1
    assert (tmp_path / "report" / "locate.png").stat().st_size > 1000 and result.to_dict()["report"]["html"]
    with pytest.raises(OutputExistsError, match="already exists"):     # refused before anything runs
        api.verify(str(source), [str(damaged)], options=api.VerifyOptions(locate=True),
                   report_dir=str(tmp_path / "report"))


def test_verify_report_without_locate_is_refused_before_running(tmp_path):
    source = _conv_net(tmp_path / "net.onnx")
    proc = run_cli("verify", str(source), str(source), "--report", str(tmp_path / "r"))
    assert proc.returncode == 2 and "add --locate" in proc.stderr
    assert not (tmp_path / "r").exists()
