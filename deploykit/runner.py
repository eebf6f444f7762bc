"""The runner contract every runtime module implements: numpy in, numpy out.

A runtime plug-in (``runtimes/<name>.py``) provides, and registers in ``deploykit.registry``:

* ``load_model(path, fmt, options: LoadOptions) -> LoadedModel`` — read the file's signature
  once (and, for framework formats, keep the framework object in ``handle``);
* a Runner class ``Runner(model: LoadedModel, options: RunnerOptions)`` with ``open()``,
  ``spec()``, ``run(feeds) -> {output name: ndarray}`` and ``close()``; it is a context manager.

The harness (``deploykit.harness``) times; runners never do: timing leaking into a runner makes
its return type depend on the caller. The one exception is a runner whose every call crosses a process
boundary (a browser page, ``deploykit.browser.BrowserRunner``): it may offer
``time_calls(feeds, Timing) -> [ms]`` (timed on its side with the harness's Timing semantics),
``last_ms`` (its own time of the last run) and ``memory() -> dict`` (the memory of the process that
really runs the model); the harness uses them when present. A runner reached through heavy Python bindings
(ExecuTorch) may set ``bindings_import_s`` (their first import in the process), which `bench` reports as part of
the cold start that an app linking the C++ runtime does not pay. A runner may offer
``capture(feeds_list) -> (GraphView dict, [{tensor: value}] per sample)`` for ``--locate``: called without
``open()``, it builds its own session that keeps every layer's output (``deploykit.graphview.view_points``). Runners of files a runtime could crash on are opened in a
child process by the core (``deploykit.child``), never by the runtime module itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, runtime_checkable

import numpy as np



@dataclass(frozen=True)
class RunnerOptions:
    threads: Optional[int] = None      # intra-op threads; None lets the runtime decide
    device: str = "cpu"                # "cpu", "cuda", or "auto" (CUDA when the runtime and a GPU allow)
    xnnpack: bool = True               # LiteRT: use the XNNPACK delegate (its default)
    compile: bool = False              # PyTorch: wrap the module in torch.compile
    arm_cpu: Optional[str] = None      # an emulated ARM runtime's core (deploykit.emulation.cores; None: cortex-a76)
    fp16_arithmetic: bool = False      # LiteRT: XNNPACK computes in fp16 (FORCE_FP16; F16C conversions on x86)


@runtime_checkable
class Runner(Protocol):
    """What deploykit calls on a runtime: open once, run many times, close."""

    def open(self) -> None:
        """Create the session/interpreter; raise ModelLoadError (with a remedy) if the runtime refuses the file."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict:
        """Outputs by name for one set of feeds (numpy arrays, in the model's own layout)."""

    def close(self) -> None:
        """Release the runtime's resources."""


class RunnerBase:
    """Context-manager plumbing shared by the runners."""

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        pass

    def run_many(self, feeds_list: list) -> list:
        """Outputs for each feed dict, in order."""
        return [self.run(feeds) for feeds in feeds_list]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (framework errors run to pages), at most 200 characters."""
    from deploykit.text import first_line as first

    return first(str(exc), 200) or type(exc).__name__
