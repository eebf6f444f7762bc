"""The ARM rows of `deploykit bench` (``--runtime litert-arm64`` / ``onnxruntime-arm64``): parity, never latency.

An emulated core runs 300-500x slower than the phone it stands for, and not uniformly (qemu translates each
instruction; vector kernels suffer more than scalar code), so its wall time says nothing about a phone's latency
and is never reported as one. What an ARM row can say honestly is what the phone's kernels compute: the row runs
the same seeded feeds on the native runtime (x86) and on the emulated core, and reports their difference
(max_abs, cosine) in place of milliseconds. Nothing is timed, plotted or ranked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from deploykit import registry
from deploykit.errors import DeploykitError

SAMPLES = 2                 # feeds per ARM row: each costs seconds under emulation, and parity needs no spread
LATENCY = "emulated"        # what an ARM row shows where a timed row shows milliseconds


def is_emulated(row: dict) -> bool:
    """Whether a bench row (a case or its result) ran on an emulated ARM core."""
    entry = registry.runtime_entry(row.get("runtime", ""))
    return bool(entry and entry.emulates)


def run_emulated_case(case: dict, timeout: float, arm_cpu: Optional[str] = None, load: Optional[dict] = None) -> dict:
    """One ARM row: the artifact on its native runtime and on the emulated core, on the same feeds; their
    difference, the core and what ran. A failure becomes the row's error, as for a timed case."""
    from deploykit.emulation.cores import DEFAULT_CORE, core

    cpu = core(arm_cpu or DEFAULT_CORE)
    row = {**case, "emulated": True, "latency": LATENCY, "cpu": cpu.name, "core": cpu.describe()}
    try:
        return {**row, **_parity(case, timeout, cpu.name, load)}
    except DeploykitError as exc:
        return {**row, "error": exc.one_line().removeprefix("error: ")}


def _parity(case: dict, timeout: float, cpu: str, load: Optional[dict]) -> dict:
    from deploykit.artifact import Artifact
    from deploykit.inputs import random_feeds
    from deploykit.model import LoadOptions
    from deploykit.runner import RunnerOptions

    entry = registry.runtime_entry(case["runtime"])
    problem = registry.runtime_problem(registry.runtime_entry(entry.emulates), "needed for the x86 side of the "
                                       f"{entry.name} parity row")
    if problem:
        raise problem
    artifact = Artifact.open(case["model"], load=LoadOptions.from_dict(load) if load else None)
    feeds = random_feeds(artifact.spec, SAMPLES, seed=0, batch=case["batch"])
    xnnpack = case["options"].get("xnnpack", True)
    native = artifact.run(feeds, RunnerOptions(threads=1, xnnpack=xnnpack), runtime=entry.emulates, timeout=timeout)
    arm = artifact.run(feeds, RunnerOptions(threads=1, xnnpack=xnnpack, arm_cpu=cpu), runtime=entry.name,
                       timeout=timeout)
    return {"parity": difference(native.outputs, arm.outputs, entry.emulates, f"{entry.name} ({cpu})"),
            "providers": arm.providers, "size_bytes": _size(case["model"])}


def difference(native: list, arm: list, reference: str, candidate: str) -> dict:
    """max_abs (over every output) and cosine (the lowest output's) of the ARM outputs against the native ones:
    a measurement between two runtimes, not a verdict against the source (that is `deploykit verify`)."""
    from deploykit import parity

    report = parity.compare(native, arm, parity.PRESETS["fp32"], reference, candidate)
    if report.problems:         # names, shapes or dtypes differ: no number would mean anything
        raise parity_problem(report)
    outputs = [{"name": o.name, "max_abs": o.max_abs, "cosine": o.cosine} for o in report.outputs]
    cosines = [o["cosine"] for o in outputs if o["cosine"] is not None]
    return {"against": reference, "on": candidate, "samples": len(native), "outputs": outputs,
            "max_abs": max((o["max_abs"] or 0.0 for o in outputs), default=0.0),
            "cosine": min(cosines) if cosines else None}


def parity_problem(report) -> DeploykitError:
    from deploykit.errors import ParityError

    return ParityError(f"{report.candidate} does not return what {report.reference} returns: "
                       f"{'; '.join(report.problems)}", "verify the artifact with --runtime "
                       f"{report.candidate.split()[0]} for the full report")


def _size(path: str) -> int:
    """The artifact's bytes (a folder's files summed), as a timed row reports them."""
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
