"""onnxruntime-web (WASM, SIMD; threaded on a cross-origin-isolated page) in headless Chromium.

The page side lives in ``deploykit/web/backends.js``; the browser, server and npm packages in
``deploykit.browser``. This module names the runtime and turns its load errors into deploykit's.
"""
from __future__ import annotations

import re
from pathlib import Path

from deploykit.browser import BrowserRunner
from deploykit.errors import ModelLoadError, UnsupportedModelError


class OnnxRuntimeWebRunner(BrowserRunner):
    """An .onnx model in onnxruntime-web's WASM backend."""

    RUNTIME = "onnxruntime-web"

    def load_error(self, message: str) -> Exception:
        # ORT names a kernel it lacks as "Could not find an implementation for OpName(version) node ...", and
        # an op of a domain it does not know as "domain:OpName(-1) is not a registered function/op".
        missing = (re.search(r"implementation for (\w+)\((-?\d+)\)", message)
                   or re.search(r"([\w.]*:?\w+)\((-?\d+)\) is not a registered function/op", message))
        if missing:
            return UnsupportedModelError(
                f"onnxruntime-web cannot run op {missing.group(1)} (opset {missing.group(2)}) used by "
                f"{Path(self.model.path).name}", "re-export without it (another --opset, or a route that lowers it), "
                "or run the model with native onnxruntime")
        if "no available backend" in message:
            return ModelLoadError(f"onnxruntime-web found no WASM backend: {message}",
                                  "the runtime's .wasm files were not served; delete ~/.cache/deploykit/web-* and "
                                  "run again to reinstall them")
        return super().load_error(message)
