"""bench for causal LMs: time to first token, decode tokens/s beside the memory-bandwidth bound, peak memory, size
and cold start — the source decoding with its own cache in PyTorch (the research row) and each cached-decoder
artifact on its runtime, each case in a child process of its own.

Decoding one token reads every weight once, so a decode step cannot beat ``weight bytes / memory bandwidth``. The
bandwidth is measured here, single-threaded (numpy summing a 256 MiB array, best of several runs), and every decode
figure is shown beside that bound and the fraction of it reached. The artifacts' caches travel as explicit tensors
(``deploykit.causal_lm``): each step also reads and writes the cache, which the note beside the table sizes.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from deploykit import causal_lm, child, manifest, registry
from deploykit.errors import UsageError
from deploykit.formats import detect

DEFAULT_PROMPT_TOKENS = 64
DEFAULT_REPEATS = 3
BANDWIDTH_BYTES = 256 << 20


def bench(models: list, options, llm: causal_lm.LLMOptions, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
          repeats: int = DEFAULT_REPEATS, echo=None) -> dict:
    """Rows for the source (``models[0]``, a causal LM) and each artifact after it, at each of ``options.threads``."""
    if not 1 <= prompt_tokens <= 8192 or not 1 <= repeats <= 1000:
        raise UsageError(f"--prompt-tokens {prompt_tokens} / repeats {repeats} out of range",
                         "give 1..8192 prompt tokens")
    source, artifacts = str(models[0]), [str(m) for m in models[1:]]
    contracts = {a: _contract(a) for a in artifacts}
    for path, contract in contracts.items():
        if prompt_tokens + llm.tokens > contract.max_context:
            raise UsageError(f"{prompt_tokens} prompt tokens + --tokens {llm.tokens} exceed {Path(path).name}'s "
                             f"context of {contract.max_context}", "lower --prompt-tokens or --tokens")
    ids = _prompt_ids(source, llm, prompt_tokens)
    bandwidth = child.run_child("deploykit.llm.speed:bandwidth_job", {}, stage=child.MEASURE,
                                what="memory bandwidth", timeout=options.timeout).info["bytes_per_s"]
    rows = []
    for threads in options.threads:
        if not options.runtimes or "torch" in options.runtimes:
            rows.append(_case(source, "torch", "source_job", {"source": source}, ids, llm, threads, repeats,
                              bandwidth, options.timeout, echo))
        for path, contract in contracts.items():
            entry = registry.runtime_for(detect(path))
            if options.runtimes and entry.name not in options.runtimes:
                continue
            request = {"artifact": path, "runtime": entry.name, "contract": contract.to_dict()}
            rows.append(_case(path, entry.name, "artifact_job", request, ids, llm, threads, repeats, bandwidth,
                              options.timeout, echo, contract))
    return {"kind": "causal_lm", "rows": rows, "bandwidth_gb_s": bandwidth / 1e9, "prompt_tokens": len(ids),
            "tokens": llm.tokens, "repeats": repeats, "headline": headline(rows), "notes": _notes(contracts)}


def _contract(path: str) -> causal_lm.DecoderContract:
    contract = causal_lm.contract_of(manifest.read(path))
    if contract is None:
        raise UsageError(f"{path} is no cached decoder deploykit exported (no causal_lm section in its manifest)",
                         "bench the artifacts `deploykit export SOURCE --to onnx|tflite|executorch` wrote")
    return contract


def _prompt_ids(source: str, llm: causal_lm.LLMOptions, count: int) -> list:
    from deploykit.llm.flow import DATA, MAX_TEXT_BYTES, read_text

    text = read_text(llm.text or DATA / "perplexity.txt", "--text", MAX_TEXT_BYTES)
    got = child.run_child("deploykit.llm.speed:prompt_job", {"source": source, "text": text, "count": count},
                          stage=child.LOAD, what=source, timeout=llm.timeout, reuse=True)
    return got.info["ids"]


def _case(model, row, job, request, ids, llm, threads, repeats, bandwidth, timeout, echo, contract=None) -> dict:
    request = {**request, "ids": ids, "tokens": llm.tokens, "threads": threads, "repeats": repeats}
    base = {"kind": "causal_lm", "model": model, "row": row, "threads": threads,
            "precision": contract.quantization if contract else "fp32 (source)"}
    try:
        got = child.run_child(f"deploykit.llm.speed:{job}", request, stage=child.MEASURE, what=f"{Path(model).name} "
                              f"on {row}", timeout=timeout).info
    except Exception as exc:        # one failing row never hides the others
        result = {**base, "error": str(getattr(exc, "message", exc)).splitlines()[0][:200]}
    else:
        result = {**base, **got}
        if not contract:
            result["size_bytes"] = got["weight_bytes"]
        else:
            result["size_bytes"] = manifest.file_entry(model)["bytes"]
            result["weight_bytes"] = result["size_bytes"]
        result["bound_tok_s"] = bandwidth / result["weight_bytes"]
        result["bound_fraction"] = result["decode_tok_s"] / result["bound_tok_s"]
    if echo:
        echo(result)
    return result


def headline(rows: list) -> Optional[dict]:
    """The fastest artifact's decode at 1 thread against the source's (None without both)."""
    ok = [r for r in rows if "error" not in r and r["threads"] == 1]
    research = next((r for r in ok if r["row"] == "torch"), None)
    production = max((r for r in ok if r["row"] != "torch"), key=lambda r: r["decode_tok_s"], default=None)
    if not research or not production:
        return None
    return {"research": research["row"], "production": production["row"], "model": production["model"],
            "speedup": production["decode_tok_s"] / research["decode_tok_s"],
            "bound_fraction": production["bound_fraction"]}


def _notes(contracts: dict) -> list:
    notes = ["decode bound = weight bytes / single-thread memory bandwidth (numpy sum of 256 MiB, best of 7); the "
             "torch row is the source model with transformers' own dynamic cache"]
    for path, c in contracts.items():
        cache = 2 * 4 * int(np.prod(c.cache_shape))
        notes.append(f"{Path(path).name}: the cache ({cache / 1e6:.1f} MB, keys + values) travels in and out of "
                     "every call as explicit tensors")
    return notes


# --- child jobs ---------------------------------------------------------------------------------------------

def prompt_ids_from(tokenizer, text: str, count: int) -> list:
    """``count`` token ids of ``text`` (repeated when it is shorter)."""
    ids = tokenizer.encode(text).ids or [0]
    while len(ids) < count:
        ids = ids + ids
    return [int(t) for t in ids[:count]]


def prompt_job(request: dict, arrays: dict) -> dict:
    import tokenizers

    from deploykit.transforms import causal_lm_source

    loaded = causal_lm_source.load(request["source"])
    tokenizer = tokenizers.Tokenizer.from_str(loaded.tokenizer_json)
    return {"ids": prompt_ids_from(tokenizer, request["text"], int(request["count"]))}


def bandwidth_job(request: dict, arrays: dict) -> dict:
    """Single-thread read bandwidth: numpy's float32 sum over 256 MiB, best of 7 (the first run pages it in)."""
    data = np.ones(BANDWIDTH_BYTES // 4, np.float32)
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return {"bytes_per_s": data.nbytes / best}


def _summary(started: float, runs: list, peak_bytes: int) -> dict:
    first = runs[0]
    timed = runs[1:] or runs
    steps = [s for run in timed for s in run["decode_s"]]
    return {"cold_start_s": first["open_s"] + first["ttft_s"],
            "ttft_ms": 1e3 * float(np.median([r["ttft_s"] for r in timed])),
            "decode_tok_s": 1.0 / float(np.median(steps)) if steps else float("nan"),
            "decode_ms_p90": 1e3 * float(np.percentile(steps, 90)) if steps else float("nan"),
            "peak_mib": peak_bytes / 2**20, "case_s": time.perf_counter() - started}


def source_job(request: dict, arrays: dict) -> dict:
    """The research row: the source model generating with transformers' own KV cache."""
    import torch

    from deploykit.procinfo import status_bytes
    from deploykit.transforms import causal_lm_source

    started = time.perf_counter()
    torch.set_num_threads(int(request["threads"]))
    loaded = causal_lm_source._load(request["source"])
    open_s = time.perf_counter() - started
    model, ids = loaded.model, torch.tensor([request["ids"]])
    runs = []
    with torch.no_grad():
        for _ in range(1 + int(request["repeats"])):
            begin = time.perf_counter()
            out = model(ids, use_cache=True)
            token = out.logits[0, -1].argmax()
            ttft = time.perf_counter() - begin
            past, steps = out.past_key_values, []
            for _ in range(int(request["tokens"]) - 1):
                begin = time.perf_counter()
                out = model(token.view(1, 1), past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[0, -1].argmax()
                steps.append(time.perf_counter() - begin)
            runs.append({"open_s": open_s, "ttft_s": ttft, "decode_s": steps})
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {**_summary(started, runs, status_bytes("VmHWM")), "weight_bytes": int(weight_bytes)}


def artifact_job(request: dict, arrays: dict) -> dict:
    """An artifact on its runtime, driven through ``DecoderSession`` (the loop verify judged)."""
    from deploykit.llm.session import DecoderSession, timed_generation
    from deploykit.procinfo import status_bytes
    from deploykit.runner import RunnerOptions

    started = time.perf_counter()
    contract = causal_lm.DecoderContract.from_dict(request["contract"])
    entry = registry.runtime_entry(request["runtime"])
    calls = registry.resolve(entry.decoder)(request["artifact"], RunnerOptions(threads=int(request["threads"])))
    open_s = time.perf_counter() - started
    try:
        session = DecoderSession(calls, contract)
        runs = [{"open_s": open_s, **timed_generation(session, request["ids"], int(request["tokens"]))}
                for _ in range(1 + int(request["repeats"]))]
    finally:
        calls.close()
    return _summary(started, runs, status_bytes("VmHWM"))
