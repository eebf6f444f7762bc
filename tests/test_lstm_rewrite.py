"""LSTMs put into the form onnx2tf converts (deploykit.transforms.lstm, issue 27 defect 6): bidirectional, reverse,
long and multi-layer LSTMs compute what the fused node does on ONNX Runtime, convert to TFLite without LSTM or Flex
ops, and every node left as it is gets a note saying why."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.transforms.lstm import MAX_STEPS, unroll
from deploykit.transforms.onnx_rewrites import unroll_lstms
from tests.hostile.builders import onnx_model

pytestmark = pytest.mark.onnxruntime


def _lstm_graph(steps=4, batch=2, features=5, hidden=4, direction="forward", states="inputs", layers=1, opset=17,
                peepholes=False, pick_last_state=False, batch_dim=None, steps_dim=None):
    """``layers`` stacked LSTM nodes as torch.onnx writes nn.LSTM (x [T, B, I]; each layer's Y [T, D, B, H] made
    [T, B, D·H] for the next). states: "inputs" (fed: what onnx2tf mislays), "absent", or "zeros" (stored).
    Outputs: the last layer's Y, Y_h, Y_c — or with ``pick_last_state``, torch's h_n[-1] (a Gather of the stacked
    Y_h of every layer)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    count = 2 if direction == "bidirectional" else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps_dim or steps, batch_dim or batch, features])
    inputs, weights, nodes, width, source, last_states = [x], [], [], features, "x", []

    def stored(array, name):
        weights.append(numpy_helper.from_array(array, name))
        return name

    for layer in range(layers):
        w = stored(rng.uniform(-0.5, 0.5, (count, 4 * hidden, width)).astype(np.float32), f"W{layer}")
        r = stored(rng.uniform(-0.5, 0.5, (count, 4 * hidden, hidden)).astype(np.float32), f"R{layer}")
        b = stored(rng.uniform(-0.5, 0.5, (count, 8 * hidden)).astype(np.float32), f"B{layer}")
        state = {"absent": ["", ""], "zeros": [stored(np.zeros((count, batch, hidden), np.float32), f"z{layer}")] * 2,
                 "inputs": [f"h0_{layer}", f"c0_{layer}"]}[states]
        if states == "inputs":
            inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [count, batch, hidden]) for n in state]
        extra = [stored(rng.uniform(-0.5, 0.5, (count, 3 * hidden)).astype(np.float32), f"P{layer}")] * peepholes
        nodes.append(helper.make_node("LSTM", [source, w, r, b, "", *state, *extra],
                                      [f"Y{layer}", f"Y_h{layer}", f"Y_c{layer}"], name=f"/rnn/LSTM_{layer}",
                                      hidden_size=hidden, direction=direction))
        last_states.append(f"Y_h{layer}")
        if layer + 1 < layers:
            shape = stored(np.array([steps, batch, count * hidden], np.int64), f"shape{layer}")
            nodes += [helper.make_node("Transpose", [f"Y{layer}"], [f"Yt{layer}"], perm=[0, 2, 1, 3]),
                      helper.make_node("Reshape", [f"Yt{layer}", shape], [f"X{layer + 1}"])]
            source, width = f"X{layer + 1}", count * hidden
    top = layers - 1
    if pick_last_state:
        nodes += [helper.make_node("Concat", last_states, ["h_n"], axis=0),
                  helper.make_node("Gather", ["h_n", stored(np.array(-1, np.int64), "last")], ["h_last"], axis=0)]
        outputs = [helper.make_tensor_value_info("h_last", TensorProto.FLOAT, [batch, hidden])]
    else:
        outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                   for name in (f"Y{top}", f"Y_h{top}", f"Y_c{top}")]
    graph = helper.make_graph(nodes, "lstm", inputs, outputs, weights)
    return onnx.shape_inference.infer_shapes(onnx_model(graph, opset=opset))


