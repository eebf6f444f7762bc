"""Hostile cases: the matrix (issue 26: specs that bomb or hang, stores children cannot share, tampered or stale cell records, reports).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list. A case whose matrix runs
(exit 0) keeps its store in ``../store``, beside the work dir, so that "nothing changed" holds for the work dir
while the store is the output; its --json document must say why the stored record was not reused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.hostile import builders as b
from tests.hostile.kit import ONNX, Case

# Six levels of nine, not nine: 9**6 strings (some 4 MB once expanded) is past the 100,000 budget, yet bounded, so
# that a regression fails this in-process case without eating the machine (tests/test_matrix.py measures the full
# billion laughs in a child process under a memory limit).
ALIAS_BOMB = ("matrix:\n  targets:\n    - &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
              + "".join(f"    - &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 6))
              + "models: [{path: tiny.onnx}]\n")


def _spec_with(extra: str):
    return lambda w: ["matrix", b.matrix_spec(w, extra).name, "-o", "out"]


def _bomb(w: Path) -> list:
    b.tiny_onnx(w / "tiny.onnx")
    (w / "bomb.yaml").write_text(ALIAS_BOMB)
    return ["matrix", "bomb.yaml", "-o", "out"]


def _planted_link(at: str):
    """An earlier store whose ``at`` (``{key}`` filled in) is a link to a folder or file beside it: before issue
    26 a rerun wrote the cell's artifact and manifest into the link's target."""
    def build(w: Path) -> list:
        spec = b.matrix_spec(w)
        key = b.matrix_key(spec)
        (w / "victim").mkdir()
        (w / "victim" / "record.json").write_text(json.dumps({"key": key, "status": "passed"}))
        for name in ("cells", "artifacts"):
            (w / "out" / name).mkdir(parents=True)
        link = w / "out" / at.format(key=key)
        link.symlink_to(w / "victim" / ("record.json" if link.suffix == ".json" else ""))
        return ["matrix", spec.name, "-o", "out"]
    return build


def _tampered(change):
    """A real store in ../store, then ``change(record, store, key)`` edits it as a tamperer would: the rerun must
    run the cell again (exit 0) and say why, never reuse the record, never exit 5."""
    def build(w: Path) -> list:
        spec = b.matrix_spec(w)
        store = w.parent / "store"
        key = b.matrix_store(spec, store)
        path = store / "cells" / f"{key}.json"
        record = json.loads(path.read_text())
        changed = change(record, store, key)
        path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
        return ["matrix", spec.name, "-o", str(store), "--json"]
    return build


def _replace_artifact(record: dict, store: Path, key: str) -> dict:
    (store / "artifacts" / key / "tiny.onnx").write_bytes(b"\x08\x07 another model's bytes")
    return record


def _outside(record: dict, store: Path, key: str) -> dict:
    """Names a file outside the store, with that file's true sha256: only the place can refuse it."""
    outside = store.parent / "work" / "tiny.onnx"
    return {**record, "artifact": str(store / "artifacts" / key / ".." / ".." / ".." / "work" / "tiny.onnx"),
            "artifact_sha256": hashlib.sha256(outside.read_bytes()).hexdigest()}


RERUN = r'"rerun_because": "its '

CASES: list = [
    # --- the store: links planted in it (1), storage the cells cannot share (4) ------------------------------------
    Case("matrix-link-at-artifacts-key", "matrix", _planted_link("artifacts/{key}"), 2,
         r"artifacts/[0-9a-f]{24}, a link.*never follows a link", ONNX),
    Case("matrix-link-at-cell-record", "matrix", _planted_link("cells/{key}.json"), 2,
         r"cells/[0-9a-f]{24}\.json, a link", ONNX),
    Case("matrix-memory-store", "matrix", lambda w: ["matrix", b.matrix_spec(w).name, "-o", "memory://zoo"], 2,
         r"memory:// storage lives inside one process.*— give a folder", ONNX),
    Case("matrix-chained-memory-store", "matrix",
         lambda w: ["matrix", b.matrix_spec(w).name, "-o", "simplecache::memory://zoo"], 2, r"memory://", ONNX),
    # --- the spec: an alias bomb (3), absurd numbers (5) -----------------------------------------------------------
    Case("matrix-yaml-billion-laughs", "matrix", _bomb, 2, r"bomb\.yaml: its YAML aliases would repeat over 100,000"),
    Case("matrix-yaml-control-character", "fuzz",       # found by bench/fuzz_loaders.py: PyYAML's reader raised at once
         lambda w: ((w / "s.yaml").write_bytes(b"matrix:\n  name: m\x01\n"), ["matrix", "s.yaml", "-o", "out"])[1], 2,
         r"s\.yaml is not valid YAML: unacceptable character #x0001"),
    Case("matrix-retries-1e20", "matrix", _spec_with("retries = 100000000000000000000"), 2,
         r"retries must be between 0 and 10", ONNX),
    Case("matrix-retries-float", "matrix", _spec_with("retries = 1e20"), 2, r"retries must be an integer", ONNX),
    Case("matrix-timeout-1e300", "matrix", _spec_with("timeout = 1e300"), 2,
         r"timeout must be between 0\.001 and 604,800", ONNX),
    Case("matrix-samples-huge", "matrix", _spec_with("samples = 10000000000"), 2, r"samples must be between", ONNX),
    Case("matrix-seed-past-32-bits", "matrix", _spec_with("seed = 4294967296"), 2, r"seed must be between 0 and", ONNX),
    Case("matrix-warmup-bool", "matrix", _spec_with("warmup = true"), 2, r"warmup must be an integer", ONNX),
    # --- stored records: stale (2) and tampered (6); slow: each converts twice (about 3 s) ---------------------------
    Case("matrix-replaced-artifact", "matrix", _tampered(_replace_artifact), 0,
         RERUN + r"artifact changed \(or went missing\)", ONNX, slow=True),
    Case("matrix-record-not-json", "matrix", _tampered(lambda r, s, k: "{half a record"), 0,
         RERUN + r"stored record is not JSON", ONNX, slow=True),
    Case("matrix-record-wrong-types", "matrix", _tampered(lambda r, s, k: {**r, "status": ["passed"]}), 0,
         RERUN + r"stored record has no known status", ONNX, slow=True),
    Case("matrix-record-metrics-not-numbers", "matrix", _tampered(lambda r, s, k: {**r, "metrics": {"cosine": "1"}}),
         0, RERUN + r"stored record's metrics are not numbers", ONNX, slow=True),
    Case("matrix-record-path-outside", "matrix", _tampered(_outside), 0,
         RERUN + r"stored record's artifact is not in its own artifacts/", ONNX, slow=True),
    Case("matrix-record-metrics-without-row", "fuzz",      # found by bench/fuzz_loaders.py: the grid's KeyError
         _tampered(lambda r, s, k: {**r, "metrics": {"artifact_p50_ms": 1.0}}), 0, r'"reused": true', ONNX, slow=True),
    Case("matrix-record-other-key", "matrix", _tampered(lambda r, s, k: {**r, "key": "0" * 24}), 0,
         RERUN + r"stored record is not a JSON object naming its own key", ONNX, slow=True),
]
