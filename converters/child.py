"""Run one conversion job in a child process with a time limit.

Converters that can hang, crash natively, or flood the terminal (onnx2tf, litert-torch,
tf2onnx) run here: a hang becomes exit 4 after --timeout seconds, a segfault becomes an
error message, their logs are kept out of the user's terminal (shown with --debug), and
their multi-second imports do not slow the parent.

Parent:  run_job("converters.onnx_to_tflite:job", {...json...}, timeout, debug) -> dict
Child:   python -m converters.child TARGET REQUEST.json RESULT.json
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from deploykit.errors import ConversionError, DeploykitError


def run_job(target: str, payload: dict, timeout: float, debug: bool = False) -> dict:
    name = target.rpartition(".")[2].split(":")[0]
    with tempfile.TemporaryDirectory(prefix="deploykit-job-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps(payload))
        try:
            proc = subprocess.run([sys.executable, "-m", "converters.child", target, str(request), str(result)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"the {name} converter did not finish within {timeout:.0f} s",
                                  "raise --timeout, or try another route with --via") from None
        if debug:
            sys.stderr.write(proc.stdout + proc.stderr)
        if result.exists():
            data = json.loads(result.read_text())
            if "error" in data:
                raise ConversionError(data["error"], data.get("remedy") or
                                      "run with --debug for the converter's log, or try another route with --via")
            return data
        how = f"crashed with {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 \
            else f"exited with code {proc.returncode}"
        tail = [line for line in (proc.stderr or "").strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise ConversionError(f"the {name} converter {how}: {tail[0][:200]}",
                              "run with --debug for its log, or try another route with --via")


def main(target: str, request_path: str, result_path: str) -> int:
    from deploykit.registry import resolve

    payload = json.loads(Path(request_path).read_text())
    try:
        result = resolve(target)(payload) or {}
    except DeploykitError as exc:
        result = {"error": exc.message, "remedy": exc.remedy}
    except Exception as exc:  # noqa: BLE001 - report any converter failure to the parent as text
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        result = {"error": f"{type(exc).__name__}: {(lines[0] if lines else '')[:300]}"}
    Path(result_path).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
