"""Apple targets measured: every PyTorch sample and two field models exported to Core AI (fp32 and fp16), each
judged against its source on coreai-core's CPU runtime, with the conversion time; a markdown table for
docs/benchmarks.md.

    python bench/apple_targets.py [--out /tmp/apple]      # ~3 min on the 2-core machine

Field models (fetched from PyPI into the field cache, nothing committed): facenet-pytorch 2.6.0's MTCNN ONet
(the wheel's module code and weights) and resemblyzer 0.1.4's speaker encoder (its state_dict, traced).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLES = ("two_layer_net", "two_layer_custom_relu", "mobilenet_v2", "tiny_transformer")


def sources() -> list:
    """(label, source file, --input specs) of the samples (torch.export programs) and the field models."""
    from bench.field_torch import FACENET, FACENET_MODULE, build_mtcnn, build_resemblyzer
    from sample_models.build import build_samples
    from tests.field import field_file

    folder = Path.home() / ".cache" / "deploykit" / "apple-bench"
    missing = tuple(name for name in SAMPLES if not (folder / f"{name}.pt2").exists())
    if missing:                     # built once (MobileNetV2's trained weights come from their own cache)
        build_samples(folder, missing, force=True)
    found = [(name, folder / f"{name}.pt2", []) for name in SAMPLES]
    onet = build_mtcnn(field_file(FACENET, FACENET_MODULE), field_file(FACENET, "facenet_pytorch/data/onet.pt"))
    voice = build_resemblyzer(field_file("resemblyzer==0.1.4", "resemblyzer/pretrained.pt"))
    return found + [("facenet-pytorch 2.6.0 MTCNN ONet", onet, []),
                    ("resemblyzer 0.1.4 speaker encoder (traced)", voice, ["mels:1x160x40"])]


def measure(label: str, source: Path, inputs: list, out: Path, quantize) -> dict:
    from deploykit import api

    started = time.perf_counter()
    try:
        result = api.export(str(source), "coreai", str(out), force=True, load=api.load_options(inputs),
                            quantize=api.QuantizeOptions(quantize) if quantize else None)
    except Exception as exc:  # noqa: BLE001 - a row that failed is a result too
        return {"model": label, "precision": quantize or "fp32", "error": str(exc)[:120]}
    outputs = result.parity.outputs
    top1 = [o.top1_agreement for o in outputs if o.top1_agreement is not None]
    return {"model": label, "precision": quantize or "fp32", "passed": result.passed,
            "preset": result.parity.tolerance.preset, "max_abs": max(o.max_abs for o in outputs),
            "cosine": min(o.cosine for o in outputs), "top1": min(top1) if top1 else None,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/deploykit-apple-bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, source, inputs in sources():
        for quantize in (None, "fp16"):
            name = f"{Path(source).stem}{'.fp16' if quantize else ''}.aimodel"
            rows.append(measure(label, source, inputs, out / name, quantize))
            print(rows[-1], flush=True)
    print("\n| model | precision | verdict (preset) | max_abs | cosine | top-1 | export s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['precision']} | error: {r['error']} | | | | |")
            continue
        top1 = f"{r['top1']:.1%}" if r["top1"] is not None else "—"
        print(f"| {r['model']} | {r['precision']} | {'PASS' if r['passed'] else 'FAIL'} ({r['preset']}) | "
              f"{r['max_abs']:.2g} | {r['cosine']:.7f} | {top1} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
