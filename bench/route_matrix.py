"""Every sample model x every route to a target: conversion seconds, parity, 1-thread latency.

Builds the samples, runs `export --route all` for each (sample, target), and prints one
row per route. The closing notes and the README's support table come from this output.

    python bench/route_matrix.py [--to tflite] [--only mobilenet_v2.pt2 ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

DEFAULT_SOURCES = ("two_layer_net.pt2", "two_layer_custom_relu.pt2", "mobilenet_v2.pt2", "tiny_transformer.pt2",
                   "mobilenet_v2.pt", "dynamic_gate.pt", "keras_two_layer_net.keras", "keras_mobilenet_v2.keras")


def main() -> None:
    from deploykit import api
    from deploykit.errors import DeploykitError
    from sample_models.build import build_samples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", default="tflite")
    parser.add_argument("--only", nargs="*", default=list(DEFAULT_SOURCES))
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_samples(folder)
        for name in args.only:
            try:
                result = api.export(str(folder / name), args.to, str(folder / f"{name}.{args.to}"), route="all")
                routes = result.to_dict()["routes"]
            except DeploykitError as exc:
                routes = [{"route": "(all)", "passed": False, "error": exc.one_line(), "seconds": None}]
            for route in routes:
                rows.append({"source": name, **{k: route.get(k) for k in ("route", "passed", "seconds", "max_abs",
                                                                           "cosine", "latency_ms_1thread", "error")}})
                print(_format(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _format(row: dict) -> str:
    def num(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) else "—"
    status = "pass" if row["passed"] else "FAIL " + (row["error"] or "")[:150]
    return (f"{row['source']:28} {row['route']:34} {num(row['seconds'], '6.1f')} s  max_abs {num(row['max_abs'], '.2e')}"
            f"  cos {num(row['cosine'], '.7f')}  1-thread {num(row['latency_ms_1thread'], '.3f')} ms  {status}")


if __name__ == "__main__":
    main()
