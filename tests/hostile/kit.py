"""What every hostile-corpus module builds its cases from: the Case record and the small file makers.

Cases live in topic modules (corpus.py: the first rounds; cases_*.py: one module per later surface) so that
each surface's cases sit beside each other; corpus.CASES gathers them all for test_corpus.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tests.hostile import builders as b


@dataclass(frozen=True)
class Case:
    name: str
    kind: str                           # the defect class it guards (issue 10's numbering, or "format", ...)
    build: Callable[[Path], list]       # makes files in the work dir, returns the CLI arguments
    code: int
    message: str = ""                   # regex the error line must match (code 0: stdout must match it)
    needs: tuple = ()                   # pytest markers: torch, onnxruntime, tensorflow, litert
    process: bool = False               # must run as its own process (it hangs a thread, or uses ulimit)
    slow: bool = False
    ulimit_file_kb: int = 0             # RLIMIT_FSIZE for the process: writing more is a "disk full"
    creates: tuple = ()                 # files the command may add (code 0 cases)


def _files(work: Path, **texts) -> None:
    for name, text in texts.items():
        (work / name).write_bytes(text if isinstance(text, bytes) else text.encode())


def _onnx(work: Path, name: str = "tiny.onnx", **kw) -> str:
    b.tiny_onnx(work / name, **kw)
    return name


def _fifo(work: Path, name: str) -> str:
    os.mkfifo(work / name)
    return name


_TEMPLATES: dict = {}


def _packaged_once() -> Path:
    """One real bundle of tiny.onnx per test process: the cases tamper with copies of it (packaging — golden
    vectors, the runtime BOM — is the setup, not what they test, and tiny.onnx is the same bytes every time)."""
    import atexit
    import shutil
    import tempfile

    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    if "b" not in _TEMPLATES or not _TEMPLATES["b"].is_dir():
        folder = Path(tempfile.mkdtemp(prefix="hostile-bundle-"))
        atexit.register(shutil.rmtree, folder, True)
        _onnx(folder)
        api.package(str(folder / "tiny.onnx"), str(folder / "b"),
                    PackageOptions(samples=1, source=str(folder / "tiny.onnx")))
        _TEMPLATES["b"] = folder / "b"
    return _TEMPLATES["b"]


def _bundle(work: Path, **relisted) -> str:
    """A real bundle of tiny.onnx in ``b`` (a copy of the one packaged once); ``relisted`` entries are added to its
    deploykit-bundle.json's file list (and a ``model`` entry replaces its model), as a tamperer would write them."""
    import json
    import shutil

    _onnx(work)
    shutil.copytree(_packaged_once(), work / "b", symlinks=True)
    info = json.loads((work / "b" / "deploykit-bundle.json").read_text())
    info["model"] = relisted.pop("model", info["model"])
    info["files"].update(relisted)
    (work / "b" / "deploykit-bundle.json").write_text(json.dumps(info))
    return "b"


ONNX = ("onnxruntime",)
TORCH = ("torch",)
