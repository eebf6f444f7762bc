"""Coverage-guided fuzzing (atheris) of what deploykit reads from untrusted files before any framework runs them.

Targets, chosen by the first byte of each input: format detection, the torch.export archive check for
pickled parts, the ONNX loader (parse, check, signature), an artifact's sidecar manifest, an --inputs
.npz, and a calibration image. The contract under test: any bytes end in a DeploykitError (a clean
exit 2 on the CLI) or a result, never another exception, a hang or a native crash. TFLite files are
not fuzzed here: they are only ever opened in a child process (a crash there is a clean stage error;
tests/hostile has those cases).

    python bench/fuzz_loaders.py -max_total_time=600            # the bounded benchmark run (10 minutes)
    python bench/fuzz_loaders.py -runs=3000 -seed=1             # the seeded run tests/hostile/test_fuzz.py does

Seeds are valid files made in code (a tiny ONNX model, torch.export skeletons, an .npz, a manifest, a
PNG), so mutations start from structure. Prints a JSON summary line (executions, coverage edges from
libFuzzer's own statistics, crashes) at the end; a crash is printed with its traceback, the input is
saved by libFuzzer as crash-<sha1> and the process exits non-zero.
"""
from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["deploykit"]):
    from deploykit import formats, manifest, onnx_io
    from deploykit.exporting.calibration import _decoded_image
    from deploykit.errors import DeploykitError
    from deploykit.inputs import load_npz
    from deploykit.model import load_model
    from deploykit.spec import ModelSpec, TensorSpec

WORK = Path(tempfile.mkdtemp(prefix="deploykit-fuzz-"))
atexit.register(shutil.rmtree, WORK, True)     # libFuzzer ends the process with exit(): atexit still runs
NPZ_SPEC = ModelSpec((TensorSpec("x", (1, 4)), TensorSpec("ids", (1, 3), "int64", value_range=(0, 9))))


def _file(data: bytes, name: str) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def detect(data: bytes) -> None:
    path = _file(data, "model.bin")
    if formats.detect(path) == formats.Format.TORCH_PICKLE:
        formats.pickled_globals(path)       # what the --trust-pickle refusal names


def pt2_parts(data: bytes) -> None:
    formats.pt2_pickled_parts(_file(data, "model.pt2"))


def onnx_model(data: bytes) -> None:
    onnx_io._read.cache_clear()          # the same path is rewritten every run: never serve a stale parse
    load_model(str(_file(data, "model.onnx")))


def sidecar_manifest(data: bytes) -> None:
    _file(b"\x08\x08", "a.onnx")
    _file(data, "a.onnx" + manifest.SUFFIX)
    manifest.read(WORK / "a.onnx")


def npz_inputs(data: bytes) -> None:
    load_npz(_file(data, "inputs.npz"), NPZ_SPEC)


def calibration_image(data: bytes) -> None:
    _decoded_image(_file(data, "image.png"), 8, 8)


TARGETS = (detect, pt2_parts, onnx_model, sidecar_manifest, npz_inputs, calibration_image)


def one_input(data: bytes) -> None:
    if not data:
        return
    target, payload = TARGETS[data[0] % len(TARGETS)], data[1:]
    try:
        target(payload)
    except DeploykitError:
        pass                                # the contract: a clean, explained refusal


def seeds() -> dict:
    """Valid inputs for every target, prefixed by its selector byte."""
    sys.path.insert(0, str(ROOT))
    from tests.hostile import builders

    tiny = builders.tiny_onnx(WORK / "seed.onnx").read_bytes()
    pt2 = builders.pt2_archive(WORK / "seed.pt2", {"w": {"path_name": "weight_0"}}).read_bytes()
    buffer = io.BytesIO()
    import numpy as np

    np.savez(buffer, x=np.ones((2, 1, 4), np.float32), ids=np.zeros((2, 1, 3), np.int64))
    png = builders.good_png(WORK / "seed.png").read_bytes()
    state = io.BytesIO()
    with zipfile.ZipFile(state, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    good_manifest = json.dumps({"schema_version": 1, "precision": "int8", "layout": {"inputs": {"x": [0, 2, 3, 1]}},
                                "signature": {"inputs": [{"name": "x", "layout": "NHWC"}]},
                                "artifact": {"sha256": "ab"}, "route": [{"edge": "e"}]}).encode()
    return {"detect-onnx": b"\x00" + tiny, "detect-zip": b"\x00" + state.getvalue(), "pt2": b"\x01" + pt2,
            "onnx": b"\x02" + tiny, "manifest": b"\x03" + good_manifest, "npz": b"\x04" + buffer.getvalue(),
            "png": b"\x05" + png}


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="deploykit-fuzz-seeds-"))
    atexit.register(shutil.rmtree, corpus, True)
    for name, data in seeds().items():
        (corpus / name).write_bytes(data)
    crashes = Path(tempfile.mkdtemp(prefix="deploykit-fuzz-crashes-"))
    args = [sys.argv[0], *[a for a in sys.argv[1:] if a.startswith("-")], "-timeout=20", "-rss_limit_mb=4096",
            "-print_final_stats=1", f"-artifact_prefix={crashes}/", str(corpus)]
    started = time.time()
    atheris.Setup(args, one_input)
    try:
        atheris.Fuzz()
    finally:
        print(json.dumps({"seconds": round(time.time() - started, 1), "work": str(WORK)}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
