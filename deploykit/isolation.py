"""Run a model file in a child process (see runtimes/worker.py) and collect its outputs."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from deploykit import errors

DEFAULT_TIMEOUT_S = 600


def run_isolated(path: str, feeds_list: list, runtime: Optional[str] = None, threads: Optional[int] = None,
                 device: str = "cpu", timeout: float = DEFAULT_TIMEOUT_S, time_iterations: int = 0,
                 runtime_options: Optional[dict] = None) -> tuple:
    """Returns (outputs per sample, info) or raises the child's DeploykitError.

    A crash or a time-out becomes a ParityError (exit 1): the artifact cannot be trusted.
    """
    with tempfile.TemporaryDirectory(prefix="deploykit-run-") as tmp:
        folder = Path(tmp)
        request = {"path": str(Path(path).resolve()), "runtime": runtime, "threads": threads,
                   "device": device, "samples": len(feeds_list), "time_iterations": time_iterations,
                   "runtime_options": runtime_options or {}}
        (folder / "request.json").write_text(json.dumps(request))
        np.savez(folder / "feeds.npz", **{f"{i}::{k}": v for i, f in enumerate(feeds_list) for k, v in f.items()})
        try:
            proc = subprocess.run([sys.executable, "-m", "runtimes.worker", str(folder)], capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise errors.ParityError(f"running {path} took longer than {timeout:.0f} s",
                                     "raise --timeout, or check the model for a hang") from None
        if (folder / "error.json").exists():
            raise _error_from(json.loads((folder / "error.json").read_text()))
        if proc.returncode != 0:
            raise errors.ParityError(f"the runtime process {_describe_exit(proc.returncode)} on {path}",
                                     "the artifact is broken or hits a runtime bug; run with --debug for its log: "
                                     + _last_line(proc.stderr))
        info = json.loads((folder / "result.json").read_text())
        outputs = [dict() for _ in feeds_list]
        with np.load(folder / "outputs.npz", allow_pickle=False) as data:
            for key in data.files:
                index, _, name = key.partition("::")
                outputs[int(index)][name] = data[key]
        order = info.get("output_names", [])
        return [{n: o[n] for n in order if n in o} for o in outputs], info


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"crashed with {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"failed with exit code {code}"


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def _error_from(data: dict) -> errors.DeploykitError:
    kinds = {cls.__name__: cls for cls in (errors.UsageError, errors.ModelLoadError, errors.UnsupportedModelError,
                                           errors.MissingDependency, errors.ConversionError, errors.ParityError)}
    return kinds.get(data.get("error"), errors.DeploykitError)(data.get("message", "?"), data.get("remedy", ""))
