"""The host side of a cached decoder: the one loop that feeds caches back, whatever runtime runs the calls.

``DecoderSession`` drives a runtime's ``DecoderCalls`` (``deploykit.causal_lm``): a prompt goes through the prefill
entry in chunks of the entry's length (the last chunk padded; padding positions continue past the prompt, so their
cache writes land in slots a later step rewrites before reading them), each generated token through the decode
entry at its position. The caches are the artifact's own outputs fed back as the next call's inputs; nothing here
computes attention. Timing hooks (``on_call``) let bench measure time to first token and decode steps without a
second loop.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from deploykit.causal_lm import DecoderCalls, DecoderContract
from deploykit.errors import UsageError


class DecoderSession:
    """One conversation's cache over ``calls``; ``reset()`` starts a new one."""

    def __init__(self, calls: DecoderCalls, contract: DecoderContract):
        self.calls, self.contract = calls, contract
        self.position = 0
        self.k_cache = self.v_cache = None
        self.reset()

    def reset(self) -> None:
        shape = self.contract.cache_shape
        self.k_cache = np.zeros(shape, np.float32)
        self.v_cache = np.zeros(shape, np.float32)
        self.position = 0

    def _call(self, entry: str, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        feeds = {"tokens": tokens.reshape(1, -1).astype(np.int32), "input_pos": positions.astype(np.int32),
                 "k_cache": self.k_cache, "v_cache": self.v_cache}
        out = self.calls.call(entry, feeds)
        self.k_cache, self.v_cache = out["k_cache_out"], out["v_cache_out"]
        return np.asarray(out["logits"]).reshape(len(positions), -1)

    def prefill(self, ids) -> np.ndarray:
        """Logits [len(ids), V] of each prompt token, the prompt written into the cache from the current position."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        self._check_room(len(ids))
        chunk = self.calls.entries.get("prefill") or self.contract.max_context
        logits = []
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            fixed = self.calls.entries.get("prefill")
            width = fixed or len(part)
            tokens = np.zeros(width, np.int64)
            tokens[:len(part)] = part
            positions = self.position + np.arange(width)
            logits.append(self._call("prefill", tokens, positions)[:len(part)])
            self.position += len(part)
        return np.concatenate(logits).astype(np.float32)

    def decode(self, token: int) -> np.ndarray:
        """Logits [V] after ``token`` at the next position."""
        self._check_room(1)
        logits = self._call("decode", np.asarray([token]), np.asarray([self.position]))[0]
        self.position += 1
        return logits.astype(np.float32)

    def _check_room(self, count: int) -> None:
        if self.position + count > self.contract.max_context:
            raise UsageError(f"{self.position + count} positions are needed but the artifact's context is "
                             f"{self.contract.max_context} tokens",
                             "shorten the prompt, lower --tokens, or re-export with a larger --max-context")

    def greedy(self, prompt_ids, count: int, on_token: Optional[Callable] = None) -> tuple:
        """(tokens [count], prefill logits [P, V]) of greedy decoding from a fresh cache."""
        self.reset()
        prefill = self.prefill(prompt_ids)
        tokens = [int(np.argmax(prefill[-1]))]
        if on_token:
            on_token(tokens[-1])
        while len(tokens) < count:
            tokens.append(int(np.argmax(self.decode(tokens[-1]))))
            if on_token:
                on_token(tokens[-1])
        return np.asarray(tokens, np.int64), prefill

    def forced(self, prompt_ids, continuation) -> np.ndarray:
        """Logits [len(continuation) - 1, V] of each decode step fed the given tokens (teacher forcing)."""
        self.reset()
        self.prefill(prompt_ids)
        steps = [self.decode(int(token)) for token in list(continuation)[:-1]]
        return np.stack(steps) if steps else np.zeros((0, self.contract.vocab), np.float32)


def timed_generation(session: DecoderSession, prompt_ids, count: int, clock=time.perf_counter) -> dict:
    """Seconds to the first token (prefill + argmax) and per decode step for one greedy generation."""
    session.reset()
    start = clock()
    logits = session.prefill(prompt_ids)
    token = int(np.argmax(logits[-1]))
    first = clock() - start
    steps = []
    for _ in range(count - 1):
        begin = clock()
        token = int(np.argmax(session.decode(token)))
        steps.append(clock() - begin)
    return {"ttft_s": first, "decode_s": steps}
