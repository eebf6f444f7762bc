"""The host loop and the generation oracle on a numpy decoder (no framework, no conversion: the quick loop).

``ToyCalls`` is a real cached decoder in numpy: a token's "key" is its embedding, the logits at a position are a
fixed projection of the mean of the keys the position may attend to (slots <= its position). It honours the
contract (tokens, input_pos, k_cache, v_cache -> logits, caches) with a fixed or any prefill length, so the session's
padding, chunking and cache feed-back are checked against a cache-free recomputation.
"""
from __future__ import annotations

import numpy as np
import pytest

from deploykit.causal_lm import DecoderCalls, DecoderContract
from deploykit.errors import UsageError
from deploykit.llm import oracle
from deploykit.llm.session import DecoderSession

VOCAB, DIM, CONTEXT = 17, 6, 24
rng = np.random.default_rng(0)
EMBED = rng.normal(size=(VOCAB, DIM)).astype(np.float32)
PROJECT = rng.normal(size=(DIM, VOCAB)).astype(np.float32)


def reference_logits(ids: list) -> np.ndarray:
    """Cache-free: position i sees tokens 0..i."""
    keys = EMBED[np.asarray(ids)]
    return np.stack([keys[:i + 1].mean(0) @ PROJECT for i in range(len(ids))])


class ToyCalls(DecoderCalls):
    def __init__(self, prefill=None, fault_from=None):
        self.entries = {"prefill": prefill, "decode": 1}
        self.fault_from = fault_from
        self.calls = []

    def call(self, entry, feeds):
        tokens, pos = feeds["tokens"][0], feeds["input_pos"]
        assert feeds["tokens"].dtype == np.int32 and pos.dtype == np.int32
        assert self.entries[entry] in (None, len(pos)), (entry, len(pos))
        self.calls.append((entry, len(pos)))
        k = feeds["k_cache"].copy()
        for token, p in zip(tokens, pos):
            if p < CONTEXT:
                write = p - 1 if self.fault_from is not None and p >= self.fault_from else p
                k[0, 0, write] = EMBED[token]
        logits = np.stack([k[0, 0, :p + 1].mean(0) @ PROJECT for p in np.minimum(pos, CONTEXT - 1)])
        return {"logits": logits[None], "k_cache_out": k, "v_cache_out": feeds["v_cache"]}


CONTRACT = DecoderContract("llama", 1, 1, DIM, VOCAB, CONTEXT, None)


@pytest.mark.parametrize("prefill", [None, 4, 5])
def test_session_prefill_and_decode_match_the_cache_free_recomputation(prefill):
    ids = [3, 1, 4, 1, 5, 9, 2]
    calls = ToyCalls(prefill)
    session = DecoderSession(calls, CONTRACT)
    got = session.prefill(ids)
    np.testing.assert_allclose(got, reference_logits(ids), rtol=1e-6, atol=1e-6)
    step = session.decode(6)
    np.testing.assert_allclose(step, reference_logits(ids + [6])[-1], rtol=1e-6, atol=1e-6)
    if prefill:      # fixed-length prefill: every prefill call had exactly that length (the last one padded)
        assert [n for e, n in calls.calls if e == "prefill"] == [prefill] * -(-len(ids) // prefill)


def test_session_refuses_more_positions_than_the_context():
    session = DecoderSession(ToyCalls(), CONTRACT)
    session.prefill([i % VOCAB for i in range(CONTEXT - 1)])
    session.decode(1)
    with pytest.raises(UsageError, match=f"context is {CONTEXT} tokens"):
        session.decode(2)


def _arrays(calls, prompts, count):
    session = DecoderSession(calls, CONTRACT)
    out = {}
    for i, ids in enumerate(prompts):
        tokens, prefill = session.greedy(ids, count)
        out[f"prefill_{i}"], out[f"greedy_{i}"] = prefill, tokens
    return out


def _source(prompts, count):
    out = {}
    for i, ids in enumerate(prompts):
        prefill = reference_logits(ids)
        tokens, steps = [int(prefill[-1].argmax())], []
        while len(tokens) < count:
            steps.append(reference_logits(ids + tokens)[-1])
            tokens.append(int(steps[-1].argmax()))
        out.update({f"prefill_{i}": prefill, f"greedy_{i}": np.asarray(tokens), f"steps_{i}": np.stack(steps)})
    windows = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10]]
    return out, windows


def _nll(logits, window):
    probs = np.exp(logits[:-1]) / np.exp(logits[:-1]).sum(-1, keepdims=True)
    return -np.log(probs[np.arange(len(window) - 1), window[1:]])


