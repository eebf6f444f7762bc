"""A warm parent for runner children: one process that has imported numpy, ONNX Runtime and LiteRT once, and forks
a fresh child for each job that runs an .onnx or .tflite file.

Why: every ``Artifact.run`` of an ONNX or TFLite file is a child process (a runtime can crash on a file), and such
a child spends ~0.4 s importing numpy, the runtime and deploykit before running a model that often takes
milliseconds; a verify of three artifacts on three runtimes starts nine. Forked from a process that already
imported them, a child starts in a few milliseconds. The job still runs in a process of its own with every
guarantee of ``deploykit.child``: its own process group (``setsid``), killed as a whole on a time-out, an abort or
an interrupt; a DeploykitError comes back as the same class (the same job folder, the same ``_child_main``); it
dies with the process that waits for it (the zygote, which dies with the parent).

What is never forked: anything that times a cold start (``measure_job``: the import *is* what it measures), other
formats (TensorFlow, PyTorch, ExecuTorch: their frameworks are not imported here, and TensorFlow must not share a
process with LiteRT's own copy of the TFLite runtime), converters, emulated ARM runs. The zygote imports nothing
before a job asks for it; ``DEPLOYKIT_ZYGOTE=0`` turns it off.

Wire: the parent writes ``<token> <job folder>`` lines on the zygote's stdin; the zygote answers on its stdout
``started <token> <pid>`` and, once it has reaped that child, ``exited <token> <wait status>``.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

FORKABLE_TARGETS = frozenset({"deploykit.harness:run_job", "deploykit.harness:capture_job"})
FORKABLE_FORMATS = frozenset({"onnx", "tflite"})
SWITCH_ENV = "DEPLOYKIT_ZYGOTE"
PRELOAD = ("numpy", "deploykit.harness", "deploykit.model", "runtimes.onnxruntime", "runtimes.litert")
_LOCK = threading.Lock()
_ZYGOTE: Optional["Zygote"] = None


def forkable(target: str, request: dict) -> bool:
    """Whether a job may run in a child forked from the zygote (see the module's docstring)."""
    if os.environ.get(SWITCH_ENV, "1") == "0" or target not in FORKABLE_TARGETS:
        return False
    model = request.get("model") or {}
    return model.get("format") in FORKABLE_FORMATS


def run(target: str, request: dict, folder: Path, env: dict, timeout: float, stage, what: str,
        abort=None) -> Optional[tuple]:
    """(returncode, stdout, stderr) of the job in ``folder``, run in a forked child; None when it is not
    ``forkable`` or no zygote could serve it (the caller starts a child of its own). The zygote is started on first use, and anew when the children's
    environment has changed (a test's monkeypatched variable, a factory's folder on PYTHONPATH)."""
    global _ZYGOTE
    if not forkable(target, request):
        return None
    key = tuple(sorted((k, v) for k, v in env.items() if k != "DEPLOYKIT_PARENT_PID"))
    with _LOCK:
        if _ZYGOTE is not None and (_ZYGOTE.key != key or not _ZYGOTE.alive()):
            _ZYGOTE.close()
            _ZYGOTE = None
        if _ZYGOTE is None:
            try:
                _ZYGOTE = Zygote(env, key)
            except OSError:
                return None
        zygote = _ZYGOTE
    return zygote.run(folder, timeout, stage, what, abort)


class Zygote:
    """The parent side: the zygote process, a reader thread for its answers, and each job's wait."""

    def __init__(self, env: dict, key: tuple) -> None:
        self.key = key
        self._events: dict = {}
        self._cond = threading.Condition()
        self._tokens = 0
        self._write = threading.Lock()
        started, box = threading.Event(), {}
        argv = [sys.executable, "-P", "-m", "deploykit.zygote"]

        def keeper() -> None:     # PR_SET_PDEATHSIG follows the *thread* that started the process: a long-lived one
            try:
                box["process"] = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                  stderr=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                box["error"] = exc
            started.set()
            if "process" in box:
                self._read(box["process"])

        threading.Thread(target=keeper, name="deploykit-zygote", daemon=True).start()
        started.wait()
        if "error" in box:
            raise box["error"]
        self.process = box["process"]

    def alive(self) -> bool:
        return self.process.poll() is None

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            parts = line.decode(errors="replace").split()
            if len(parts) == 3 and parts[0] in ("started", "exited"):
                with self._cond:
                    self._events.setdefault(parts[1], {})[parts[0]] = int(parts[2])
                    self._cond.notify_all()
        process.wait()
        with self._cond:            # the zygote is gone: every waiting job learns it at once
            self._events["closed"] = {}
            self._cond.notify_all()

    def run(self, folder: Path, timeout: float, stage, what: str, abort) -> Optional[tuple]:
        with self._write:
            self._tokens += 1
            token = str(self._tokens)
            try:
                self.process.stdin.write(f"{token} {folder}\n".encode())
                self.process.stdin.flush()
            except (BrokenPipeError, OSError):
                return None
        deadline = time.monotonic() + timeout
        pid = None
        try:
            while True:
                event = self._wait(token, min(0.25, max(deadline - time.monotonic(), 0.001)))
                if event is None:
                    return None if pid is None else (None, *_output(folder))    # the zygote died under the job
                pid = event.get("started", pid)
                if "exited" in event:
                    return (os.waitstatus_to_exitcode(event["exited"]), *_output(folder))
                if time.monotonic() >= deadline:
                    _kill(pid)
                    raise stage.error(f"{stage.describe(what)} did not finish within {timeout:g} s",
                                      stage.timeout_remedy, outcome=stage.outcome)
                failure = abort() if abort else None
                if failure is not None:
                    _kill(pid)
                    raise failure
        except BaseException:
            _kill(pid)              # Ctrl-C or SIGTERM in the parent: the job's group dies with it
            raise
        finally:
            with self._cond:
                self._events.pop(token, None)

    def _wait(self, token: str, seconds: float) -> Optional[dict]:
        with self._cond:
            self._cond.wait_for(lambda: "exited" in self._events.get(token, {}) or "closed" in self._events,
                                timeout=seconds)
            if "closed" in self._events and "exited" not in self._events.get(token, {}):
                return None
            return dict(self._events.get(token, {}))

    def close(self) -> None:
        try:
            self.process.kill()
        except OSError:
            pass


def _kill(pid: Optional[int]) -> None:
    if pid is None:
        return
    from deploykit.procinfo import descendants

    for victim in [pid] + descendants(pid):
        try:
            (os.killpg if victim == pid else os.kill)(victim, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _output(folder: Path) -> tuple:
    texts = []
    for name in ("stdout.log", "stderr.log"):
        try:
            texts.append((folder / name).read_text(errors="replace"))
        except OSError:
            texts.append("")
    return tuple(texts)


# ---- the zygote's side -------------------------------------------------------------------------------------------

def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a runtime that is not installed is simply imported by no child
            pass


def _serve() -> int:
    from deploykit import child

    child._die_with_parent()
    _preload()
    me, jobs, pending = os.getpid(), {}, b""
    out = sys.stdout.buffer
    while True:
        ready, _, _ = select.select([0], [], [], 0.05)
        if ready:
            data = os.read(0, 65536)    # raw reads: a buffered readline could hide a second job from select
            if not data:
                return 0                # the parent closed the pipe: it is gone
            pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            token, _, folder = line.decode().strip().partition(" ")
            out.flush()
            pid = os.fork()
            if pid == 0:
                _child(Path(folder), me)
            jobs[pid] = token
            out.write(f"started {token} {pid}\n".encode())
            out.flush()
        while jobs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in jobs:
                out.write(f"exited {jobs.pop(pid)} {status}\n".encode())
                out.flush()


def _child(folder: Path, zygote: int) -> None:
    """The forked child: a session of its own, output into the job folder, then the job, as deploykit.child runs it."""
    code = 70
    try:
        os.setsid()
        for fd, name in ((1, "stdout.log"), (2, "stderr.log")):
            os.dup2(os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        from deploykit import child

        os.environ[child.PARENT_ENV] = str(zygote)
        child._die_with_parent()
        child.RSS_AT_START = child.status_bytes("VmRSS")
        code = child._child_main(folder)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(_serve())
