"""Verify on the phone's CPU: which runs an emulated ARM runtime adds to a verify, and with which options.

An emulated runtime (``litert-arm64``, ``onnxruntime-arm64``: ``deploykit.emulation``) is its native runtime's own
runner in an arm64 child under qemu. Asked for one, verify also runs the native runtime on the same artifact, so
the report shows x86 and ARM side by side and the delta between them: what a user who verified on the desktop
would miss on the phone. An fp16 artifact runs with fp16 arithmetic on a core that has it (XNNPACK's FORCE_FP16,
what a phone's LiteRT does), and on its x86 counterpart with the same flag: apples to apples.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from deploykit import registry
from deploykit.emulation.cores import DEFAULT_CORE, core
from deploykit.errors import UsageError
from deploykit.runner import RunnerOptions


def emulated_entry(runtime: Optional[str]) -> Optional[registry.RuntimeEntry]:
    """The registry entry of ``runtime`` when it runs on an emulated ARM core (None otherwise)."""
    entry = registry.runtime_entry(runtime) if runtime else None
    return entry if entry is not None and entry.emulates else None


def check_arm_cpu(arm_cpu: Optional[str], runtimes: tuple) -> None:
    """``--arm-cpu`` picks an ARM runtime's core: given without one, it would silently change nothing."""
    if arm_cpu and not any(emulated_entry(name) for name in runtimes):
        raise UsageError(f"--arm-cpu {arm_cpu} picks the core of an emulated ARM runtime, and no --runtime names one",
                         f"add --runtime {' or --runtime '.join(registry.EMULATED_RUNTIMES)}, or drop --arm-cpu")


def with_native_counterparts(runtimes: tuple) -> tuple:
    """``runtimes`` with each emulated one preceded by the native runtime it emulates (unless that is named too):
    the x86 side of the side-by-side report."""
    order: list = []
    for name in runtimes:
        entry = emulated_entry(name)
        if entry is not None and entry.emulates not in runtimes and entry.emulates not in order:
            order.append(entry.emulates)
        if name not in order:
            order.append(name)
    return tuple(order)


def run_options(base: RunnerOptions, runtime: Optional[str], arm_cpu: Optional[str], preset: str,
                runtimes: tuple = ()) -> RunnerOptions:
    """The runner options of one run: an ARM runtime's core (cortex-a76 by default); fp16 arithmetic for an fp16
    artifact (``preset``) on a core that has it, and on the native runtime whose ARM twin is among ``runtimes``."""
    chosen = core(arm_cpu or DEFAULT_CORE)
    emulated = emulated_entry(runtime) is not None
    twin = not emulated and any(getattr(emulated_entry(name), "emulates", None) == runtime for name in runtimes)
    fp16 = preset.split("+")[0] == "fp16" and chosen.fp16_arithmetic and (emulated or twin)
    return replace(base, arm_cpu=chosen.name if emulated else None, fp16_arithmetic=fp16)


def side_by_side(first: Optional[str], second: Optional[str]) -> Optional[tuple]:
    """(native runtime, emulated runtime) when two runs of one artifact are an x86/ARM pair, else None."""
    for native, arm in ((first, second), (second, first)):
        entry = emulated_entry(arm)
        if entry is not None and entry.emulates == native:
            return native, arm
    return None


def side_by_side_note(native: str, arm: str, arm_cpu: Optional[str]) -> str:
    """What the x86-vs-ARM comparison is, for its report."""
    return (f"x86 vs ARM: the same artifact on {native} (this x86-64 machine) and on {arm} "
            f"({core(arm_cpu or DEFAULT_CORE).describe()}, emulated); the delta between the two runtimes")


def captured_note(runtime: str, arm_cpu: Optional[str]) -> str:
    """Where an emulated locate's layer outputs come from."""
    return f"layers captured on {runtime}: {core(arm_cpu or DEFAULT_CORE).describe()}, emulated by qemu"


def fp16_note(options: RunnerOptions, runtime: Optional[str], ran_on: str = "") -> str:
    """Why an fp16 artifact's run computed in fp16 ("" when it did not ask to); what ran (``ran_on``: the run's
    runtime and providers) decides whether LiteRT really did, or fell back to fp32 arithmetic."""
    if not options.fp16_arithmetic:
        return ""
    entry = emulated_entry(runtime)
    native = entry.emulates if entry else (runtime or "")
    where = f"on {options.arm_cpu}, as the phone's core does" if entry else "as its ARM twin does (apples to apples)"
    if native == "litert":
        if "XNNPACK fp16" not in ran_on:
            return "fp16 artifact: fp16 arithmetic was asked for, but LiteRT computed in fp32 here (why: 'ran on')"
        return f"fp16 artifact: XNNPACK computes in fp16 (FORCE_FP16) {where}"
    return (f"fp16 artifact: ONNX Runtime computes in fp16 {where}" if entry else
            "fp16 artifact: ONNX Runtime on x86 computes most fp16 ops in fp32 (no fp16 arithmetic here): the "
            "delta to its ARM twin is the phone's fp16")


def arm_runtime_of(fmt) -> Optional[str]:
    """The emulated ARM runtime that runs artifacts of format ``fmt`` (None when there is none)."""
    return next((entry.name for entry in registry.RUNTIMES if entry.emulates and fmt in entry.formats), None)
