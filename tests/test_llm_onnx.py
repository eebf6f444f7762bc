"""ONNX cached decoders (issue 30): converters.llm_to_onnx writes one graph whose token count is dynamic (prefill
and decode share it), runtimes.onnxruntime.decoder_calls drives it, and the logits of a prefill plus decode steps
fed their own caches match transformers' full forward on the same ids. A tiny random Llama (seeded) stands in for
a real model: these tests prove the cache protocol through ONNX Runtime, not the text (the oracle's tests do that
on a trained one)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime, pytest.mark.llm, pytest.mark.slow]

MAX_CONTEXT, PROMPT, STEPS = 32, 6, 5
VOCAB = 300


def _tiny_llama_folder(folder):
    """A seeded random Llama as a Hugging Face folder: config, safetensors, and a WordLevel tokenizer.json."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The folder, the model, and its artifacts (fp32, int8, int4, the planted rope fault), each in its own
    folder so that a stray side file would show."""
    from converters.llm_to_onnx import convert

    root = tmp_path_factory.mktemp("llm_onnx")
    model = _tiny_llama_folder(root / "tiny")
    results = {}
    for name, quantize, fault in (("fp32", "fp32", ""), ("int8", "int8", ""), ("int4", "int4", ""),
                                  ("rope", "fp32", "rope")):
        output = root / name / "decoder.onnx"
        output.parent.mkdir()
        request = {"source": str(root / "tiny"), "output": str(output), "max_context": MAX_CONTEXT,
                   "prefill_len": None, "quantize": quantize, "fault": fault}
        results[name] = (output, convert(request, {}))
    return {"root": root, "model": model, "artifacts": results}


def _ids():
    return np.random.default_rng(7).integers(1, VOCAB, size=PROMPT + STEPS).astype(np.int32)


def _reference(model, ids) -> np.ndarray:
    """transformers' full forward over all the ids: logits [len(ids), V]."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))[None]).logits[0].numpy()


def _artifact_logits(path, ids, contract) -> np.ndarray:
    """Prefill the prompt (its own length: the graph's T is dynamic), then decode the rest one id at a time,
    feeding each call's caches to the next: logits [len(ids), V] in the reference's positions."""
    from deploykit.runner import RunnerOptions
    from runtimes.onnxruntime import decoder_calls

    calls = decoder_calls(str(path), RunnerOptions(threads=1))
    assert calls.entries == {"prefill": None, "decode": 1}
    shape = (contract["layers"], contract["kv_heads"], contract["max_context"], contract["head_dim"])
    out = calls.call("prefill", {"tokens": ids[None, :PROMPT], "input_pos": np.arange(PROMPT, dtype=np.int32),
                                 "k_cache": np.zeros(shape, np.float32), "v_cache": np.zeros(shape, np.float32)})
    rows = [out["logits"][0]]
    for pos in range(PROMPT, len(ids)):
        out = calls.call("decode", {"tokens": ids[None, pos:pos + 1], "input_pos": np.array([pos], np.int32),
                                    "k_cache": out["k_cache_out"], "v_cache": out["v_cache_out"]})
        rows.append(out["logits"][0])
    calls.close()
    return np.concatenate(rows)


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


@pytest.mark.parametrize("mode, bound, size", [("int8", 0.03, 0.6), ("int4", 0.3, 0.45)])
def test_quantized_decoders_run_within_a_loose_bound(tiny, mode, bound, size):
    """Weights in MatMulNBits / GatherBlockQuantized: smaller (the tiny graph's own nodes weigh as much as its
    weights: measured 0.47 and 0.39 of the fp32 file), and the logits move, by less for 8 bits than for 4 (they
    span about ±0.6; measured: int8 0.0074, int4 0.11)."""
    import onnx

    output, info = tiny["artifacts"][mode]
    assert info["contract"]["quantization"] == mode and info["files"] == []
    ops = {n.op_type for n in onnx.load(str(output)).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "MatMul" in ops   # attention's MatMuls stay float
    assert output.stat().st_size < tiny["artifacts"]["fp32"][0].stat().st_size * size
    ids = _ids()
    error = np.abs(_artifact_logits(output, ids, info["contract"]) - _reference(tiny["model"], ids)).max()
    assert 0 < error < bound


def test_planted_rope_fault_shows_from_its_position(tiny):
    """The "rope" fault rotates positions >= 8 one step too far: the logits agree before it and differ from it."""
    from deploykit.transforms.cached_decoder import FAULT_FROM

    output, info = tiny["artifacts"]["rope"]
    ids = np.random.default_rng(11).integers(1, VOCAB, size=12).astype(np.int32)
    got = _artifact_logits(output, ids, info["contract"])
    error = np.abs(got - _reference(tiny["model"], ids)).max(axis=-1)
    assert error[:FAULT_FROM].max() < 1e-4
    assert error[FAULT_FROM:].min() > 1e-3


def test_an_onnx_without_a_cache_is_refused(tiny, tmp_path):
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
    assert "has no KV-cache inputs (tokens, input_pos, k_cache, v_cache): it is not a cached decoder" in str(caught.value)
    assert "deploykit export SRC --to onnx" in caught.value.remedy


def test_an_unknown_quantize_mode_is_refused_before_loading(tmp_path):
    from converters.llm_to_onnx import convert
    from deploykit.errors import UsageError

    with pytest.raises(UsageError, match="--quantize fp16 is not an ONNX mode"):
        convert({"source": str(tmp_path), "output": str(tmp_path / "x.onnx"), "max_context": 32, "prefill_len": None,
                 "quantize": "fp16", "fault": ""}, {})
