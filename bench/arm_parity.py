"""ARM emulation parity (issue 28): the trained MobileNetV2 in fp32, fp16 and int8, TFLite and ONNX, on x86 and on
emulated ARM cores — max_abs, relative error and cosine against the PyTorch source, and emulated seconds per call.

Exports with `deploykit export --quantize fp16|int8` (int8 calibrated on the sample's shapes images), feeds the
last --count shapes images (held out from the int8 calibration), runs every artifact on the x86 runtime and on
litert-arm64 / onnxruntime-arm64 per core (Artifact.run; LiteRT float artifacts also with fp16_arithmetic, i.e.
XNNPACK FORCE_FP16; int8 TFLite also on LiteRT's builtin kernels), and prints a Markdown table.

Emulated time per call is (wall of a run of N samples - wall of a run of 1) / (N - 1): the child's start (qemu,
Python, imports, model load) cancels out. It is emulation's time on this machine, never a phone's latency. The two
runs also check determinism: the first sample's outputs must be bit-identical.

    python bench/arm_parity.py [--samples DIR] [--exports DIR] [--count 4] [--cores cortex-a76,cortex-a53]
                               [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = {"tflite": ("litert", "litert-arm64"), "onnx": ("onnxruntime", "onnxruntime-arm64")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", help="a folder holding mobilenet_v2.pt2 and shapes/ (default: build the sample)")
    parser.add_argument("--exports", help="keep the exports here and reuse those already there (default: temp)")
    parser.add_argument("--count", type=int, default=4, help="held-out images per run (at least 2)")
    parser.add_argument("--cores", default="cortex-a76,cortex-a53")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.count < 2:
        parser.error("--count must be at least 2: the per-call time is the difference of two runs")
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(args.samples) if args.samples else _build(Path(tmp) / "samples")
        exports = Path(args.exports) if args.exports else Path(tmp) / "exports"
        exports.mkdir(parents=True, exist_ok=True)
        rows = measure(samples, exports, args.count, args.cores.split(","))
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _build(folder: Path) -> Path:
    from sample_models.build import build_samples

    build_samples(folder, ("mobilenet_v2",))
    return folder


def measure(samples: Path, exports: Path, count: int, cores: list) -> list:
    """One row per (artifact, place, options): the metrics against the source, and the emulated time per call."""
    from deploykit.artifact import Artifact
    from deploykit.exporting.calibration import calibration_feeds

    source = Artifact.open(samples / "mobilenet_v2.pt2")
    feeds = calibration_feeds(source.spec, str(samples / "shapes"), 10_000)[0][-count:]
    reference = _torch_outputs(samples / "mobilenet_v2.pt2", feeds)
    rows = []
    for target in TARGETS:
        for precision in PRECISIONS:
            artifact = Artifact.open(_export(samples, exports, target, precision))
            rows.extend(_artifact_rows(artifact, target, precision, feeds, reference, cores))
    return rows


def _export(samples: Path, exports: Path, target: str, precision: str) -> Path:
    from deploykit import api

    out = exports / f"mobilenet_v2.{precision}.{target}"
    if out.exists():
        return out
    quantize = None if precision == "fp32" else api.QuantizeOptions(
        mode=precision, calibration=str(samples / "shapes") if precision == "int8" else None)
    started = time.perf_counter()
    result = api.export(str(samples / "mobilenet_v2.pt2"), target, str(out), quantize=quantize)
    print(f"exported {out.name} in {time.perf_counter() - started:.0f} s (passed: {result.passed})", flush=True)
    return out


def _torch_outputs(pt2: Path, feeds: list) -> list:
    """The source's own outputs (torch.export program, in this process), one array per feed."""
    import torch

    module = torch.export.load(str(pt2)).module()
    outputs = []
    with torch.no_grad():
        for feed in feeds:
            out = module(*(torch.from_numpy(value) for value in feed.values()))
            outputs.append((out[0] if isinstance(out, (tuple, list)) else out).numpy())
    return outputs


