"""int8 on a real transformer, before and after deploykit's repair: all-MiniLM-L6-v2 from a public wheel.

    python bench/quantize_encoder.py [-o DIR] [--tflite]

Builds the encoder (bench/field_encoder.py), then for ONNX: fp32, dynamic int8 and static int8 exactly as
deploykit's quantizer makes them without repair (ONNX Runtime, QDQ, per-channel, min-max), and static int8 with
the repair (`deploykit export --quantize int8`). Each is judged against the PyTorch source with the int8 preset on
sentences never calibrated on; size and 1-thread p50 latency (deploykit's one timing loop) beside fp32. Prints a
markdown table. Failing variants are built here directly (an export that fails its preset leaves no file).

--tflite: the same for TFLite instead, every file exported by deploykit: fp32, dynamic int8 (TFLiteConverter) and
full integer int8 with the repair (16x8 first). The plain full-int8 file is not run here: LiteRT aborts loading it
(the attention mask's int8 DIV, div.cc's zero-point check, SIGABRT — the export itself shows it in a child).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.field_encoder import build  # noqa: E402 - after the path is set

INPUTS = ("input_ids:1x64:int64:0..30522", "attention_mask:1x64:int64:1..2")
SOURCE_INPUTS = ("input_ids", "attention_mask")


def _plain(fp32: Path, out: Path, mode: str, calibration: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "dynamic":
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
        return out
    data = np.load(calibration)
    feeds = iter([{k: data[k][i:i + 1] for k in data.files} for i in range(len(data["input_ids"]))])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _measure(source: Path, artifact: Path, judged: Path, precision: str) -> dict:
    from deploykit import api
    from deploykit.artifact import Artifact
    from deploykit.exporting.pipeline import measure_latency
    from deploykit.inputs import load_npz

    options = api.VerifyOptions(samples=0, inputs_npz=str(judged), precision=precision)
    report = api.verify(str(source), [str(artifact)], load=api.load_options(INPUTS), options=options).reports[0]
    output = report.outputs[0]
    opened = Artifact.open(str(artifact))
    feeds = judged
    names = [t.name for t in opened.spec.inputs]
    if set(names) != set(SOURCE_INPUTS):      # litert-torch names its inputs by position (args_0, args_1)
        data, feeds = np.load(judged), artifact.with_suffix(".inputs.npz")
        np.savez(feeds, **{name: data[source] for name, source in zip(names, SOURCE_INPUTS)})
    latency = measure_latency(opened, load_npz(str(feeds), opened.spec)[0], 600)
    return {"artifact": artifact.name, "bytes": artifact.stat().st_size, "latency_ms": latency,
            "cosine": output.cosine, "passed": report.passed}


def _tflite_rows(folder: Path, source: Path, calibration: Path, judged: Path) -> list:
    """fp32, dynamic int8 and repaired full-integer int8 TFLite files, as `deploykit export --to tflite` writes them."""
    from deploykit import api

    rows = []
    for variant, mode in (("fp32", None), ("dynamic int8", "dynamic"), ("full integer int8 (deploykit repair)", "int8")):
        path = folder / f"{mode or 'fp32'}.tflite"
        started = time.perf_counter()
        result = api.export(str(source), "tflite", str(path), force=True, load=api.load_options(INPUTS),
                            verify=api.VerifyOptions(inputs_npz=str(judged)),
                            quantize=api.QuantizeOptions(mode, calibration=str(calibration)) if mode else None)
        notes = [n for h in result.route for n in h.get("notes", []) if n.startswith(("int8 repaired", "layers by"))]
        layers = next((n for n in notes if n.startswith("layers by")), "all float" if not mode else "—")
        rows.append({"variant": variant, "path": path, "precision": "int8" if mode else "fp32", "float_layers": layers,
                     "export_s": round(time.perf_counter() - started, 1), "notes": notes,
                     "route": [h.get("tool") for h in result.route]})
    # measured together after every export, so a busy host weighs on the three alike
    return [{**row, **_measure(source, row["path"], judged, row["precision"])} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="minilm", help="working folder")
    parser.add_argument("--tflite", action="store_true", help="measure the TFLite files instead of the ONNX ones")
    arguments = parser.parse_args()
    folder = Path(arguments.output)
    from deploykit import api

    if not (folder / "minilm.pt2").exists():
        build(folder)
    source, calibration, judged = folder / "minilm.pt2", folder / "minilm.calibration.npz", folder / "minilm.inputs.npz"
    if arguments.tflite:
        return _table(_tflite_rows(folder, source, calibration, judged), folder / "quantize_encoder_tflite.json")
    rows = []
    fp32 = folder / "fp32.onnx"
    if not fp32.exists():
        api.export(str(source), "onnx", str(fp32), load=api.load_options(INPUTS),
                   verify=api.VerifyOptions(inputs_npz=str(judged)))
    rows.append({"variant": "fp32", **_measure(source, fp32, judged, "fp32"), "float_layers": "all"})
    for mode in ("dynamic", "int8"):
        made = _plain(fp32, folder / f"plain_{mode}.onnx", mode, calibration)
        rows.append({"variant": f"{mode} (ONNX Runtime, no repair)", **_measure(source, made, judged, "int8"),
                     "float_layers": "—"})
    started = time.perf_counter()
    repaired = folder / "int8_repaired.onnx"
    result = api.export(str(source), "onnx", str(repaired), force=True, load=api.load_options(INPUTS),
                        verify=api.VerifyOptions(inputs_npz=str(judged)),
                        quantize=api.QuantizeOptions("int8", calibration=str(calibration)))
    kept = next((h.get("kept_float") for h in result.route if h.get("kept_float")), [])
    notes = [n for h in result.route for n in h.get("notes", []) if n.startswith("int8 repaired")]
    rows.append({"variant": "int8 repaired (deploykit)", **_measure(source, repaired, judged, "int8"),
                 "float_layers": f"{len(kept)} of 37: {', '.join(kept)}", "export_s": round(time.perf_counter() - started, 1),
                 "notes": notes})
    _table(rows, folder / "quantize_encoder.json")


def _table(rows: list, record: Path) -> None:
    """The markdown table (sizes and latencies beside the first row, fp32), and every row as JSON in ``record``."""
    base = rows[0]
    print("| variant | size × fp32 | 1-thread p50 × fp32 | cosine vs source | int8 preset | layers kept float (ONNX) or by precision (TFLite) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['bytes'] / base['bytes']:.2f} ({row['bytes'] / 2**20:.1f} MiB) | "
              f"{row['latency_ms'] / base['latency_ms']:.2f} ({row['latency_ms']:.2f} ms) | {row['cosine']:.4f} | "
              f"{'pass' if row['passed'] else 'FAIL'} | {row['float_layers']} |")
    record.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
