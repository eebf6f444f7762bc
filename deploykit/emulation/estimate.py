"""How long an emulated run will take, before it starts: refuse one that cannot finish within ``--timeout``.

Emulated time grows with the arithmetic, so the estimate counts the multiply-accumulates of the ops that
dominate it (convolutions, fully connected layers, matrix products: 2 FLOPs per MAC) straight from the model
file (``deploykit.flop_count``, the count bench's FLOPs column uses too) and divides them by the rate measured
under qemu on this project's samples (docs/arm.md). It is an order of magnitude, not a timing: it only decides
whether a run is hopeless, and it is named again if a run times out.
"""
from __future__ import annotations

import math
from typing import Optional

from deploykit.emulation.cores import core as core_named
from deploykit.errors import UsageError
from deploykit.flop_count import onnx_flops, tflite_flops
from deploykit.formats import Format

# Emulated FLOP/s on one thread of this host class (qemu 7.2, x86-64): MobileNetV2 fp32 ~3.5 s a call for 0.6
# GFLOP, two_layer_net ~30 ms a sample for 13 MFLOP; fp16 arithmetic (a core with FEAT_FP16) ~2.6x slower, int8
# XNNPACK ~9x faster than fp32 (FIELD-NOTES, third round). The lower figure of each is taken.
RATES = {"fp32": 150e6, "fp16": 60e6, "int8": 1.2e9}
START_S = 3.0           # qemu + the arm64 Python + importing the runtime, measured 1.9-3.4 s


def estimate(path: str, fmt: Format, samples: int, cpu: str) -> Optional[dict]:
    """{"seconds", "flops", "precision", "cpu"} for running ``samples`` inputs through the model on core ``cpu``,
    or None when the file cannot be counted here (no reader installed, an unreadable graph)."""
    try:
        counted = (tflite_flops(path) if fmt == Format.TFLITE else onnx_flops(path) if fmt == Format.ONNX
                   else None)
    except Exception:           # an estimate never stops a run: a graph it cannot read is simply not counted
        return None
    if counted is None:
        return None
    flops, precision = counted
    chosen = core_named(cpu)
    if precision == "fp16" and not chosen.fp16_arithmetic:
        precision = "fp32"      # no fp16 arithmetic: the runtime computes in fp32 after dequantizing
    seconds = START_S + samples * flops / RATES[precision]
    return {"seconds": seconds, "flops": flops, "precision": precision, "cpu": chosen.name}


def refuse_if_too_slow(path: str, fmt: Format, samples: int, cpu: str, timeout: float) -> Optional[dict]:
    """The estimate (None when uncounted); UsageError when it exceeds ``timeout``.

    Exit 2, not 1: nothing was learnt about the artifact, the time limit the user gave is what cannot be met."""
    guess = estimate(path, fmt, samples, cpu)
    if guess is not None and guess["seconds"] > timeout:
        raise UsageError(f"running {samples} sample(s) would take about {describe(guess)} "
                         f"(limit --timeout {timeout:g} s)",
                         f"raise --timeout to {suggested_timeout(guess)}, or verify fewer --samples")
    return guess


def describe(guess: dict) -> str:
    """'41 s on the emulated cortex-a76 (1.2 GFLOP a sample, fp32)'."""
    return f"{math.ceil(guess['seconds']):g} s on the emulated {guess['cpu']} ({guess['flops'] / 1e9:.2g} GFLOP " \
           f"a sample, {guess['precision']})"


def suggested_timeout(guess: dict) -> int:
    # Twice the estimate: it is an order of magnitude, and a busy host emulates slower.
    return int(math.ceil(guess["seconds"] * 2 / 10) * 10)
