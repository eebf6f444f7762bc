"""Export+verify time of `deploykit export` against a bare `torch.onnx.export` call.

Both run as fresh processes (cold start included) on the same torch.export file of the
MobileNetV2 sample, alternating, and the medians are compared. Goal: ratio <= 1.3.

    python bench/export_overhead.py [--repeats 3] [--sample mobilenet_v2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = """
import sys, torch
program = torch.export.load(sys.argv[1])
args, _ = program.example_inputs
torch.onnx.export(program, args, sys.argv[2], dynamo=True, external_data=False)
"""


def timed(command: list) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", default="mobilenet_v2")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, "-m", "deploykit.cli.commands", "samples", "build", "-o", str(folder),
                        "--only", args.sample], check=True, capture_output=True)
        source = folder / f"{args.sample}.pt2"
        bare, ours = [], []
        for index in range(args.repeats):
            bare.append(timed([sys.executable, "-c", BARE, str(source), str(folder / f"bare{index}.onnx")]))
            ours.append(timed([sys.executable, "-m", "deploykit.cli.commands", "export", str(source), "-o",
                               str(folder / f"ours{index}.onnx")]))
        help_times = [timed([sys.executable, "-m", "deploykit.cli.commands", "--help"]) for _ in range(5)]
    result = {"sample": args.sample, "repeats": args.repeats,
              "bare_torch_onnx_export_s": [round(t, 2) for t in bare],
              "deploykit_export_verify_s": [round(t, 2) for t in ours],
              "bare_median_s": round(statistics.median(bare), 2), "deploykit_median_s": round(statistics.median(ours), 2),
              "ratio": round(statistics.median(ours) / statistics.median(bare), 2),
              "help_median_s": round(statistics.median(help_times), 3)}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
