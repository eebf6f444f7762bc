"""Readiness tables (issue 31) for artifacts given on the command line: one markdown row per artifact with every
delegate's coverage and the operators the runtime must ship, and how long the probe took.

    python bench/readiness_tables.py A.tflite B.onnx C.pte [--input NAME:DIMS]...

`--input` applies to the ONNX files (pins dynamic dims, as `deploykit inspect --readiness --input` does). Field
models come from the field cache (bench/field_corpus.py fetches them with pip; nothing is committed).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from deploykit import api

COLUMNS = ("XNNPACK (CPU)", "GPU delegate", "NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram")


def row(path: str, inputs: tuple) -> str:
    started = time.perf_counter()
    found = api.readiness(path, api.load_options(inputs if path.endswith(".onnx") else (), None, False, 600.0))
    seconds = time.perf_counter() - started
    cells = []
    for name in COLUMNS:
        table = found.table(name)
        cells.append(table.summary() if table else "")
    delegates = next((t for t in found.tables if t.runtime == "executorch"), None)
    refused = sorted({f"{issue.op}" for t in found.tables for issue in t.unsupported})
    ops = found.operators
    count = len(ops.get("builtin_operators", [])) + len(ops.get("custom_operators", [])) \
        if "builtin_operators" in ops else len(ops.get("operators", []))
    fixes = "; ".join(f"{f.rewrite}: {f.after}" for f in found.fixes)
    return (f"| {Path(path).name} | " + " | ".join(cells) + f" | {delegates.summary() if delegates else ''} | "
            f"{count} | {', '.join(refused[:8])} | {fixes} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--input", action="append", default=[])
    args = parser.parse_args()
    print("| artifact | " + " | ".join(COLUMNS) + " | ExecuTorch | operators | refused somewhere | checked rewrites "
          "| s |")
    print("|" + "---|" * (len(COLUMNS) + 6))
    for path in args.artifacts:
        print(row(path, tuple(args.input)), flush=True)


if __name__ == "__main__":
    main()
