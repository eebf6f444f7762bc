"""Processes started and wall time of a one-hop `deploykit export model.pt2 --to tflite --via litert`.

Every Python process that starts (the CLI, converter children, runner children, any grandchild)
logs its pid through a sitecustomize module put on PYTHONPATH; the export runs as a fresh
process each time, alternating nothing else. Runs against any checkout, so before/after
numbers of a change come from the same script:

    python bench/export_processes.py [--checkout DIR] [--repeats 3] [--sample mobilenet_v2] [--json out.json]
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

SITECUSTOMIZE = """
import os, sys
log = os.environ.get("DEPLOYKIT_PROCESS_LOG")
if log:
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()} {' '.join(sys.argv)[:160]}\\n")
"""


def run_export(checkout: Path, source: Path, out: Path, probe: Path, log: Path) -> tuple:
    """(wall seconds, CPU seconds of the export and every process it waited for)."""
    import resource

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(probe), str(checkout)]), DEPLOYKIT_PROCESS_LOG=str(log))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deploykit.cli.commands", "export", str(source), "--to", "tflite", "--via", "litert",
                    "-o", str(out)], check=True, capture_output=True, env=env, cwd=checkout)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", default=str(Path(__file__).resolve().parents[1]),
                        help="the deploykit source tree to measure (default: this one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", default="mobilenet_v2")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    checkout = Path(args.checkout).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        probe = folder / "probe"
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(SITECUSTOMIZE)
        subprocess.run([sys.executable, "-m", "deploykit.cli.commands", "samples", "build", "-o", str(folder), "--only",
                        args.sample], check=True, capture_output=True, cwd=checkout,
                       env=dict(os.environ, PYTHONPATH=str(checkout)))
        seconds, cpu, processes = [], [], []
        for index in range(args.repeats):
            log = folder / f"processes{index}.log"
            wall, used = run_export(checkout, folder / f"{args.sample}.pt2", folder / f"m{index}.tflite", probe, log)
            seconds.append(wall)
            cpu.append(used)
            processes.append(len(log.read_text().splitlines()))
            listing = log.read_text()
    result = {"checkout": str(checkout), "sample": args.sample, "repeats": args.repeats,
              "wall_s": [round(s, 2) for s in seconds], "median_wall_s": round(statistics.median(seconds), 2),
              "cpu_s": [round(c, 2) for c in cpu], "median_cpu_s": round(statistics.median(cpu), 2),
              "python_processes": processes, "last_run_processes": listing.splitlines()}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
