"""Registries of loaders, converter edges and runtimes: data, not if-chains.

Targets are "module:attribute" strings resolved on use, so that listing the registry
(``deploykit doctor``) imports nothing heavy, and a missing package makes an entry
unavailable with an install hint instead of an ImportError.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Optional

from deploykit.errors import MissingDependency, UsageError
from deploykit.formats import TORCH_FORMATS, Format

# import name -> (distribution name, deploykit extra that installs it)
PACKAGES = {
    "torch": ("torch", "torch"),
    "onnx": ("onnx", "onnx"),
    "onnxscript": ("onnxscript", "torch"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "onnxslim": ("onnxslim", "onnx"),
    "tensorflow": ("tensorflow", "tf"),
    "tf2onnx": ("tf2onnx", "tf"),
    "onnx2tf": ("onnx2tf", "tf"),
    "ai_edge_litert": ("ai-edge-litert", "litert"),
    "litert_torch": ("litert-torch", "litert"),
}


def missing_packages(requires: tuple) -> list:
    """Import names in ``requires`` that are not importable (checked without importing)."""
    return [name for name in requires if importlib.util.find_spec(name) is None]


def require(requires: tuple, why: str) -> None:
    """Raise MissingDependency naming the first missing package and its extra."""
    missing = missing_packages(requires)
    if missing:
        dist, extra = PACKAGES.get(missing[0], (missing[0], "all"))
        raise MissingDependency.for_package(dist, extra, why)


def resolve(target: str):
    """Import ``module:attribute`` and return the attribute."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class LoaderEntry:
    formats: frozenset
    target: str
    requires: tuple


@dataclass(frozen=True)
class ConverterEdge:
    """One conversion step from any of ``src`` formats to ``dst``."""

    name: str
    src: frozenset
    dst: Format
    target: str
    requires: tuple
    preference: int = 0     # lower is tried first among routes of equal length

    @property
    def available(self) -> bool:
        return not missing_packages(self.requires)


@dataclass(frozen=True)
class RuntimeEntry:
    """A runtime that can execute models of ``formats`` through the Runner protocol."""

    name: str
    formats: frozenset
    target: str
    requires: tuple
    description: str = ""

    @property
    def available(self) -> bool:
        return not missing_packages(self.requires)


LOADERS = (
    LoaderEntry(TORCH_FORMATS, "runtimes.torch_eager:load_model", ("torch",)),
    LoaderEntry(frozenset({Format.ONNX}), "runtimes.onnxruntime:load_model", ("onnx",)),
)

EDGES = (
    ConverterEdge("torch_to_onnx", TORCH_FORMATS, Format.ONNX, "converters.torch_to_onnx:convert",
                  ("torch", "onnx", "onnxscript")),
)

RUNTIMES = (
    RuntimeEntry("torch", TORCH_FORMATS, "runtimes.torch_eager:TorchEagerRunner", ("torch",),
                 "PyTorch eager / TorchScript / torch.export (research)"),
    RuntimeEntry("onnxruntime", frozenset({Format.ONNX}), "runtimes.onnxruntime:OnnxRuntimeRunner",
                 ("onnxruntime",), "ONNX Runtime (CPU, CUDA EP when present)"),
)

TARGETS = {"onnx": Format.ONNX, "tflite": Format.TFLITE, "saved_model": Format.SAVED_MODEL}


def target_format(name: str) -> Format:
    try:
        return TARGETS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown target {name!r}", f"use --to one of {', '.join(TARGETS)}") from None


def loader_for(fmt: Format) -> LoaderEntry:
    for entry in LOADERS:
        if fmt in entry.formats:
            return entry
    raise UsageError(f"deploykit cannot load {fmt.value} models yet",
                     "convert it to ONNX or give a PyTorch model; see the README's support table")


def runtime_for(fmt: Format, name: Optional[str] = None) -> RuntimeEntry:
    """The named runtime, or the first registered one that runs ``fmt``."""
    for entry in RUNTIMES:
        if fmt in entry.formats and (name is None or entry.name == name):
            return entry
    choices = ", ".join(e.name for e in RUNTIMES if fmt in e.formats) or "none yet"
    raise UsageError(f"no runtime {name + ' ' if name else ''}runs {fmt.value} models",
                     f"runtimes for {fmt.value}: {choices}")


def plan(src: Format, dst: Format, max_hops: int = 3) -> list:
    """Every route (a list of edges) from ``src`` to ``dst``, shortest and preferred first."""
    routes, frontier = [], [(src, [])]
    for _hop in range(max_hops):
        next_frontier = []
        for fmt, path in frontier:
            for edge in EDGES:
                if fmt in edge.src and edge not in path:
                    route = path + [edge]
                    (routes if edge.dst == dst else next_frontier).append((edge.dst, route))
        frontier = next_frontier
    ranked = sorted((route for _fmt, route in routes), key=lambda r: (len(r), [e.preference for e in r]))
    return ranked
