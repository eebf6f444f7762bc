"""The generation oracle's two child jobs: the source's side (PyTorch, full recomputation) and the artifact's side
(its runtime, driven through its cache). Each returns plain arrays; ``deploykit.llm.oracle`` compares them.

Source: for every prompt, the logits of every prompt token (one forward), then greedy decoding where each new
token's logits come from a forward over the *whole* prefix, no cache — the reference every cached step must meet;
and the negative log-likelihood of each token of the perplexity text, window by window.
Artifact: the same prompts through ``DecoderSession`` twice — free-running greedy (its own tokens) and teacher-forced
on the source's tokens (so each step is compared on the same prefix even after the texts part) — and the same NLL.
"""
from __future__ import annotations

import numpy as np

from deploykit.causal_lm import DecoderContract
from deploykit.errors import UsageError

NLL_WINDOW = 128            # tokens per perplexity window (each window starts from an empty cache)
NLL_MAX_TOKENS = 512        # the perplexity text is cut here: enough to tell 1 %, cheap on any runtime


def encode_prompts(tokenizer, prompts: list) -> list:
    """Token ids of each prompt (the tokenizer's own special tokens added, as transformers' tokenizer does)."""
    ids = []
    for number, text in enumerate(prompts, 1):
        encoded = tokenizer.encode(text).ids
        if not encoded:
            raise UsageError(f"prompt {number} encodes to no token", "give non-empty prompts, one per line")
        ids.append([int(t) for t in encoded])
    return ids


def nll_windows(tokenizer, text: str, context: int) -> list:
    """The perplexity text's token windows (each at most the context and NLL_WINDOW tokens long)."""
    ids = tokenizer.encode(text).ids[:NLL_MAX_TOKENS]
    width = min(NLL_WINDOW, context)
    return [ids[i:i + width] for i in range(0, len(ids), width) if len(ids[i:i + width]) >= 2]


def _nll(logits: np.ndarray, window: list) -> np.ndarray:
    """Negative log-likelihood of tokens 1.. of ``window`` given the logits at positions 0..-2 (float64)."""
    x = logits[:-1].astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    log_probs = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return -log_probs[np.arange(len(window) - 1), np.asarray(window[1:])]


def source_reference(request: dict, arrays: dict) -> dict:
    """The source's logits, greedy tokens and NLL (see the module docstring)."""
    import tokenizers
    import torch

    from deploykit.transforms import causal_lm_source

    # One thread: torch's OpenMP pool spin-waits when the cores are shared, and on this 2-core machine under load a
    # SmolLM2 decode step took 1.46 s with 2 threads against 0.13 s with 1 (the oracle needs values, not speed).
    torch.set_num_threads(1)
    loaded = causal_lm_source.load(request["source"])
    tokenizer = tokenizers.Tokenizer.from_str(loaded.tokenizer_json)
    prompt_ids = encode_prompts(tokenizer, request["prompts"])
    count, out = int(request["tokens"]), {}
    model = loaded.model
    with torch.no_grad():
        for index, ids in enumerate(prompt_ids):
            logits, tokens = _greedy_by_recomputation(model, ids, count)
            out[f"prefill_{index}"] = logits[:len(ids)]
            out[f"steps_{index}"] = logits[len(ids):]
            out[f"greedy_{index}"] = np.asarray(tokens, np.int64)
        windows = nll_windows(tokenizer, request.get("text") or "", int(request["max_context"]))
        nll = [_nll(model(torch.tensor([w]), use_cache=False).logits[0].float().numpy(), w) for w in windows]
    out["nll"] = np.concatenate(nll) if nll else np.zeros(0)
    return {"prompt_ids": prompt_ids, "windows": windows, "tokenizer_json": loaded.tokenizer_json,
            "bos_token_id": loaded.bos_token_id, "eos_token_ids": list(loaded.eos_token_ids),
            "family": loaded.info.family, "architecture": loaded.info.architecture,
            "parameters": int(sum(p.numel() for p in model.parameters())), "arrays": out}


def _greedy_by_recomputation(model, ids: list, count: int) -> tuple:
    """The source's greedy tokens and, for the prompt and every step, the logits of a forward over the whole prefix
    with no cache: logits [len(ids) + count - 1, V] (row i predicts the token after position i).

    A causal model's output at position i depends on tokens 0..i only, so one cache-free forward over prompt +
    tokens is the full recomputation of every prefix at once. The tokens are proposed by transformers' own cached
    generation (cheap) and then held to that forward: where its argmax disagrees (a near-tie the cache broke the
    other way), the recomputation's token is taken and generation resumes from there.
    """
    import torch

    tokens, settled = _cached_greedy(model, ids, count), 0
    while True:
        logits = model(torch.tensor([ids + tokens[:-1]]), use_cache=False).logits[0].float().numpy()
        chosen = logits[len(ids) - 1:].argmax(axis=-1)
        # Tokens already settled are not re-judged: a longer sequence may move a near-tie by an ulp, and re-deciding
        # it could go back and forth; each pass settles at least one more token, so this ends within ``count``.
        wrong = [i for i in range(settled, count) if chosen[i] != tokens[i]]
        if not wrong:
            return logits, tokens
        first = wrong[0]
        tokens = tokens[:first] + [int(chosen[first])]
        tokens += _cached_greedy(model, ids + tokens, count - len(tokens))
        settled = first + 1


def _cached_greedy(model, ids: list, count: int) -> list:
    """``count`` greedy tokens after ``ids`` with transformers' own KV cache (never stopping at EOS)."""
    import torch

    if count <= 0:
        return []
    out = model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
    tokens = [int(out.logits[0, -1].argmax())]
    while len(tokens) < count:
        out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


def artifact_run(request: dict, arrays: dict) -> dict:
    """The artifact's logits, greedy tokens and NLL through its runtime's cache (see the module docstring)."""
    from deploykit import registry
    from deploykit.llm.session import DecoderSession
    from deploykit.runner import RunnerOptions

    contract = DecoderContract.from_dict(request["contract"])
    entry = registry.runtime_entry(request["runtime"])
    calls = registry.resolve(entry.decoder)(request["artifact"], RunnerOptions(threads=request.get("threads")))
    out = {}
    try:
        session = DecoderSession(calls, contract)
        count = int(request["tokens"])
        for index, ids in enumerate(request["prompt_ids"]):
            tokens, prefill = session.greedy(ids, count)
            out[f"prefill_{index}"], out[f"greedy_{index}"] = prefill, tokens
            out[f"steps_{index}"] = session.forced(ids, arrays[f"greedy_{index}"])
        nll = []
        for window in request["windows"]:
            session.reset()
            nll.append(_nll(session.prefill(window), window))
        out["nll"] = np.concatenate(nll) if nll else np.zeros(0)
    finally:
        calls.close()
    return {"entries": {k: v for k, v in calls.entries.items()}, "arrays": out}
