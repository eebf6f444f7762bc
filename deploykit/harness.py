"""The one timing loop, and the child jobs that run a model: on feeds (verify) or timed (bench).

Every latency deploykit reports — `bench`, `export --route all`, `export --quantize all` —
comes from :func:`time_calls` with a :class:`Timing`, so "1-thread ms" means the same thing
everywhere: the median of ``iterations`` timed calls after ``warmup`` untimed ones, in a
process of its own. The harness times; runners only run.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from deploykit.errors import UsageError

NOISY_SPREAD = 0.10     # (p90 - p50) / p50 above this: the machine was busy, say so


@dataclass(frozen=True)
class Timing:
    """How a latency is measured: untimed warm-up calls, then a fixed count or a time box."""

    warmup: int = 10
    iterations: int = 100
    seconds: Optional[float] = None     # time-box instead of a fixed count (at least 3 calls)

    def __post_init__(self) -> None:
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"--warmup must be an integer >= 0 (got {self.warmup!r})", "e.g. --warmup 10")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise UsageError(f"--iterations must be an integer >= 1 (got {self.iterations!r})", "e.g. --iterations 100")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise UsageError(f"--seconds must be a positive number (got {self.seconds!r})", "e.g. --seconds 5")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        count = f"{self.seconds:g} s of calls" if self.seconds else f"{self.iterations} calls"
        return f"median of {count} after {self.warmup} warm-up"


DEFAULT_TIMING = Timing()


def time_calls(call: Callable[[], object], timing: Timing = DEFAULT_TIMING) -> list:
    """Per-call latencies in ms: warm-up first, then a fixed count or as many as fit the time box."""
    for _ in range(timing.warmup):
        call()
    times, clock = [], time.perf_counter
    deadline = clock() + timing.seconds if timing.seconds else None
    while (len(times) < timing.iterations) if deadline is None else (clock() < deadline or len(times) < 3):
        started = clock()
        call()
        times.append((clock() - started) * 1e3)
    return times


def latency_stats(times_ms: list) -> dict:
    """The distribution of a list of latencies: min, p50, p90, p99, mean, std, count, spread."""
    times = sorted(times_ms)
    p50, p90 = percentile(times, 50), percentile(times, 90)
    stats = {"min": times[0], "p50": p50, "p90": p90, "p99": percentile(times, 99),
             "mean": statistics.fmean(times), "std": statistics.pstdev(times), "iterations": len(times)}
    stats = {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}
    stats["spread"] = round((p90 - p50) / p50, 4) if p50 else 0.0
    return stats


def percentile(sorted_values: list, q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def open_runner(model_request: dict, runtime: Optional[str], options: dict):
    """(loaded model, runtime entry, runner) for a child: a described file is not read twice."""
    from deploykit import registry
    from deploykit.model import model_from_request
    from deploykit.runner import RunnerOptions

    model = model_from_request(model_request)
    entry = registry.runtime_for(model.format, runtime)
    problem = registry.runtime_problem(entry, f"needed to run {model.format.value} models")
    if problem:
        raise problem
    return model, entry, registry.resolve(entry.target)(model, RunnerOptions(**options))


def run_job(request: dict, arrays: dict) -> dict:
    """Child side of Artifact.run: outputs for every sample, and a latency when asked."""
    from deploykit.child import pack_samples, unpack_samples

    feeds = unpack_samples(arrays, request["samples"])
    _model, entry, runner = open_runner(request["model"], request.get("runtime"), request.get("options") or {})
    with runner:
        outputs = runner.run_many(feeds)
        info = {"runtime": entry.name, "providers": list(getattr(runner, "active_providers", [])),
                "output_names": list(outputs[0]) if outputs else []}
        if request.get("timing") and feeds:
            timing = Timing(**request["timing"])
            info["latency_ms"] = latency_stats(timed(runner, feeds[0], timing))
            info["timing"] = timing.describe()
    return {**info, "arrays": pack_samples(outputs)}


def capture_job(request: dict, arrays: dict) -> dict:
    """Child side of Artifact.capture: the model's graph view and its layers' outputs on every sample."""
    from deploykit.child import pack_samples, unpack_samples
    from deploykit.errors import UnsupportedModelError

    feeds = unpack_samples(arrays, request["samples"])
    model, entry, runner = open_runner(request["model"], request.get("runtime"), request.get("options") or {})
    if not hasattr(runner, "capture"):
        raise UnsupportedModelError(f"{entry.name} cannot show the intermediate tensors of a {model.format.value} "
                                    "model", "locate with an ONNX or TFLite artifact on its native runtime")
    try:                # capture builds its own instrumented session: open() would build a second one
        view, values = runner.capture(feeds)
    finally:
        runner.close()
    return {"runtime": entry.name, "graph": view, "arrays": pack_samples(values)}


def measure_job(request: dict, arrays: dict) -> dict:
    """Child side of one benchmark case: load, first run, warm-up, timed loop, memory."""
    if request.get("affinity"):
        os.sched_setaffinity(0, set(request["affinity"]))
    started = time.perf_counter()
    model, _entry, runner = open_runner(request["model"], request["runtime"], request["options"])
    try:
        return _measure(request, model, runner, started)
    finally:
        runner.close()


def _measure(request: dict, model, runner, started: float) -> dict:
    import resource

    from deploykit.child import status_bytes
    from deploykit.inputs import random_feeds

    runner.open()
    model_load_s = time.perf_counter() - started
    cold_start_s = time.time() - request["_spawned_at"]
    check_batch(model.spec, request.get("batch"))
    feeds = random_feeds(model.spec, 1, seed=0, batch=request.get("batch"))[0]
    first_started = time.perf_counter()
    runner.run(feeds)
    first_ms = getattr(runner, "last_ms", None) or (time.perf_counter() - first_started) * 1e3
    times = timed(runner, feeds, Timing(**request["timing"]))
    result = {"times_ms": times, "model_load_s": model_load_s, "cold_start_s": cold_start_s,
              "first_inference_ms": first_ms, "time_to_first_result_s": cold_start_s + first_ms / 1e3,
              "peak_rss_bytes": status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "rss_at_start_bytes": request.get("_rss_at_start"),
              "providers": list(getattr(runner, "active_providers", [])),
              "threads_configured": request["options"].get("threads"), "os_threads": _os_threads(),
              "affinity": sorted(os.sched_getaffinity(0)), "input_shapes": {k: list(v.shape) for k, v in feeds.items()}}
    if getattr(runner, "bindings_import_s", None) is not None:    # ExecuTorch: torch + its C++ extension
        result["bindings_import_s"] = round(runner.bindings_import_s, 3)
    if getattr(runner, "warmup_calls", None) is not None:
        result["warmup_calls"] = runner.warmup_calls
    if hasattr(runner, "memory"):     # a browser page: its renderer's memory, not this driver process's
        page = runner.memory()
        result.update(page, memory_of="the browser page's renderer process",
                      peak_rss_bytes=page.get("page_peak_rss_bytes") or result["peak_rss_bytes"], rss_at_start_bytes=0)
    return result


def timed(runner, feeds: dict, timing: Timing) -> list:
    """Latencies of ``runner`` on ``feeds``: timed here, or by the runner itself where a call from here would
    cross a process boundary (a browser page times its own calls with the same Timing)."""
    if hasattr(runner, "time_calls"):
        return runner.time_calls(feeds, timing)
    return time_calls(lambda: runner.run(feeds), timing)


def check_batch(spec, batch) -> None:
    for tensor in spec.inputs if batch else ():
        if tensor.shape and isinstance(tensor.shape[0], int) and tensor.shape[0] not in (batch, -1):
            raise UsageError(f"input {tensor.name!r} has a fixed batch of {tensor.shape[0]}",
                             "export with --dynamic-batch to benchmark other batch sizes")


def _os_threads() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0