def _copy(model):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _assert_same_results(model, rewritten, batch=2):
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(rewritten)
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.standard_normal([d.dim_value or batch for d in i.type.tensor_type.shape.dim]).astype(
        np.float32) for i in model.graph.input}

    def run(proto):
        return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    for want, got in zip(run(model), run(rewritten)):
        assert want.shape == got.shape
        np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("variant", [
    {"direction": "bidirectional"}, {"direction": "reverse"}, {"direction": "bidirectional", "states": "absent"},
    {"steps": 160, "batch": 1, "features": 40, "hidden": 16}, {"layers": 3, "direction": "bidirectional"},
    {"direction": "reverse", "states": "zeros", "opset": 11},                  # Split's sizes as an attribute
    {"direction": "bidirectional", "states": "absent", "batch_dim": "batch"},   # an unknown batch
], ids=["bidirectional", "reverse", "bidirectional-no-state", "160-steps", "3-layer-bidirectional", "opset-11",
        "dynamic-batch"])
def test_an_unrolled_lstm_computes_what_the_fused_one_does(variant):
    model = _lstm_graph(**variant)
    rewritten = _copy(model)
    assert unroll(rewritten) == variant.get("layers", 1)
    ops = {node.op_type for node in rewritten.graph.node}
    assert "LSTM" not in ops and {"MatMul", "Sigmoid", "Tanh", "Split"} <= ops, ops
    _assert_same_results(model, rewritten)


def test_the_unroll_projects_every_steps_input_at_once():
    """Only the recurrence is unrolled: one input MatMul per direction, one recurrent MatMul a step after the first."""
    model = _lstm_graph(steps=50, direction="bidirectional", states="absent")
    rewritten = _copy(model)
    unroll(rewritten)
    assert sum(node.op_type == "MatMul" for node in rewritten.graph.node) == 2 * (1 + 49)
    assert len(rewritten.graph.node) < 14 * 2 * 50


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_absent_initial_states_become_stored_zeros_and_the_lstm_stays_fused(direction):
    """onnx2tf converts a fused LSTM of any length when its states are stored; without them it stops."""
    from onnx import numpy_helper

    model = _lstm_graph(steps=400, batch=1, direction=direction, states="absent")
    rewritten, notes = _copy(model), []
    assert unroll_lstms(rewritten, notes) == 1
    node = next(node for node in rewritten.graph.node if node.op_type == "LSTM")
    stored = {init.name: numpy_helper.to_array(init) for init in rewritten.graph.initializer}
    count = 2 if direction == "bidirectional" else 1
    state = stored[node.input[5]]
    assert node.input[6] == node.input[5] and state.shape == (count, 1, 4) and not state.any()
    assert notes == ["LSTM node '/rnn/LSTM_0' kept fused, onnx2tf converts it into a loop once given stored zero "
                     "initial states (initial_h and initial_c: ONNX's default)"]
    _assert_same_results(model, rewritten, batch=1)


def test_states_fed_as_inputs_are_unrolled_in_any_direction_and_past_64_steps():
    model = _lstm_graph(steps=100, direction="reverse", layers=2)
    rewritten, notes = _copy(model), []
    assert unroll_lstms(rewritten, notes) == 2
    assert "LSTM" not in {node.op_type for node in rewritten.graph.node}
    assert all("unrolled into MatMul/Sigmoid/Tanh (100 steps" in note for note in notes) and len(notes) == 2, notes
    _assert_same_results(model, rewritten)


@pytest.mark.parametrize("variant, why", [
    ({"steps": MAX_STEPS + 1, "batch": 1, "hidden": 2}, f"{MAX_STEPS + 1} steps is over the {MAX_STEPS}"),
    ({"peepholes": True}, "peephole weights (input P) are not unrolled"),
    ({"steps_dim": "seq"}, "its sequence length is unknown (give the input's shape with --input)"),
])
def test_every_lstm_left_fused_gets_a_note_saying_why(variant, why):
    model = _lstm_graph(**variant)
    rewritten, notes = _copy(model), []
    assert unroll_lstms(rewritten, notes) == 0 and rewritten == model
    assert len(notes) == 1 and notes[0].startswith("LSTM node '/rnn/LSTM_0' left fused although onnx2tf mislays an "
                                                   "initial state computed in the graph: it is not unrolled, ")
    assert why in notes[0], notes


