"""Child process for one benchmark case: load, first run, warm-up, timed loop, memory.

One case per process, so that import and load costs, peak memory and crashes belong to
that case alone. The harness times; the runner only runs.
Usage: python -m runtimes.bench_worker REQUEST.json RESULT.json
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

RSS_AT_START = None   # read before anything heavy is imported


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _os_threads() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def measure(request: dict) -> dict:
    from deploykit import registry
    from deploykit.inputs import random_feeds
    from deploykit.model import LoadOptions, load_model
    from deploykit.spec import TensorSpec
    from runtimes.base import RunnerOptions

    if request.get("affinity"):
        os.sched_setaffinity(0, set(request["affinity"]))
    started = time.perf_counter()
    load = request.get("load") or {}
    specs = tuple(TensorSpec.from_dict(t) for t in load.get("inputs", []))
    model = load_model(request["path"], LoadOptions(weights=load.get("weights"), input_specs=specs,
                                                    trust_pickle=load.get("trust_pickle", False)))
    entry = registry.runtime_for(model.format, request["runtime"])
    options = RunnerOptions(**request["options"])
    runner = registry.resolve(entry.target)(model, options)
    runner.open()
    model_load_s = time.perf_counter() - started
    cold_start_s = time.time() - request["spawned_at"]
    _check_batch(model.spec, request.get("batch"))
    feeds = random_feeds(model.spec, 1, seed=0, batch=request.get("batch"))[0]
    first_started = time.perf_counter()
    runner.run(feeds)
    first_ms = (time.perf_counter() - first_started) * 1e3
    for _ in range(request["warmup"]):
        runner.run(feeds)
    times = _timed_loop(runner, feeds, request["iterations"], request.get("seconds"))
    return {"times_ms": times, "model_load_s": model_load_s, "cold_start_s": cold_start_s,
            "first_inference_ms": first_ms, "time_to_first_result_s": cold_start_s + first_ms / 1e3,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_at_start_bytes": RSS_AT_START, "providers": list(getattr(runner, "active_providers", [])),
            "threads_configured": options.threads, "os_threads": _os_threads(),
            "affinity": sorted(os.sched_getaffinity(0)), "input_shapes": {k: list(v.shape) for k, v in feeds.items()}}


def _check_batch(spec, batch) -> None:
    from deploykit.errors import UsageError

    for tensor in spec.inputs if batch else ():
        if tensor.shape and isinstance(tensor.shape[0], int) and tensor.shape[0] not in (batch, -1):
            raise UsageError(f"input {tensor.name!r} has a fixed batch of {tensor.shape[0]}",
                             "export with --dynamic-batch to benchmark other batch sizes")


def _timed_loop(runner, feeds: dict, iterations: int, seconds) -> list:
    """Per-call latencies in ms: a fixed count, or as many as fit in ``seconds`` (at least 3)."""
    times, clock = [], time.perf_counter
    deadline = clock() + seconds if seconds else None
    while (len(times) < iterations) if deadline is None else (clock() < deadline or len(times) < 3):
        started = clock()
        runner.run(feeds)
        times.append((clock() - started) * 1e3)
    return times


def main(request_path: str, result_path: str) -> int:
    from deploykit.errors import DeploykitError

    request = json.loads(Path(request_path).read_text())
    try:
        result = measure(request)
    except DeploykitError as exc:
        result = {"error": exc.one_line()}
    except Exception as exc:  # noqa: BLE001 - a case that fails is a row with its reason, not a dead bench
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        result = {"error": f"{type(exc).__name__}: {(lines[0] if lines else '')[:300]}"}
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    RSS_AT_START = _rss_bytes()
    sys.exit(main(sys.argv[1], sys.argv[2]))
