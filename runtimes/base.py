"""The one Runner protocol every runtime implements: numpy in, numpy out.

The harness times; runners never do (timing leaking into a runner makes its
return type depend on the caller).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, runtime_checkable

import numpy as np

from deploykit.spec import ModelSpec


@dataclass(frozen=True)
class RunnerOptions:
    threads: Optional[int] = None      # intra-op threads; None lets the runtime decide
    device: str = "cpu"                # "cpu", "cuda", or "auto" (CUDA when the runtime and a GPU allow)
    xnnpack: bool = True               # LiteRT: use the XNNPACK delegate (its default)
    compile: bool = False              # PyTorch: wrap the module in torch.compile


@runtime_checkable
class Runner(Protocol):
    def open(self) -> None: ...

    def spec(self) -> ModelSpec: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict: ...

    def close(self) -> None: ...


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
        return [self.run(feeds) for feeds in feeds_list]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (framework errors run to pages), at most 200 characters."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]