def test_an_lstm_with_stored_states_is_left_as_it_is_with_a_note():
    model = _lstm_graph(states="zeros", direction="bidirectional")
    rewritten, notes = _copy(model), []
    assert unroll_lstms(rewritten, notes) == 0 and rewritten == model
    assert notes == ["LSTM node '/rnn/LSTM_0' kept fused, onnx2tf converts it into a loop"]


def test_torchs_h_n_minus_one_reads_the_last_layers_state():
    """A 3-layer LSTM's hidden[-1]: Gather(-1) of the Concat of every layer's Y_h — onnx2tf gathered along the
    wrong axis ([3, 256] for [1, 256], a traced speaker encoder)."""
    model = _lstm_graph(layers=3, states="zeros", pick_last_state=True)
    rewritten, notes = _copy(model), []
    assert unroll_lstms(rewritten, notes) == 1
    assert "Gather" not in {node.op_type for node in rewritten.graph.node}
    assert notes[0].startswith("1 Gather(s) of one layer from stacked LSTM states (torch's h_n[-1])"), notes
    _assert_same_results(model, rewritten)


def _tflite_ops(path) -> set:
    from ai_edge_litert.interpreter import Interpreter

    return {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}


def _assert_no_lstm_or_flex_ops(path):
    ops = _tflite_ops(path)
    assert not {op for op in ops if op.startswith("Flex") or "LSTM" in op or op == "CUSTOM"}, ops


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.litert
@pytest.mark.parametrize("direction", ["bidirectional", "reverse"])
def test_a_long_lstm_without_initial_states_converts_to_tflite(tmp_path, direction):
    """onnx2tf stopped on both ("'NoneType' object is not subscriptable"; "An `initial_state` was passed that is not
    compatible"); 2 layers × 100 steps, as exporters other than torch write them (no state inputs)."""
    import onnx

    from deploykit import api

    source = tmp_path / "lstm.onnx"
    onnx.save(_lstm_graph(steps=100, batch=1, features=12, hidden=16, direction=direction, states="absent",
                          layers=2), str(source))
    result = api.export(str(source), "tflite", str(tmp_path / "lstm.tflite"))
    assert result.passed, result.parity
    _assert_no_lstm_or_flex_ops(tmp_path / "lstm.tflite")


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.litert
def test_an_lstm_fed_its_state_converts_to_tflite_past_64_steps(tmp_path):
    """States fed as inputs (onnx2tf mislays them): unrolled at 80 steps, reverse (was: left fused over 64)."""
    import onnx

    from deploykit import api

    source = tmp_path / "cell.onnx"
    onnx.save(_lstm_graph(steps=80, batch=1, features=6, hidden=8, direction="reverse"), str(source))
    result = api.export(str(source), "tflite", str(tmp_path / "cell.tflite"))
    assert result.passed, result.parity
    notes = [n for hop in json.loads(open(result.manifest).read())["route"] for n in hop["notes"]]
    assert any("rewrote ops onnx2tf mishandles" in n and "checked: PASS" in n for n in notes), notes
    _assert_no_lstm_or_flex_ops(tmp_path / "cell.tflite")


