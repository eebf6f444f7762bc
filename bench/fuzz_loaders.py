"""Coverage-guided fuzzing (atheris) of what deploykit reads from untrusted files before any framework runs them.

Targets, chosen by the first byte of each input: format detection, the torch.export archive check for
pickled parts, the ONNX loader (parse, check, signature), an artifact's sidecar manifest, an --inputs
.npz, a calibration image, and what a bundle or a matrix store hands back (issue 26): a bundle's
deploykit-bundle.json and golden.json as `verify BUNDLE` reads them (up to the model run, which is
replaced by a check of what it would be given), the contract a model carries (ONNX metadata_props, the
contract file packed into a .tflite), a matrix spec (TOML and YAML), and a stored cell record as a rerun
reuses and reports it. The contract under test: any bytes end in a DeploykitError (a clean exit 2 on the
CLI) or a result, never another exception, a hang or a native crash. TFLite flatbuffers are not fuzzed
here: they are only ever opened in a child process (a crash there is a clean stage error; tests/hostile
has those cases).

    python bench/fuzz_loaders.py -max_total_time=600            # the bounded benchmark run (10 minutes)
    python bench/fuzz_loaders.py -runs=3000 -seed=1             # the seeded run tests/hostile/test_fuzz.py does
    python bench/fuzz_loaders.py -max_total_time=600 --collect  # go on past findings; list each distinct one

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
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["deploykit"]):
    from deploykit import formats, manifest, onnx_io, parity
    from deploykit.exporting.calibration import _decoded_image
    from deploykit.errors import DeploykitError
    from deploykit.inputs import load_npz
    from deploykit.model import load_model
    from deploykit.spec import ModelSpec, TensorSpec
    from deploykit import contract as contracts, tflite_metadata
    from deploykit.bundle import bundle_check, packaging
    from deploykit.matrix import keys as matrix_keys, report as matrix_report, run as matrix_run
    from deploykit.matrix import spec as matrix_spec, store as matrix_store

WORK = Path(tempfile.mkdtemp(prefix="deploykit-fuzz-"))
atexit.register(shutil.rmtree, WORK, True)     # libFuzzer ends the process with exit(): atexit still runs
BUNDLES: dict = {}            # target -> a real bundle folder (prepare())
TINY_ONNX = b""
RECORD_CELL = None
NPZ_SPEC = ModelSpec((TensorSpec("x", (1, 4)), TensorSpec("ids", (1, 3), "int64", value_range=(0, 9))))


def _file(data: bytes, name: str) -> Path:
    path = WORK / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _replace(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


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


def _golden_only(path, inputs, outputs, tolerance, timeout, runtime=None, contract=None):
    """Stands in for the model run of `verify BUNDLE`: what verify would hand the runner must be well formed."""
    assert isinstance(tolerance, parity.Tolerance) and len(inputs) == len(outputs)
    for sample in inputs + outputs:
        assert all(isinstance(value, np.ndarray) for value in sample.values())
    return parity.ParityReport("golden vectors", str(path), len(inputs), tolerance)


def bundle_manifest(data: bytes) -> None:
    _replace(BUNDLES["manifest"] / packaging.BUNDLE_FILE, data)
    packaging.verify_bundle(BUNDLES["manifest"])      # (describe_bundle reads only what package just wrote)


def bundle_golden(data: bytes) -> None:
    _replace(BUNDLES["golden"] / "golden.json", data)
    packaging.verify_bundle(BUNDLES["golden"])


def carried_contract(data: bytes) -> None:
    """The contract a model carries — ONNX metadata_props (selector byte even), or the contract file packed into a
    .tflite's associated-files zip (odd) — as `package` and `inspect` read and summarize it."""
    import onnx

    if not data:
        return
    text = data[1:]
    if data[0] % 2:
        path = WORK / "carrier.tflite"
        with zipfile.ZipFile(path, "w") as archive:         # zipfile reads from the end: the model part is not read
            archive.writestr(tflite_metadata.CONTRACT_FILE, text)
        found = tflite_metadata.carried_contract(str(path), formats.Format.TFLITE)
    else:
        model = onnx.load_from_string(TINY_ONNX)
        entry = model.metadata_props.add()
        entry.key, entry.value = contracts.ONNX_KEY, text.decode("utf-8", "replace")
        path = WORK / "carrier.onnx"
        path.write_bytes(model.SerializeToString())
        onnx_io._read.cache_clear()
        found = tflite_metadata.carried_contract(str(path), formats.Format.ONNX)
    if found is not None:
        contracts.summary(found)


def matrix_spec_file(data: bytes) -> None:
    suffix = ".yaml" if data[:1] == b"y" else ".toml"
    matrix_spec.load_spec(str(_file(data[1:], "spec" + suffix)))


