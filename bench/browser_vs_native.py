"""Browser WASM vs native, side by side in one run: latency at 1 thread and at all threads, and parity against
the PyTorch source, for each sample's ONNX (onnxruntime vs onnxruntime-web) and TFLite (LiteRT vs LiteRT.js).

    python bench/browser_vs_native.py SAMPLES_DIR [--samples mobilenet_v2 tiny_transformer] [--iterations 100]
                                      [--json out.json]

SAMPLES_DIR holds `deploykit samples build` output; the artifacts are exported next to it (once) with
`deploykit export`. Every latency is deploykit bench's: a fresh process per case (a fresh page for the
browser rows), the median of --iterations calls after the warm-up (the browser pages keep warming until
WASM has tiered up). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploykit import api  # noqa: E402
from deploykit.benchmark.cases import BenchOptions  # noqa: E402

PAIRS = {"onnx": ("onnxruntime", "onnxruntime-web"), "tflite": ("litert", "litert-js")}


def artifact(samples: Path, sample: str, to: str) -> str:
    out = samples / "browser-bench" / f"{sample}.{to}"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        result = api.export(str(samples / f"{sample}.pt2"), to, str(out))
        assert result.passed, f"{sample} -> {to} did not verify"
    return str(out)


def parity(source: str, path: str, runtimes: tuple) -> dict:
    result = api.verify(source, [path], options=api.VerifyOptions(samples=5, runtimes=runtimes))
    found = {}
    for report in result.to_dict()["comparisons"]:
        if report["reference"].startswith(Path(source).name):
            output = report["outputs"][0]
            found[report["candidate"].rsplit(" on ", 1)[1]] = (output["max_abs"], output["cosine"], report["passed"])
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples_dir", type=Path)
    parser.add_argument("--samples", nargs="+", default=["mobilenet_v2", "tiny_transformer"])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    threads = sorted({1, os.cpu_count() or 1})
    rows, raw = [], []
    for sample in args.samples:
        source = str(args.samples_dir / f"{sample}.pt2")
        for to, (native, web) in PAIRS.items():
            path = artifact(args.samples_dir, sample, to)
            checks = parity(source, path, (native, web))
            bench = api.bench([path], BenchOptions(runtimes=(native, web), threads=tuple(threads),
                                                   iterations=args.iterations, warmup=10))
            raw.append({"sample": sample, "format": to, "parity": checks, "cases": bench["cases"]})
            p50 = {(c["row"], c["options"]["threads"]): c["latency_ms"]["p50"] for c in bench["cases"] if "error" not in c}
            for count in threads:
                if (native, count) in p50 and (web, count) in p50:
                    ratio = p50[(web, count)] / p50[(native, count)]
                    rows.append(f"| {sample} | {to} | {count} | {native} {p50[(native, count)]:.2f} | "
                                f"{web} {p50[(web, count)]:.2f} | {ratio:.1f}× | "
                                f"{_parity(checks.get(native))} | {_parity(checks.get(web))} |")
    print("| sample | format | threads | native p50 ms | browser p50 ms | browser / native | "
          "native vs PyTorch (max_abs, cosine) | browser vs PyTorch |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2, default=str))
    return 0


def _parity(check) -> str:
    if not check:
        return "—"
    max_abs, cosine, passed = check
    return f"{max_abs:.1e}, {cosine:.6f}{'' if passed else ' FAIL'}"


if __name__ == "__main__":
    sys.exit(main())
