"""A loaded model of any format, and the one entry point that loads it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from deploykit import registry
from deploykit.formats import Format, detect
from deploykit.spec import ModelSpec


@dataclass
class LoadOptions:
    """How to load a model: user-given signature, weights, and pickle trust."""

    weights: Optional[str] = None
    trust_pickle: bool = False
    input_specs: tuple = ()          # TensorSpecs from --input, they override what the file says


@dataclass
class LoadedModel:
    """A model ready to run: its format, signature and the framework object behind it."""

    path: str
    format: Format
    spec: ModelSpec
    handle: Any = None               # nn.Module / ScriptModule / ExportedProgram; None for file runtimes
    weights: Optional[str] = None
    details: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        name = Path(self.path).name if Path(self.path).exists() else self.path
        return f"{name} ({self.format.value})"


def load_model(path: str, options: Optional[LoadOptions] = None) -> LoadedModel:
    """Detect the format of ``path`` and load it with the registered loader."""
    options = options or LoadOptions()
    fmt = detect(path)
    entry = registry.loader_for(fmt)
    registry.require(entry.requires, f"needed to load {fmt.value} models")
    return registry.resolve(entry.target)(path, fmt, options)


def sha256_of(path: "str | Path") -> Optional[str]:
    """sha256 of a file, or of a directory's files in name order; None for non-files."""
    p = Path(path)
    if not p.exists():
        return None
    digest = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
