"""LiteRT cached decoders (issue 30): converters.llm_to_tflite writes one .tflite with prefill/decode signatures,
runtimes.litert.decoder_calls drives it, and the logits of a padded prefill plus decode steps fed their own caches
match transformers' full forward on the same ids. A tiny random Llama (seeded) stands in for a real model: these
tests prove the cache protocol through LiteRT, not the text (the oracle's tests do that on a trained one)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from llm_common import artifact_logits, convert_variants, random_ids, write_random_llama
from llm_common import reference_logits as _reference

pytestmark = [pytest.mark.torch, pytest.mark.litert, pytest.mark.slow]

MAX_CONTEXT, PREFILL_LEN, PROMPT, STEPS = 32, 8, 6, 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The folder, the model, and its three artifacts (fp32, rotated int8, dynamic int8). Planted faults are the
    oracle's tests (test_llm_flow): they live in the shared torch module, not in a converter."""
    from converters.llm_to_tflite import convert

    root = tmp_path_factory.mktemp("llm_litert")
    model = write_random_llama(root / "tiny")
    results = convert_variants(convert, root, ("fp32", "int8", "dynamic"), ".tflite", MAX_CONTEXT,
                               PREFILL_LEN)
    return {"root": root, "model": model, "artifacts": results}


def _ids():
    return random_ids(PROMPT + STEPS)


def _artifact_logits(path, ids, contract) -> np.ndarray:
    """The prompt through the fixed-length prefill signature (padded by DecoderSession, the padding's positions past
    it), then one decode call per id."""
    from deploykit.runner import RunnerOptions
    from runtimes.litert import decoder_calls

    calls = decoder_calls(str(path), RunnerOptions(threads=1))
    assert calls.entries == {"prefill": PREFILL_LEN, "decode": 1}
    return artifact_logits(calls, contract, ids, PROMPT)


def test_one_tflite_keeps_the_contract_and_stores_the_weights_once(tiny):
    from ai_edge_litert import interpreter as litert

    path, result = tiny["artifacts"]["fp32"]
    contract = result["contract"]
    assert (contract["max_context"], contract["prefill_len"], contract["quantization"]) == (MAX_CONTEXT, 8, "fp32")
    assert result["files"] == [] and result["notes"]
    signatures = litert.Interpreter(model_path=str(path)).get_signature_list()
    assert sorted(signatures) == ["decode", "prefill"]
    for entry in signatures.values():
        assert sorted(entry["inputs"]) == ["input_pos", "k_cache", "tokens", "v_cache"]
        assert sorted(entry["outputs"]) == ["k_cache_out", "logits", "v_cache_out"]
    weight_bytes = sum(p.numel() for p in tiny["model"].parameters()) * 4
    assert weight_bytes < path.stat().st_size < 1.5 * weight_bytes       # two signatures, one copy of the weights


def test_prefill_then_decode_matches_transformers(tiny):
    path, result = tiny["artifacts"]["fp32"]
    ids = _ids()
    reference = _reference(tiny["model"], ids)
    got = _artifact_logits(path, ids, result["contract"])
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() < 1e-4


def test_dynamic_int8_is_smaller_and_close(tiny):
    path, result = tiny["artifacts"]["dynamic"]
    assert result["contract"]["quantization"] == "dynamic"
    assert path.stat().st_size < 0.5 * tiny["artifacts"]["fp32"][0].stat().st_size    # int8 weights, really
    ids = _ids()
    reference = _reference(tiny["model"], ids)
    error = np.abs(_artifact_logits(path, ids, result["contract"]) - reference).max()
    assert error < 0.1 * np.abs(reference).max(), error


def _weights(path) -> tuple:
    """(all constant arrays, the weight arrays of the FULLY_CONNECTED / EMBEDDING_LOOKUP ops) of the file's first
    subgraph (the two signatures share the buffers)."""
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(model_path=str(path),
                                     experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ops = interpreter._get_ops_details()
    produced = {int(i) for op in ops for i in op["outputs"]}
    constants = {}
    for detail in interpreter.get_tensor_details():
        try:
            if detail["index"] not in produced:
                constants[detail["index"]] = interpreter.get_tensor(detail["index"])
        except ValueError:        # an input or a variable: no data
            continue
    matmuls = [constants[int(op["inputs"][1])] for op in ops
               if op["op_name"] in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP") and int(op["inputs"][1]) in constants]
    return list(constants.values()), matmuls


def test_int8_is_rotated_int8_weights_a_quarter_of_fp32_and_close(tiny):
    path, result = tiny["artifacts"]["int8"]
    assert result["contract"]["quantization"] == "int8" and "Hadamard" in result["notes"][-1]
    assert not path.with_name(path.name + ".float").exists()          # the float intermediate is removed
    fp32_weights = sum(a.nbytes for a in _weights(tiny["artifacts"]["fp32"][0])[0] if a.dtype == np.float32)
    constants, matmuls = _weights(path)
    int8_weights = sum(a.nbytes for a in constants if a.dtype == np.int8)
    assert 0.24 < int8_weights / fp32_weights < 0.26, (int8_weights, fp32_weights)     # a quarter of the bytes
    # Every matmul weight is int8 but the inserted Hadamard rotations (square, entries +-1/sqrt(n)).
    rotations = [w for w in matmuls if w.dtype == np.float32]
    assert rotations and len(matmuls) - len(rotations) >= 15        # 2 layers x 7 projections + the head
    for matrix in rotations:
        assert matrix.shape[0] == matrix.shape[1] and np.allclose(np.abs(matrix), matrix.shape[0] ** -0.5)
    assert all(w.dtype == np.int8 for w in matmuls if w.dtype != np.float32)
    ids = _ids()
    reference = _reference(tiny["model"], ids)
    got = _artifact_logits(path, ids, result["contract"])
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.999, cosine                       # measured 0.99988
    assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()     # measured 1.4 %


def test_an_int8_quantizer_failure_is_one_line(tmp_path):
    from converters.llm_to_tflite import _rotated_int8
    from deploykit.errors import ConversionError

    broken = tmp_path / "decoder.tflite.float"
    broken.write_bytes(b"not a flatbuffer")
    with pytest.raises(ConversionError, match="ai-edge-quantizer could not quantize") as info:
        _rotated_int8(broken, str(tmp_path / "decoder.tflite"))
    assert "\n" not in str(info.value) and "--quantize" in info.value.remedy
    assert not (tmp_path / "decoder.tflite").exists()


def test_a_plain_tflite_is_refused(tiny):
    import litert_torch
    import torch

    from deploykit.errors import ModelLoadError
    from deploykit.runner import RunnerOptions
    from runtimes.litert import decoder_calls

    plain = tiny["root"] / "plain.tflite"
    litert_torch.convert(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),)).export(str(plain))
    with pytest.raises(ModelLoadError, match="no prefill/decode signatures with a KV cache") as info:
        decoder_calls(str(plain), RunnerOptions())
    assert "--to tflite" in info.value.remedy and "\n" not in str(info.value)


def test_a_bad_quantize_mode_is_one_line(tiny):
    from converters.llm_to_tflite import convert
    from deploykit.errors import UsageError

    with pytest.raises(UsageError, match="--quantize int4"):
        convert({"source": str(tiny["root"] / "tiny"), "output": str(tiny["root"] / "x.tflite"),
                 "max_context": MAX_CONTEXT, "prefill_len": PREFILL_LEN, "quantize": "int4"}, {})
    assert json.loads(json.dumps(tiny["artifacts"]["fp32"][1]))        # the child's answer travels as JSON
