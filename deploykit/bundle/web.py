"""`deploykit package --app web`: the bundle as a static site that runs the model in the browser.

    bundle/
      index.html, app.js, style.css   the app: image in (file picker / drag and drop), labelled top-k out,
                                      or the output tensor for other models
      selftest.html, selftest.js      runs the golden vectors in the browser and shows the parity table
      backends.js, golden.js          the runtime adapters deploykit itself verifies with; the judging rule
      web.json                        which model file and runtime, and the tolerance of the golden vectors
      golden-web.json, golden.bin     the golden vectors as raw little-endian bytes with an index
      vendor/                         the runtime's JS and WASM files, copied from the pinned npm packages

plus what every bundle has (model with its contract, contract.json, labels, golden.npz/json). Serve it
with COOP/COEP headers (`deploykit serve DIR`) for threads; any static host works single-threaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deploykit import fsutil
from deploykit.browser import WEB_DIR, node_modules
from deploykit.formats import Format
from deploykit.registry import browser_runtime_for

# What each runtime loads (ort.wasm.min.mjs is the WASM-only build; LiteRT.js picks among its builds by the
# browser's features, so all but JSPI go along), and the licence files that must travel with them.
VENDOR = {
    "onnxruntime-web": ("onnxruntime-web/dist/ort.wasm.min.mjs", "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
                        "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm", "onnxruntime-web/package.json"),
    "litert-js": ("@litertjs/core/dist/index.js", "@litertjs/core/wasm/litert_wasm_internal.js",
                  "@litertjs/core/wasm/litert_wasm_internal.wasm", "@litertjs/core/wasm/litert_wasm_threaded_internal.js",
                  "@litertjs/core/wasm/litert_wasm_threaded_internal.wasm",
                  "@litertjs/core/wasm/litert_wasm_compat_internal.js",
                  "@litertjs/core/wasm/litert_wasm_compat_internal.wasm", "@litertjs/core/package.json",
                  "@litertjs/wasm-utils/dist/index.js", "@litertjs/wasm-utils/package.json"),
}


def write_web_app(folder: Path, model_file: str, fmt: Format, inputs: list, outputs: list, tolerance,
                  title: str, timeout: float) -> str:
    """Write the web app's files into the bundle ``folder``; returns the runtime's name."""
    runtime = browser_runtime_for(fmt).name
    modules = node_modules(timeout)
    # Every file through fsutil's atomic writer (a temporary of its own, renamed in): no write follows a link.
    for name in ("index.html", "app.js", "style.css", "selftest.html", "selftest.js", "golden.js"):
        fsutil.write_bytes_atomic(folder / name, (WEB_DIR / "app" / name).read_bytes())
    fsutil.write_bytes_atomic(folder / "backends.js", (WEB_DIR / "backends.js").read_bytes())
    for relative in VENDOR[runtime]:
        target = folder / "vendor" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_bytes_atomic(target, (modules / relative).read_bytes())
    _write_golden(folder, inputs, outputs)
    config = {"model": model_file, "runtime": runtime, "title": title, "tolerance": _as_dict(tolerance)}
    fsutil.write_text_atomic(folder / "web.json", json.dumps(config, indent=2) + "\n")
    return runtime


def runtime_version(folder: Path, runtime: str) -> str:
    """The version of the browser runtime vendored into the bundle ``folder`` (its package.json, as npm pinned it)."""
    manifest = next(name for name in VENDOR[runtime] if name.endswith("package.json"))
    try:
        version = json.loads((folder / "vendor" / manifest).read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        version = None
    return version if isinstance(version, str) else "unknown"


def _as_dict(tolerance) -> dict:
    import dataclasses

    return dataclasses.asdict(tolerance)


def _write_golden(folder: Path, inputs: list, outputs: list) -> None:
    """golden.bin holds every tensor's raw bytes (little-endian, as typed arrays read them); the index says where."""
    chunks, offset, samples = [], 0, []

    def place(name: str, value) -> dict:
        nonlocal offset
        array = np.ascontiguousarray(value)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        entry = {"name": name, "dtype": "bool" if np.asarray(value).dtype == np.bool_ else array.dtype.name,
                 "shape": list(array.shape), "offset": offset, "bytes": array.nbytes}
        padding = (-array.nbytes) % 8      # typed arrays need aligned offsets (8 for BigInt64 / Float64)
        chunks.append(array.tobytes() + b"\0" * padding)
        offset += array.nbytes + padding
        return entry

    for feeds, results in zip(inputs, outputs):
        samples.append({"inputs": [place(k, v) for k, v in feeds.items()],
                        "outputs": [place(k, v) for k, v in results.items()]})
    fsutil.write_bytes_atomic(folder / "golden.bin", b"".join(chunks))
    fsutil.write_text_atomic(folder / "golden-web.json", json.dumps({"samples": samples}) + "\n")