def cell_record(data: bytes) -> None:
    """A record in a store's cells/ as a rerun takes it (reused when it passes keys.reusable's checks) and the
    report pages show it."""
    store = matrix_store.open_store(str(WORK / "store"))
    _file(data, "store/cells/k.json")
    record, _why = matrix_keys.reusable(store, "k")
    if record is not None:
        cell = RECORD_CELL
        shown = matrix_run.shown(cell, {**record, "reused": True, **matrix_keys.cell_identity(cell, "k")})
        matrix_report.cell_page(shown)
        matrix_report.grid_page({"cells": [shown], "name": "m", "summary_line": "", "seconds": 0, "spec": "s"})


TARGETS = (detect, pt2_parts, onnx_model, sidecar_manifest, npz_inputs, calibration_image,
           bundle_manifest, bundle_golden, carried_contract, matrix_spec_file, cell_record)


# --collect: an uncaught exception is recorded (one per target, type and deploykit line) and fuzzing goes on, so one
# run reports every distinct finding instead of stopping at the first; without it a finding stops the run.
COLLECT = "--collect" in sys.argv
FINDINGS: dict = {}


def one_input(data: bytes) -> None:
    if not data:
        return
    target, payload = TARGETS[data[0] % len(TARGETS)], data[1:]
    try:
        target(payload)
    except DeploykitError:
        pass                                # the contract: a clean, explained refusal
    except Exception as exc:  # noqa: BLE001 - every other exception is a finding
        if not COLLECT:
            raise
        _record(target.__name__, exc, payload)


def _record(target: str, exc: Exception, payload: bytes) -> None:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/deploykit/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    key = f"{target} {type(exc).__name__} at {where}"
    if key not in FINDINGS:
        FINDINGS[key] = {"message": str(exc)[:200], "input": payload[:300].decode("latin-1")}
        print(f"FINDING {key}: {str(exc)[:200]}", flush=True)


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


def prepare() -> dict:
    """Real things to mutate: two bundles of a tiny ONNX model, a matrix store, the seed files; returns the seeds
    of the bundle and matrix targets."""
    global TINY_ONNX, RECORD_CELL
    from tests.hostile import builders
    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    model = builders.tiny_onnx(WORK / "tiny.onnx")
    TINY_ONNX = model.read_bytes()
    for target in ("manifest", "golden"):
        BUNDLES[target] = WORK / f"bundle-{target}"
        api.package(str(model), str(BUNDLES[target]), PackageOptions(samples=1, source=str(model)))
    bundle_check.golden_report = _golden_only       # the fuzzed part ends where the model would run
    spec_toml = (b'[matrix]\nname = "m"\ntargets = ["onnx"]\nretries = 1\n[[models]]\nname = "t"\n'
                 b'source = "tiny.onnx"\n')
    spec_yaml = b'matrix: &m\n  name: m\n  targets: [onnx]\nmodels:\n  - {name: t, source: tiny.onnx}\n'
    _file(TINY_ONNX, "tiny.onnx")                  # the model the spec seeds name
    entry = matrix_spec.ModelEntry("t", str(model), {}, ("onnx",), ("fp32",))
    RECORD_CELL = matrix_spec.Cell(entry, "onnx", "fp32")
    record = {"key": "k", "model": "t", "target": "onnx", "precision": "fp32", "status": "failed",
              "verdict": "FAIL", "artifact_bytes": 10, "phases": {"convert_s": 1.0},
              "verify": {"comparisons": [{"outputs": [{"name": "y", "cosine": 1.0, "max_abs": 0.0}]}]},
              "bench": {"cases": [{"model": "a.onnx", "row": "onnxruntime", "latency_ms": {"p50": 1.0}}]},
              "metrics": {"cosine": 0.5, "artifact_p50_ms": 1.0}, "versions": {}, "attempts": 1}
    contract = (BUNDLES["golden"] / "contract.json").read_bytes()
    return {"bundle-manifest": b"\x06" + (BUNDLES["manifest"] / packaging.BUNDLE_FILE).read_bytes(),
            "bundle-golden": b"\x07" + (BUNDLES["golden"] / "golden.json").read_bytes(),
            "contract-onnx": b"\x08\x00" + contract, "contract-tflite": b"\x08\x01" + contract,
            "spec-toml": b"\x09t" + spec_toml, "spec-yaml": b"\x09y" + spec_yaml,
            "record": b"\x0a" + json.dumps(record).encode()}


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="deploykit-fuzz-seeds-"))
    atexit.register(shutil.rmtree, corpus, True)
    for name, data in {**seeds(), **prepare()}.items():
        (corpus / name).write_bytes(data)
    crashes = Path(tempfile.mkdtemp(prefix="deploykit-fuzz-crashes-"))
    flags = [a for a in sys.argv[1:] if a.startswith("-") and a != "--collect"]
    args = [sys.argv[0], *flags, "-timeout=20", "-rss_limit_mb=4096", "-print_final_stats=1",
            f"-artifact_prefix={crashes}/", str(corpus)]
    started = time.time()
    atheris.Setup(args, one_input)
    try:
        atheris.Fuzz()
    finally:
        print(json.dumps({"seconds": round(time.time() - started, 1), "work": str(WORK),
                          "findings": FINDINGS if COLLECT else "stops at the first"}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