SPEAKER_ENCODER = '''
import torch


class SpeakerEncoder(torch.nn.Module):
    """resemblyzer's VoiceEncoder: LSTM(40, 256, 3 layers) → Linear → ReLU → L2 norm of the last layer's h_n."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(40, 256, num_layers=3, batch_first=True)
        self.linear = torch.nn.Linear(256, 256)
        self.relu = torch.nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        embeds = self.relu(self.linear(hidden[-1]))
        return embeds / torch.norm(embeds, dim=1, keepdim=True)


torch.manual_seed(0)
with torch.no_grad():
    torch.jit.trace(SpeakerEncoder().eval(), torch.randn(1, 160, 40)).save("speaker.pt")
'''


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.tensorflow
@pytest.mark.litert
def test_a_traced_three_layer_speaker_encoder_converts_to_tflite(tmp_path):
    """160 steps, 3 layers, hidden[-1]: the TFLite file had output shape [3, 256] for [1, 256]."""
    import subprocess
    import sys

    from tests.conftest import run_cli

    subprocess.run([sys.executable, "-c", SPEAKER_ENCODER], cwd=tmp_path, check=True, timeout=300)
    proc = run_cli("export", str(tmp_path / "speaker.pt"), "--to", "tflite", "--input", "mels:1x160x40", "-o",
                   str(tmp_path / "speaker.tflite"), "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["parity"]["outputs"][0]["shape"] == [1, 256], report["parity"]
    _assert_no_lstm_or_flex_ops(tmp_path / "speaker.tflite")


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.tensorflow
@pytest.mark.litert
def test_resemblyzers_speaker_encoder_converts_to_tflite(tmp_path):
    """resemblyzer 0.1.4's pretrained VoiceEncoder, traced (field model): exit 4 with shape [3, 256] before."""
    from bench.field_torch import build_resemblyzer
    from deploykit import api
    from tests.field import field_file

    source = build_resemblyzer(field_file("resemblyzer==0.1.4", "resemblyzer/pretrained.pt"))
    result = api.export(str(source), "tflite", str(tmp_path / "voice.tflite"), load=api.load_options(["mels:1x160x40"]))
    assert result.passed, result.parity
    assert result.parity.outputs[0].shape == [1, 256] and result.parity.outputs[0].cosine > 0.99999
    _assert_no_lstm_or_flex_ops(tmp_path / "voice.tflite")



def test_unnamed_lstms_without_y_get_states_of_their_own():
    """Two unnamed LSTMs that omit Y (first output ""): their stored zero states must not share one name."""
    import onnx
    from onnx import helper

    model = _lstm_graph(states="absent", layers=1)
    first = model.graph.node[0]
    first.name, first.output[0] = "", ""
    second = helper.make_node("LSTM", list(first.input), ["", "Y_h_second"], hidden_size=4)
    model.graph.node.append(second)
    model.graph.output.append(helper.make_tensor_value_info("Y_h_second", onnx.TensorProto.FLOAT, None))
    del model.graph.output[0]                               # Y0 is no longer made
    model = onnx.shape_inference.infer_shapes(model)
    rewritten, notes = _copy(model), []
    assert unroll_lstms(rewritten, notes) == 2 and len(notes) == 2
    assert len({init.name for init in rewritten.graph.initializer}) == len(rewritten.graph.initializer)
    _assert_same_results(model, rewritten)


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.litert
def test_ddddocrs_bidirectional_lstm_converts_to_tflite(tmp_path):
    """ddddocr 1.6.1's OCR model (field model: CNN → bidirectional LSTM, hidden 512, states made by ConstantOfShape
    of the input's shape): onnx2tf stopped at LSTM_79 ("Can't convert Python sequence with mixed types")."""
    from deploykit import api
    from tests.field import field_file

    source = field_file("ddddocr==1.6.1", "ddddocr/common.onnx")
    result = api.export(str(source), "tflite", str(tmp_path / "ocr.tflite"),
                        load=api.load_options(["input1:1x1x64x256"]))
    assert result.passed, result.parity
    notes = " ".join(n for hop in result.route for n in hop["notes"])
    assert "LSTM node" in notes and "kept fused" in notes, notes
    _assert_no_lstm_or_flex_ops(tmp_path / "ocr.tflite")
