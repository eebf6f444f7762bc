"""How `deploykit matrix` scales: jobs per minute on 1 and 2 local workers and on Ray, and the overheads the
scaling law needs (per-job scheduling, cluster start, model transfer).

    python bench/matrix_scaling.py -o DIR [--cells 8] [--json out.json]

1. DIR/scaling.toml: the two-layer samples (plain and custom-autograd) × onnx, tflite × fp32, dynamic — 8 cells
   of convert + verify, no bench phase (timed phases run one per node by design: they are measured apart);
2. `deploykit matrix --force` with --workers 1, --workers 2 and --executor ray (a 2-CPU local instance):
   wall time and jobs/minute, each from a fresh process;
3. overheads: a no-op harness child (what a local job costs beyond its work); Ray start-up; 200 no-op Ray
   tasks (its per-task cost); ray.put + a task that unpacks a model (what shipping a model costs per MB).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_spec(folder: Path) -> Path:
    from deploykit import api

    samples = folder / "samples"
    if not (samples / "two_layer_custom_relu.pt2").exists():
        api.build_samples(str(samples), only=("two_layer_net", "two_layer_custom_relu"))
    lines = ["[matrix]", 'targets = ["onnx", "tflite"]', 'precisions = ["fp32", "dynamic"]', "bench = []", ""]
    for name in ("two_layer_net", "two_layer_custom_relu"):
        lines += ["[[models]]", f'path = "samples/{name}.pt2"', f'inputs_npz = "samples/{name}.inputs.npz"', ""]
    spec = folder / "scaling.toml"
    spec.write_text("\n".join(lines))
    return spec


def timed_matrix(spec: Path, out: Path, *args: str) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "deploykit.cli.commands", "matrix", str(spec), "-o", str(out), "--force",
                           "--json", *args], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seconds = time.perf_counter() - started
    data = json.loads(proc.stdout)
    cells = [c for c in data["cells"] if c["status"] != "unsupported"]
    busy = [sum(v for v in (c.get("phases") or {}).values() if v) for c in cells]
    return {"args": " ".join(args), "exit": proc.returncode, "summary": data["summary_line"], "cells": len(cells),
            "wall_s": round(seconds, 1), "jobs_per_min": round(60 * len(cells) / seconds, 2),
            "mean_cell_work_s": round(statistics.fmean(busy), 2)}


def noop_child(repeats: int = 10) -> float:
    from deploykit.child import RUN, run_child

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run_child("tests.jobs:echo_job", {"value": 1}, stage=RUN, what="noop", timeout=60)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def ray_overheads(model: Path) -> dict:
    import ray

    from deploykit.matrix.store import pack, unpack

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=400 * 2**20,
             logging_level="ERROR")
    start_s = time.perf_counter() - started

    @ray.remote(num_cpus=1)
    def noop(i):
        return i

    ray.get([noop.remote(i) for i in range(20)])          # workers warm
    started = time.perf_counter()
    ray.get([noop.remote(i) for i in range(200)])
    per_task_ms = (time.perf_counter() - started) / 200 * 1e3

    @ray.remote(num_cpus=1)
    def land(data):
        with tempfile.TemporaryDirectory() as tmp:
            unpack(data, Path(tmp))
        return len(data)

    size = model.stat().st_size
    moves = []
    for _ in range(3):
        started = time.perf_counter()
        ray.get(land.remote(ray.put(pack({model.name: model}))))
        moves.append(time.perf_counter() - started)
    ray.shutdown()
    best = min(moves)
    return {"ray_start_s": round(start_s, 2), "ray_task_ms": round(per_task_ms, 2), "model_mb": round(size / 2**20, 1),
            "transfer_s": round(best, 3), "transfer_mb_per_s": round(size / 2**20 / best, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--model", help="a model file to time shipping with (default: a 64 MiB random file)")
    parser.add_argument("--json")
    args = parser.parse_args()
    folder = Path(args.output).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    spec = write_spec(folder)
    runs = [timed_matrix(spec, folder / "w1", "--workers", "1"),
            timed_matrix(spec, folder / "w2", "--workers", "2"),
            timed_matrix(spec, folder / "ray", "--executor", "ray", "--workers", "2")]
    model = Path(args.model) if args.model else folder / "blob.bin"
    if not args.model:
        model.write_bytes(os.urandom(64 * 2**20))
    result = {"runs": runs, "noop_child_s": noop_child(), **ray_overheads(model)}
    print(json.dumps(result, indent=1))
    print("| run | cells | wall s | jobs/min | mean work per cell s |\n|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['args']} | {run['cells']} | {run['wall_s']} | {run['jobs_per_min']} | {run['mean_cell_work_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
