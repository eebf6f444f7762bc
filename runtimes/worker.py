"""Child-process entry: load one model file, run it on a batch of feeds, write the outputs.

Runtimes that can crash natively on a bad file (ONNX Runtime, LiteRT) run here, so a
segfault becomes an error message in the parent instead of a dead CLI.
Usage: python -m runtimes.worker REQUEST_DIR   (see deploykit/isolation.py)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(request_dir: str) -> int:
    from deploykit import registry
    from deploykit.errors import DeploykitError
    from deploykit.model import load_model
    from runtimes.base import RunnerOptions

    folder = Path(request_dir)
    request = json.loads((folder / "request.json").read_text())
    try:
        model = load_model(request["path"])
        entry = registry.runtime_for(model.format, request.get("runtime"))
        registry.require(entry.requires, f"needed to run {model.format.value} models")
        options = RunnerOptions(threads=request.get("threads"), device=request.get("device", "cpu"),
                                **request.get("runtime_options", {}))
        feeds = _read_feeds(folder / "feeds.npz", request["samples"])
        with registry.resolve(entry.target)(model, options) as runner:
            results = runner.run_many(feeds)
            info = {"runtime": entry.name, "providers": getattr(runner, "active_providers", []),
                    "output_names": list(results[0]) if results else []}
            if request.get("time_iterations") and feeds:
                info["latency_ms_median"] = _median_latency_ms(runner, feeds[0], request["time_iterations"])
        np.savez(folder / "outputs.npz", **{f"{i}::{k}": v for i, r in enumerate(results) for k, v in r.items()})
        (folder / "result.json").write_text(json.dumps(info))
        return 0
    except DeploykitError as exc:
        (folder / "error.json").write_text(json.dumps(exc.to_dict()))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - a runtime's own error: report it, the parent decides
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        message = f"{entry.name if 'entry' in locals() else 'runtime'} failed on {request['path']}: " \
                  f"{type(exc).__name__}: {(lines[0] if lines else '')[:300]}"
        error = {"error": "ParityError", "message": message, "remedy": "run with --debug; the artifact may be broken",
                 "exit_code": 1}
        (folder / "error.json").write_text(json.dumps(error))
        return 1


def _median_latency_ms(runner, feeds: dict, iterations: int) -> float:
    import statistics
    import time

    for _ in range(3):
        runner.run(feeds)
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        runner.run(feeds)
        times.append((time.perf_counter() - started) * 1e3)
    return round(statistics.median(times), 4)


def _read_feeds(path: Path, samples: int) -> list:
    feeds = [{} for _ in range(samples)]
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            index, _, name = key.partition("::")
            feeds[int(index)][name] = data[key]
    return feeds


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
