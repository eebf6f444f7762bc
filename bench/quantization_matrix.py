"""`--quantize all` on the trained samples: size, 1-thread latency and agreement per precision.

Builds the samples (or uses --samples DIR), runs export_all_precisions for each (sample, target)
with the calibration data that ships with the sample, and prints the README's quantization
table as Markdown rows. Each precision's HTML report goes to --reports DIR/<sample>-<target>/.

    python bench/quantization_matrix.py [--samples DIR] [--reports DIR] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

# (source file, target, calibration inside the samples folder, io dtype)
CASES = (("mobilenet_v2.pt2", "onnx", "shapes", "float"), ("mobilenet_v2.pt2", "tflite", "shapes", "float"),
         ("mobilenet_v2.pt2", "tflite", "shapes", "int8"), ("keras_mobilenet_v2.keras", "tflite", "shapes", "float"),
         ("tiny_transformer.pt2", "onnx", "tiny_transformer.calibration.npz", "float"),
         ("tiny_transformer.pt2", "tflite", "tiny_transformer.calibration.npz", "float"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", help="a folder from `deploykit samples build` (default: build into a temp dir)")
    parser.add_argument("--reports", help="write each case's precisions.html under this folder")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.samples and not Path(args.samples).is_dir():
        parser.error(f"{args.samples} is not a folder: build one with `deploykit samples build -o DIR`")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.samples) if args.samples else _build(Path(tmp))
        tables = [_case(folder, Path(tmp), case, args.reports) for case in CASES]
    print("| sample | target | precision | size × fp32 | 1-thread ms | × fp32 speed | max_abs | cosine | top-1 | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for table in tables:
        for row in table["precisions"]:
            print(_markdown(table, row))
    if args.json:
        Path(args.json).write_text(json.dumps(tables, indent=2, default=str))


def _build(folder: Path) -> Path:
    from sample_models.build import build_samples

    build_samples(folder, ("mobilenet_v2", "tiny_transformer", "keras_mobilenet_v2"))
    return folder


def _case(folder: Path, scratch: Path, case: tuple, reports) -> dict:
    from deploykit import api

    source, target, calibration, io_dtype = case
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}[target]
    out = scratch / f"{Path(source).stem}-{io_dtype}{suffix}"
    report = str(Path(reports) / f"{Path(source).stem}-{target}-{io_dtype}") if reports else None
    table = api.export(str(folder / source), target, str(out), force=True, report=report,
                       quantize=api.QuantizeOptions(mode="all", calibration=str(folder / calibration),
                                                    io_dtype=io_dtype)).to_dict()
    table["case"] = {"source": source, "target": target, "calibration": calibration, "io_dtype": io_dtype}
    print(f"{source} → {target} (io {io_dtype}): {'pass' if table['passed'] else 'FAIL'}", flush=True)
    return table


def _markdown(table: dict, row: dict) -> str:
    case = table["case"]
    target = {"onnx": "ONNX", "tflite": "TFLite"}[case["target"]] + (" (int8 IO)" if case["io_dtype"] == "int8" else "")
    route = row.get("route", "")
    precision = row["precision"] + (" (PT2E)" if "torch_to_tflite" in route and row["precision"] != "fp32" else "")
    verdict = "pass" if row.get("passed") else "**fail**: " + (row.get("error") or "")[:80]

    def num(key, spec):
        value = row.get(key)
        return format(value, spec) if isinstance(value, (int, float)) else "—"
    size = num("size_vs_fp32", ".2f") + (f" ({row['bytes'] / 1e6:.2f} MB)" if row["precision"] == "fp32"
                                         and "bytes" in row else "")
    top1 = "—" if row.get("top1_agreement") is None else f"{row['top1_agreement']:.1%}"
    return (f"| {Path(case['source']).stem} | {target} | {precision} | {size} | {num('latency_ms', '.3f')} | "
            f"{num('speed_vs_fp32', '.2f')} | {num('max_abs', '.2g')} | {num('cosine', '.6f')} | {top1} | {verdict} |")


if __name__ == "__main__":
    main()