def _artifact_rows(artifact, target: str, precision: str, feeds: list, reference: list, cores: list) -> list:
    from deploykit.runner import RunnerOptions

    native, emulated = TARGETS[target]
    variants = [("default", {})]
    if target == "tflite" and precision != "int8":
        variants.append(("fp16 arithmetic", {"fp16_arithmetic": True}))
    if target == "tflite" and precision == "int8":
        variants.append(("builtin kernels", {"xnnpack": False}))
    rows = []
    for label, extra in variants:
        places = [("x86", native, None)] + [(core, emulated, core) for core in cores]
        x86 = None
        for place, runtime, core in places:
            options = RunnerOptions(threads=1, arm_cpu=core, **extra)
            row = _run(artifact, runtime, options, _artifact_feeds(artifact, feeds), reference, timed=core is not None)
            outputs = row.pop("outputs")
            x86 = outputs if x86 is None else x86
            row.update(artifact=Path(artifact.path).name, target=target, precision=precision, options=label,
                       place=place, vs_x86_max_abs=float(max(np.abs(a - b).max() for a, b in zip(outputs, x86))))
            rows.append(row)
            print(json.dumps({k: row.get(k) for k in ("artifact", "options", "place", "max_abs", "cosine",
                                                  "vs_x86_max_abs", "s_per_call")}), flush=True)
    return rows


def _artifact_feeds(artifact, feeds: list) -> list:
    """The source's feeds in the artifact's names and layout (a converter may have made NCHW into NHWC)."""
    name = artifact.spec.inputs[0].name
    perm = next(iter(artifact.layout.input_perms.values()), None) if artifact.layout.input_perms else None
    return [{name: np.ascontiguousarray(next(iter(feed.values())).transpose(perm) if perm else
                                         next(iter(feed.values())))} for feed in feeds]


def _run(artifact, runtime: str, options, feeds: list, reference: list, timed: bool) -> dict:
    """Metrics of one runtime against the source; under emulation also the per-call time and determinism."""
    started = time.perf_counter()
    result = artifact.run(feeds, options, runtime=runtime, timeout=3600)
    wall = time.perf_counter() - started
    outputs = [np.asarray(next(iter(sample.values())), np.float32) for sample in result.outputs]
    row = {"runtime": runtime, "providers": result.providers, **_metrics(outputs, reference), "outputs": outputs}
    if timed:
        started = time.perf_counter()
        first = artifact.run(feeds[:1], options, runtime=runtime, timeout=3600)
        row["s_per_call"] = round((wall - (time.perf_counter() - started)) / (len(feeds) - 1), 2)
        row["deterministic"] = bool(np.array_equal(next(iter(first.outputs[0].values())), outputs[0]))
    return row


def _metrics(outputs: list, reference: list) -> dict:
    got, want = np.concatenate([o.ravel() for o in outputs]), np.concatenate([r.ravel() for r in reference])
    max_abs = float(np.abs(got - want).max())
    cosine = float(np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want)))
    top1 = float(np.mean([o.argmax() == r.argmax() for o, r in zip(outputs, reference)]))
    return {"max_abs": max_abs, "relative": max_abs / float(np.abs(want).max()), "cosine": cosine, "top1": top1}


def markdown(rows: list) -> str:
    lines = ["| artifact | runtime options | where | max_abs vs PyTorch | relative | cosine | top-1 | "
             "max_abs vs x86 | emulated s/call | deterministic |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        emulated = f"{row['s_per_call']:.2f}" if "s_per_call" in row else "—"
        same = {True: "yes", False: "**no**"}.get(row.get("deterministic"), "—")
        lines.append(f"| {row['artifact']} | {row['options']} | {row['place']} | {row['max_abs']:.2e} | "
                     f"{row['relative']:.1e} | {row['cosine']:.7f} | {row['top1']:.2f} | {row['vs_x86_max_abs']:.1e} | "
                     f"{emulated} | {same} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
