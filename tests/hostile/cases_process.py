"""Hostile cases: processes and signals (issue 26: framework loaders that crash, SIGTERM during an export).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list.

A TorchScript archive that overflows torch.jit.load's C++ parser (builders.torchscript_parser_overflow) killed
the CLI itself with SIGSEGV (exit -11, no message) while PyTorch sources were deserialized in the CLI process.
It is read in a child now: the CLI says so in one line and exits 2. These cases run as their own process
(``process=True``) so that a crash of the CLI shows as that exit status instead of taking pytest down.
"""
from __future__ import annotations

from tests.hostile import builders as b
from tests.hostile.kit import ONNX, TORCH, Case, _onnx

_CRASH = r"loading crash\.pt crashed with SIGSEGV: .* — the file is corrupt or hits a bug in the runtime"


def _crashing(work, *args: str) -> list:
    b.torchscript_parser_overflow(work / "crash.pt")
    return [arg.format(src="crash.pt") for arg in args]


CASES: list = [
    Case("process-torch-loader-crash-inspect", "process", lambda w: _crashing(w, "inspect", "{src}"), 2, _CRASH,
         TORCH, process=True),
    Case("process-torch-loader-crash-export-onnx", "process",
         lambda w: _crashing(w, "export", "{src}", "--to", "onnx", "-o", "out.onnx"), 2, _CRASH, TORCH + ONNX,
         process=True),
    Case("process-torch-loader-crash-verify", "process",
         lambda w: _crashing(w, "verify", "{src}", _onnx(w)), 2, _CRASH, TORCH + ONNX, process=True),
]
