"""LiteRT.js (WASM with XNNPACK kernels) in headless Chromium.

The page side lives in ``deploykit/web/backends.js``; the browser, server and npm packages in
``deploykit.browser``. This module names the runtime and turns its load errors into deploykit's.
"""
from __future__ import annotations

import re

from deploykit.browser import BrowserRunner
from deploykit.errors import UnsupportedModelError


class LiteRtJsRunner(BrowserRunner):
    """A .tflite model in LiteRT.js's WASM runtime."""

    RUNTIME = "litert-js"

    def load_error(self, message: str) -> Exception:
        # LiteRT names an op it lacks as "Didn't find op for builtin opcode 'NAME'" or "custom op 'NAME'".
        missing = re.search(r"(?:builtin opcode|custom op(?:eration)?)\s*'?(\w+)'?", message, re.IGNORECASE)
        if missing or "Flex" in message:
            op = missing.group(1) if missing else re.search(r"Flex\w+", message).group(0)
            return UnsupportedModelError(
                f"LiteRT.js cannot run op {op} used by {self.model.path}",
                "convert by a route that lowers it to builtin ops (e.g. --via litert), or run it with native LiteRT")
        return super().load_error(message)
