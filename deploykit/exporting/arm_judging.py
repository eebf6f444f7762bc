"""An export judged on the phone's CPU as well: the ARM runtime of its format, on an emulated core.

x86 cannot stand in for a phone's fp16: an ARMv8.2 core computes in half precision (XNNPACK's FORCE_FP16) where x86
converts with F16C and computes in fp32, about 10x more accurately (FIELD-NOTES, third round). So an artifact
exported with ``--quantize fp16`` is judged on cortex-a76 whenever the ARM userland is installed, any TFLite/ONNX
export on the core ``--arm-cpu`` names, and the manifest's parity section says which core judged it
(``judged_on``) — or that x86 alone did, and why. A failure there fails the export like any parity failure.
"""
from __future__ import annotations

from typing import Optional

from deploykit import registry
from deploykit.checking import arm
from deploykit.emulation.cores import DEFAULT_CORE, core
from deploykit.errors import ConversionError, Outcome, UsageError
from deploykit.formats import Format

X86 = "x86-64 (this machine)"


def plan(target: Format, mode: Optional[str], arm_cpu: Optional[str]) -> tuple:
    """(ARM runtime, core, why x86 alone judges): ``(None, "", "")`` when no ARM judgment is due (not fp16, no
    --arm-cpu). Refuses --arm-cpu on a format no ARM runtime runs, before anything is converted."""
    runtime = arm.arm_runtime_of(target)
    if arm_cpu:
        if runtime is None:
            raise UsageError(f"--arm-cpu: no emulated ARM runtime runs {target.value} artifacts",
                             f"export --to tflite or --to onnx to judge on {arm_cpu}, or drop --arm-cpu")
        problem = registry.runtime_problem(registry.runtime_entry(runtime), f"needed to judge on --arm-cpu {arm_cpu}")
        if problem:
            raise problem
        return runtime, arm_cpu, ""
    if mode != "fp16":
        return None, "", ""
    if runtime is None and target in (Format.COREAI, Format.COREML):
        # Apple's fp16 runs on its GPU and Neural Engine, which no emulator offers: the device judges it.
        return None, "", (f"no emulator runs Apple's GPU or Neural Engine, whose fp16 differs from a CPU's: check "
                          f"{target.value} fp16 on the device (the bundle's selftest)")
    if runtime is None:
        return None, "", f"no emulated ARM runtime runs {target.value} artifacts"
    from deploykit.emulation import userland

    if not userland.ready():
        return None, "", ("the ARM userland is not installed (export with --arm-cpu cortex-a76 to install it, "
                          "~30 s, and judge on the phone's fp16 arithmetic)")
    return runtime, DEFAULT_CORE, ""


def judge(checker, run, tolerance, feeds: Optional[tuple], samples: int, runtime: str, cpu: str,
          keep_unverified: bool) -> dict:
    """Check the chosen route's artifact on ``runtime`` (core ``cpu``) with the export's own preset and feeds: the
    manifest's ``judged_on``. ConversionError (MISMATCH, exit 4, nothing published) when it does not match there."""
    checker.arm_cpu = cpu
    report = checker.check(run.artifact, samples, layout=run.layout, tolerance=tolerance, feeds=feeds,
                           runtime=runtime)
    fp16 = checker.options_for(runtime, report.tolerance.preset).fp16_arithmetic
    # the hop rule (conversion.acceptable): passed, or kept with --keep-unverified when nothing differed
    if not (report.passed or (keep_unverified and report.uninformative_only)):
        raise ConversionError(f"the artifact matches the source on x86 but not on {runtime} "
                              f"({core(cpu).describe()}): {report.summary()}",
                              "the phone's core computes it differently: export in fp32 (no --quantize) or "
                              "--quantize dynamic, or loosen the check with --atol/--rtol; --locate names the layer",
                              details={"parity": report.to_dict()}, outcome=Outcome.MISMATCH, report=report)
    return {"runtime": runtime, "cpu": cpu, "fp16_arithmetic": fp16, "passed": report.passed,
            "summary": report.summary()}


def x86_only(target: Format, report, why: str) -> dict:
    """``judged_on`` of an artifact only x86 judged, and why (one phrase)."""
    native = registry.runtime_for(target).name
    return {"runtime": native, "cpu": X86, "passed": report.passed if report else None, "why_not_arm": why}


def note(judged: dict) -> str:
    """``judged_on`` in words, for the export's parity report."""
    if judged.get("why_not_arm"):
        return f"judged on x86 only ({judged['runtime']}): {judged['why_not_arm']}"
    arithmetic = ", fp16 arithmetic" if judged["fp16_arithmetic"] else ""
    return f"judged on {judged['runtime']} too ({judged['cpu']}{arithmetic}, emulated): {judged['summary']}"
