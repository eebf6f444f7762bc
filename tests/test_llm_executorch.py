"""ExecuTorch cached decoders (issue 30): converters.llm_to_executorch writes one .pte whose method takes a dynamic
token count (prefill and decode share it), lowered to XNNPACK; runtimes.executorch.decoder_calls drives it, and the
logits of a prefill plus decode steps fed their own caches match transformers' full forward on the same ids. A tiny
random Llama (seeded) stands in for a real model: these tests prove the cache protocol through ExecuTorch, not the
text (the oracle's tests do that on a trained one)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from llm_common import artifact_logits, convert_variants, random_ids, write_random_llama
from llm_common import reference_logits as _reference

pytestmark = [pytest.mark.torch, pytest.mark.executorch, pytest.mark.llm, pytest.mark.slow]

MAX_CONTEXT, PROMPT, STEPS = 32, 6, 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The folder, the model, and its programs (fp32, 8da4w). Planted faults are the oracle's tests (test_llm_flow)."""
    from converters.llm_to_executorch import convert

    root = tmp_path_factory.mktemp("llm_executorch")
    model = write_random_llama(root / "tiny")
    results = convert_variants(convert, root, ("fp32", "8da4w"), ".pte", MAX_CONTEXT)
    return {"root": root, "model": model, "artifacts": results}


def _ids():
    return random_ids(PROMPT + STEPS)


def _artifact_logits(path, ids, contract) -> np.ndarray:
    """The prompt in one prefill call (the method's T is dynamic), then one decode call per id."""
    from deploykit.runner import RunnerOptions
    from runtimes.executorch import decoder_calls

    calls = decoder_calls(str(path), RunnerOptions(threads=1))
    assert calls.entries == {"prefill": None, "decode": 1}
    return artifact_logits(calls, contract, ids, PROMPT)


def test_prefill_and_decode_steps_match_transformers(tiny):
    path, made = tiny["artifacts"]["fp32"]
    contract = made["contract"]
    assert contract["prefill_len"] is None and contract["quantization"] == "fp32"
    assert contract["entry_points"] == {"prefill": "forward", "decode": "forward"}
    ids = _ids()
    got = _artifact_logits(path, ids, contract)
    want = _reference(tiny["model"], ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4


def test_every_layer_lands_in_one_xnnpack_delegate(tiny):
    """The XNNPACK shaping holds: one delegate call, only per-call bookkeeping on portable kernels (the generic
    decoder left each layer in pieces: expand, select, mean, where between a dozen delegate calls a layer)."""
    notes = " ".join(tiny["artifacts"]["fp32"][1]["notes"])
    placement = re.search(r"XNNPACK took (\d+) ops in (\d+) delegate call", notes)
    assert placement and int(placement.group(2)) == 1 and int(placement.group(1)) > 50
    assert not re.search(r"expand_copy|select_copy|mean|view_copy|bmm|linear", notes.split("portable kernels")[1])


def test_8da4w_stays_close_and_is_quantized(tiny):
    path, made = tiny["artifacts"]["8da4w"]
    contract = made["contract"]
    assert contract["quantization"] == "8da4w"
    assert any("int4 weights in groups of 32" in note for note in made["notes"])
    ids = _ids()
    got = _artifact_logits(path, ids, contract)
    want = _reference(tiny["model"], ids)
    error = np.abs(got - want).max()
    # 4-bit weights move a random model's logits (spread ~0.5) by a few hundredths; fp32 is within 1e-6.
    assert 1e-4 < error < 0.1 * np.ptp(want)
    assert path.stat().st_size < 0.6 * tiny["artifacts"]["fp32"][0].stat().st_size


def test_dynamic_token_count_read_as_executorchs_deserializer_reads_it(tiny):
    from executorch.exir._serialize._program import deserialize_pte_binary

    from runtimes.executorch import _dynamic_tokens

    path = tiny["artifacts"]["fp32"][0]
    parsed = deserialize_pte_binary(path.read_bytes())
    program = getattr(parsed, "program", parsed)
    plan = program.execution_plan[0]
    dynamism = plan.values[plan.inputs[0]].val.shape_dynamism
    assert _dynamic_tokens(str(path), {plan.name}) == {plan.name: int(dynamism) != 0}
    assert int(dynamism) != 0


def test_program_without_cache_inputs_is_refused(tiny):
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from deploykit.errors import ModelLoadError
    from runtimes.executorch import decoder_calls

    plain = tiny["root"] / "plain.pte"
    program = torch.export.export(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),))
    plain.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    with pytest.raises(ModelLoadError) as caught:
        decoder_calls(str(plain))
    assert "takes no KV cache: it is not a cached decoder" in str(caught.value)
    assert "--to executorch" in caught.value.remedy


def test_unknown_quantize_mode_is_a_usage_error(tiny):
    from converters.llm_to_executorch import convert
    from deploykit.errors import UsageError

    request = {"source": str(tiny["root"] / "tiny"), "output": str(tiny["root"] / "x.pte"), "max_context": MAX_CONTEXT,
               "prefill_len": None, "quantize": "int4", "fault": ""}
    with pytest.raises(UsageError) as caught:
        convert(request, {})
    assert "8da4w" in caught.value.remedy


def test_layer_caches_concatenate_in_order_through_the_cat_tree():
    """The 5-way cat tree (XNNPACK's cat limit) keeps the layers' order for any depth (SmolLM2 has 30 layers; the
    tiny model above has 2, so the tree itself is checked here)."""
    import torch

    from converters.llm_to_executorch import _concat

    for count in (1, 2, 5, 6, 7, 11, 26, 30, 64):
        parts = [torch.full((1, 2, 3), float(i)) for i in range(count)]
        assert torch.equal(_concat(torch, parts), torch.cat(parts))