def _fresh_prefill(session, window):
    session.reset()
    return session.prefill(window)


def _judge(calls, mode="fp32", count=10):
    prompts = [[3, 1, 4], [2, 7, 1, 8, 2]]
    ref, windows = _source(prompts, count)
    got = _arrays(calls, prompts, count)
    session = DecoderSession(calls, CONTRACT)
    for i, ids in enumerate(prompts):
        got[f"steps_{i}"] = session.forced(ids, ref[f"greedy_{i}"])
    ref["nll"] = np.concatenate([_nll(reference_logits(w), w) for w in windows])
    got["nll"] = np.concatenate([_nll(_fresh_prefill(session, w), w) for w in windows])
    return oracle.judge(ref, got, prompts=["a", "b"], prompt_ids=prompts, judge_=oracle.judge_for(mode),
                        decode=lambda ids: " ".join(map(str, ids)), names=("src", "art", "toy"), tokens=count)


def test_a_faithful_decoder_passes_every_stage():
    report = _judge(ToyCalls(prefill=4))
    assert report.passed, report.summary()
    assert set(report.stages) == {"prefill", "decode", "greedy", "perplexity"}
    assert abs(report.perplexity["delta"]) < 1e-6
    assert report.to_dict()["passed"] is True


def test_a_corrupted_cache_update_is_caught_at_the_step_it_starts():
    report = _judge(ToyCalls(fault_from=6))
    assert not report.passed
    assert report.stages["prefill"]["passed"]            # prompts are 3 and 5 tokens: the fault starts later
    decode = report.stages["decode"]["detail"]
    assert not report.stages["decode"]["passed"]
    # prompt 1 (3 tokens): decode step k sits at position 3 + k - 1, so position 6 is step 4
    assert "prompt 1, decode step 4 (position 6)" in decode, decode


def test_a_divergence_names_the_step_both_tokens_and_the_margin():
    prompts = [[3, 1, 4]]
    ref, _ = _source(prompts, 6)
    got = {k: v.copy() for k, v in ref.items()}
    got["greedy_0"][3] = (ref["greedy_0"][3] + 1) % VOCAB
    got["nll"] = ref["nll"] = np.array([1.0, 2.0])
    report = oracle.judge(ref, got, prompts=["p"], prompt_ids=prompts, judge_=oracle.judge_for("fp32"),
                          decode=lambda ids: f"<{ids[0]}>", names=("s", "a", "r"), tokens=6)
    d = report.prompts[0].divergence
    assert (d.step, d.position) == (3, 6)
    assert (d.source_token, d.artifact_token) == (ref["greedy_0"][3], got["greedy_0"][3])
    top = np.sort(ref["steps_0"][2])[-2:]
    assert d.margin == pytest.approx(top[1] - top[0])
    assert not report.stages["greedy"]["passed"] and "fp32 must match exactly" in report.stages["greedy"]["detail"]


def test_a_near_tie_flip_is_allowed_for_quantized_artifacts_only():
    prompts = [[3, 1, 4]]
    ref, _ = _source(prompts, 4)
    step = ref["steps_0"][0]
    order = np.argsort(step)
    step[order[-2]] = step[order[-1]] - 1e-3           # the source's top-2 nearly tie at generated token 2
    got = {k: v.copy() for k, v in ref.items()}
    got["greedy_0"][1] = order[-2]
    got["nll"] = ref["nll"] = np.array([1.0])
    common = dict(prompts=["p"], prompt_ids=prompts, decode=str, names=("s", "a", "r"), tokens=4)
    assert oracle.judge(ref, got, judge_=oracle.judge_for("int8"), **common).stages["greedy"]["passed"]
    assert not oracle.judge(ref, got, judge_=oracle.judge_for("fp32"), **common).stages["greedy"]["passed"]


def test_perplexity_outside_the_bound_fails():
    prompts = [[3, 1, 4]]
    ref, _ = _source(prompts, 2)
    got = {k: v.copy() for k, v in ref.items()}
    ref["nll"], got["nll"] = np.array([1.0, 1.0]), np.array([1.02, 1.02])     # perplexity +2 %
    report = oracle.judge(ref, got, prompts=["p"], prompt_ids=prompts, judge_=oracle.judge_for("fp32"),
                          decode=str, names=("s", "a", "r"), tokens=2)
    assert not report.stages["perplexity"]["passed"] and "bound ±1%" in report.stages["perplexity"]["detail"]
    assert oracle.judge(ref, got, prompts=["p"], prompt_ids=prompts, judge_=oracle.judge_for("int8"),
                        decode=str, names=("s", "a", "r"), tokens=2).stages["perplexity"]["passed"]
