"""LiteRT.js (WASM with XNNPACK kernels) in headless Chromium.

The page side lives in ``deploykit/web/backends.js``; the browser, server and npm packages in
``deploykit.browser``. This module names the runtime and turns its load errors into deploykit's.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from deploykit.browser import BrowserRunner
from deploykit.errors import UnsupportedModelError


class LiteRtJsRunner(BrowserRunner):
    """A .tflite model in LiteRT.js's WASM runtime.

    LiteRT.js has no way to resize an input: a model with dynamic dims (a Keras model's batch of -1) is
    loaded from a copy with its input shapes pinned to the feeds' (re-pinned if later feeds differ).
    """

    RUNTIME = "litert-js"
    _pinned: Optional[dict] = None      # input shapes of the loaded copy; None: the file as it is

    def open(self) -> None:
        # LiteRT.js has no way to register custom op kernels, and runs a model that needs one anyway: on a model
        # with an unresolved custom op it returned garbage (cosine 2e-6 against the source) where native LiteRT
        # refuses at allocation. So the file's custom ops are named before it is loaded.
        from deploykit.tflite_metadata import custom_ops

        needed = custom_ops(Path(self.model.path).read_bytes())
        if needed:
            raise UnsupportedModelError(
                f"LiteRT.js cannot run custom op{'s' if len(needed) > 1 else ''} {', '.join(needed)} used by "
                f"{Path(self.model.path).name} (it has no custom-op kernels)",
                "convert by a route that lowers it to builtin ops (e.g. --via litert, from a PyTorch program), "
                "or run it with native LiteRT with the op registered")
        super().open()

    def model_file(self) -> str:
        if not any(not isinstance(d, int) or d < 0 for t in self.model.spec.inputs for d in t.shape):
            return self.model.path
        from deploykit.tflite_metadata import pin_input_shapes

        if self._pinned is None:    # the placeholder the file stores for a dynamic dim is 1
            self._pinned = {t.name: tuple(d if isinstance(d, int) and d >= 0 else 1 for d in t.shape)
                            for t in self.model.spec.inputs}
        self._folder = tempfile.mkdtemp(prefix="deploykit-litert-js-")
        pinned = Path(self._folder) / Path(self.model.path).name
        pinned.write_bytes(pin_input_shapes(Path(self.model.path).read_bytes(), self._pinned))
        return str(pinned)

    def close(self) -> None:
        super().close()
        if getattr(self, "_folder", None):
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def run(self, feeds: Mapping) -> dict:
        shapes = {name: tuple(np.shape(value)) for name, value in feeds.items()}
        if self._pinned is not None and shapes != self._pinned:
            self.close()
            self._pinned = shapes
            self.open()
        return super().run(feeds)

    def time_calls(self, feeds: Mapping, timing) -> list:
        self.run(feeds)     # pins the shapes first, outside the timing
        return super().time_calls(feeds, timing)

    def load_error(self, message: str) -> Exception:
        # LiteRT names an op it lacks as "Didn't find op for builtin opcode 'NAME'" or "custom op 'NAME'".
        missing = re.search(r"(?:builtin opcode|custom op(?:eration)?)\s*'?(\w+)'?", message, re.IGNORECASE)
        if missing or "Flex" in message:
            op = missing.group(1) if missing else re.search(r"Flex\w+", message).group(0)
            return UnsupportedModelError(
                f"LiteRT.js cannot run op {op} used by {Path(self.model.path).name}",
                "convert by a route that lowers it to builtin ops (e.g. --via litert, from a PyTorch program), "
                "or run it with native LiteRT")
        return super().load_error(message)
