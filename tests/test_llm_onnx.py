"""ONNX cached decoders (issue 30): converters.llm_to_onnx writes one graph whose token count is dynamic (prefill
and decode share it), runtimes.onnxruntime.decoder_calls drives it, and the logits of a prefill plus decode steps
fed their own caches match transformers' full forward on the same ids. A tiny random Llama (seeded) stands in for
a real model: these tests prove the cache protocol through ONNX Runtime, not the text (the oracle's tests do that
on a trained one)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from llm_common import VOCAB, artifact_logits, convert_variants, random_ids, write_random_llama
from llm_common import reference_logits as _reference

pytestmark = [pytest.mark.onnxruntime]


def converts(test):
    """The marks of a test that uses the tiny model's exports (torch, transformers, a conversion)."""
    return pytest.mark.torch(pytest.mark.llm(pytest.mark.slow(test)))

MAX_CONTEXT, PROMPT, STEPS = 32, 6, 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The folder, the model (tied embedding / lm_head, as SmolLM2's: the quantized modes share their bytes), and
    its artifacts (fp32, int8, int4), each in its own folder so that a stray side file would show. Planted faults
    are the oracle's tests (test_llm_flow): they live in the shared torch module, not in a converter."""
    from converters.llm_to_onnx import convert

    root = tmp_path_factory.mktemp("llm_onnx")
    model = write_random_llama(root / "tiny", tied=True)
    results = convert_variants(convert, root, ("fp32", "int8", "int4"), ".onnx", MAX_CONTEXT,
                               own_folders=True)
    return {"root": root, "model": model, "artifacts": results}


def _ids():
    return random_ids(PROMPT + STEPS)


def _artifact_logits(path, ids, contract) -> np.ndarray:
    """The prompt in one prefill call (the graph's T is dynamic), then one decode call per id."""
    from deploykit.runner import RunnerOptions
    from runtimes.onnxruntime import decoder_calls

    calls = decoder_calls(str(path), RunnerOptions(threads=1))
    assert calls.entries == {"prefill": None, "decode": 1}
    return artifact_logits(calls, contract, ids, PROMPT)


@converts
def test_fp32_prefill_and_cached_decode_match_transformers(tiny):
    output, info = tiny["artifacts"]["fp32"]
    contract = info["contract"]
    assert contract["prefill_len"] is None and contract["quantization"] == "fp32"
    assert contract["inputs"] == ["tokens", "input_pos", "k_cache", "v_cache"]
    ids = _ids()
    got = _artifact_logits(output, ids, contract)
    want = _reference(tiny["model"], ids)
    assert got.shape == want.shape == (PROMPT + STEPS, VOCAB)
    assert np.abs(got - want).max() < 1e-4


@converts
def test_one_self_contained_file_that_names_its_contract(tiny):
    """No external-data file beside it, and the contract in its metadata_props (an artifact without its manifest
    still says what it is); the graph takes the whole context in one prefill."""
    import onnx

    from deploykit.causal_lm import DecoderContract

    output, info = tiny["artifacts"]["fp32"]
    assert info["files"] == [] and sorted(p.name for p in output.parent.iterdir()) == ["decoder.onnx"]
    proto = onnx.load(str(output))
    stamped = json.loads({p.key: p.value for p in proto.metadata_props}["deploykit.causal_lm"])
    assert DecoderContract.from_dict(stamped) == DecoderContract.from_dict(info["contract"])
    ids = np.random.default_rng(3).integers(1, VOCAB, size=MAX_CONTEXT).astype(np.int32)
    from deploykit.runner import RunnerOptions
    from runtimes.onnxruntime import decoder_calls

    shape = (2, 2, MAX_CONTEXT, 16)
    out = decoder_calls(str(output), RunnerOptions(threads=1)).call(
        "prefill", {"tokens": ids[None], "input_pos": np.arange(MAX_CONTEXT, dtype=np.int32),
                    "k_cache": np.zeros(shape, np.float32), "v_cache": np.zeros(shape, np.float32)})
    assert np.abs(out["logits"][0] - _reference(tiny["model"], ids)).max() < 1e-4


@converts
@pytest.mark.parametrize("mode, bound", [("int8", 0.03), ("int4", 0.3)])
def test_quantized_decoders_run_within_a_loose_bound(tiny, mode, bound):
    """Weights in MatMulNBits / GatherBlockQuantized, the tied embedding reading the lm_head's bytes: smaller
    (the tiny graph's own nodes weigh as much as its weights: measured 0.50 and 0.46 of the fp32 file), and the
    logits move, by less for 8 bits than for 4 (they span about ±1.3; measured: int8 0.009, int4 0.061)."""
    import onnx

    output, info = tiny["artifacts"][mode]
    assert info["contract"]["quantization"] == mode and info["files"] == []
    assert "sharing the lm_head's bytes" in info["notes"][-1]
    graph = onnx.load(str(output)).graph
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = [n for n in graph.node if n.op_type == "MatMulNBits" and gather.input[0] in n.input]
    assert len(head) == 1 and "MatMul" in {n.op_type for n in graph.node}     # attention's MatMuls stay float
    sizes = {name: tiny["artifacts"][name][0].stat().st_size for name in ("fp32", "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < 0.6 * sizes["fp32"]
    ids = _ids()
    error = np.abs(_artifact_logits(output, ids, info["contract"]) - _reference(tiny["model"], ids)).max()
    assert 0 < error < bound


def test_an_onnx_without_a_cache_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from deploykit.errors import ModelLoadError
    from deploykit.runner import RunnerOptions
    from runtimes.onnxruntime import decoder_calls

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelLoadError) as caught:
        decoder_calls(str(path), RunnerOptions())
    assert ("has no KV-cache inputs (tokens, input_pos, k_cache, v_cache): it is not a cached decoder"
            in str(caught.value))
    assert "deploykit export SRC --to onnx" in caught.value.remedy


def test_an_unknown_quantize_mode_is_refused_before_loading(tmp_path):
    from converters.llm_to_onnx import convert
    from deploykit.errors import UsageError

    with pytest.raises(UsageError, match="--quantize fp16 is not an ONNX mode"):
        convert({"source": str(tmp_path), "output": str(tmp_path / "x.onnx"), "max_context": 32, "prefill_len": None,
                 "quantize": "fp16", "fault": ""}, {})


def _matmul_graph(weight, table=None):
    """x[1, T, K] @ weight -> y; with ``table`` [V, K] also the tied pair: e = Gather(table, ids) and
    z = x @ Transpose(table), as the dynamo exporter writes a tied lm_head."""
    from onnx import TensorProto, helper, numpy_helper

    depth, width = weight.shape
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="body")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", depth])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", width])]
    initializers = [numpy_helper.from_array(weight, "w")]
    if table is not None:
        nodes += [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
                  helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
                  helper.make_node("MatMul", ["x", "table_t"], ["z"], name="lm_head")]
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT32, [1, "T"]))
        outputs += [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, "T", depth]),
                    helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "T", table.shape[0]])]
        initializers.append(numpy_helper.from_array(table, "table"))
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializers),
                             opset_imports=[helper.make_opsetid("", 20)])


def _run(proto, feeds) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _grid(rng, rows, cols, kind):
    """A [rows, cols] float32 weight on a GGUF grid along rows in blocks of 32: Q4_1 (w = m + d·q, q in 0..15,
    both ends used, as llama.cpp makes them) or Q8_0 (w = d·q, |q| <= 127 with 127 used)."""
    blocks = rows // 32
    if kind == "q4_1":
        q = rng.integers(0, 16, size=(blocks, 32, cols))
        q[:, 0], q[:, 1] = 0, 15
        d, m = rng.uniform(0.01, 0.1, (blocks, 1, cols)), rng.uniform(-0.6, 0.1, (blocks, 1, cols))
        w = m + d * q
    else:
        q = rng.integers(-127, 128, size=(blocks, 32, cols))
        q[:, 0] = 127
        w = rng.uniform(0.001, 0.01, (blocks, 1, cols)) * q
    return w.reshape(rows, cols).astype(np.float32)


def test_int4_is_exact_on_a_q4_1_grid_and_min_max_rounding_elsewhere():
    """A GGUF Q4_1 weight (the SmolLM2 source's) comes through int4 unchanged: each block keeps its float minimum
    (ORT's own quantizer rounds it to an integer zero point, a bias per block); an off-grid weight is rounded to
    its block's 16 levels (error up to half a step)."""
    from converters.llm_to_onnx import _quantize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, 128)).astype(np.float32)
    on_grid = _grid(rng, 128, 48, "q4_1")
    off_grid = rng.standard_normal((128, 48)).astype(np.float32) * 0.05
    errors = {}
    for name, weight in (("on", on_grid), ("off", off_grid)):
        proto, note = _quantize(_matmul_graph(weight), "int4", vocab=300)
        assert [n.op_type for n in proto.graph.node].count("MatMulNBits") == 1 and "4-bit affine" in note
        errors[name] = np.abs(_run(proto, {"x": x})[0] - x @ weight).max() / np.abs(x @ weight).max()
    assert errors["on"] < 1e-5 < 1e-2 < errors["off"] < 0.3


def test_a_tied_lm_head_and_embedding_share_one_8bit_copy():
    """Gather(table) and MatMul(x, Transpose(table)) read the same packed bytes; on a Q8_0 grid the embedding
    rows come back exact (to float rounding), and the lm_head (int8 activations) within 1 %."""
    import onnx

    from converters.llm_to_onnx import _quantize

    rng = np.random.default_rng(1)
    table = _grid(rng, 64, 40, "q8_0").T.copy()            # [V=40, K=64], blocks along K
    x = rng.standard_normal((1, 3, 64)).astype(np.float32)
    ids = np.array([[0, 39, 7]], np.int32)
    proto, note = _quantize(_matmul_graph(rng.standard_normal((64, 8)).astype(np.float32), table), "int4", vocab=40)
    assert "sharing the lm_head's bytes" in note
    gather = next(n for n in proto.graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in proto.graph.node if n.op_type == "MatMulNBits" and n.input[1] == gather.input[0])
    assert {a.name: a.i for a in head.attribute}["bits"] == 8
    assert "table" not in {i.name for i in proto.graph.initializer}        # the float table is gone
    onnx.checker.check_model(proto)
    _, e, z = _run(proto, {"x": x, "ids": ids})
    assert np.abs(e - table[ids]).max() < 1e-6 * np.abs(table).max()      # float rounding of d·q only
    assert np.abs(z - x @ table.T).max() < 0.01 * np.abs(x @ table.T).max()
