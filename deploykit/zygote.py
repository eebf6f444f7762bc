"""Warm parents for children: a process that has imported what a kind of job needs once, and forks a fresh child for
each such job — runner jobs of .onnx/.ort/.tflite files (numpy, ONNX Runtime, LiteRT) and the converters that start
a child of their own per conversion: onnx2tf and tf2onnx (with TensorFlow), litert-torch, ExecuTorch's exporter,
coreai-torch and coremltools (with PyTorch), one zygote per converter.

Why: every ``Artifact.run`` of an ONNX or TFLite file is a child process (a runtime can crash on a file), and such a
child spends ~0.4 s importing numpy, the runtime and deploykit before running a model that often takes milliseconds;
a verify of three artifacts on three runtimes starts nine. An onnx2tf conversion of a small model spends 3.3 of its
4.5 s importing TensorFlow and onnx2tf; a litert-torch or ExecuTorch conversion ~5 s importing PyTorch and the
exporter, a coremltools one more. Forked from a process that already imported them, a child starts in a few
milliseconds. A converter's zygote imports exactly what its job imports first (never a second framework: TensorFlow
and LiteRT's runtime stay apart as they do in a fresh child) and ends after ``IDLE_S`` without a job, so a
long-lived process does not keep a converter's gigabyte for a conversion it made once. The job still runs in a
process of its own with every guarantee of ``deploykit.child``: its own process group (``setsid``), killed as a
whole on a time-out, an abort or an interrupt; a DeploykitError comes back as the same class (the same job folder,
the same ``_child_main``); it dies with the process that waits for it (the zygote, which dies with the parent).

What is never forked: anything that times a cold start (``measure_job``: the import *is* what it measures), runs of
other formats (TensorFlow must not share a process with LiteRT's own copy of the TFLite runtime), the reused child of
a Keras or TensorFlow source, emulated ARM runs. A zygote imports nothing before a job of its kind asks for one, and
is started anew when the children's environment changed; ``DEPLOYKIT_ZYGOTE=0`` turns them off.

A command's reused child (``deploykit.child.Session``) whose first job is PyTorch's is forked from the
``torch-session`` zygote too: it serves the command's jobs as a child of its own does, named on a FIFO.

Wire: the parent writes ``<token> <job folder>`` (or ``<token> --serve <session folder>``) lines on the zygote's
stdin; the zygote answers on its stdout ``started <token> <pid>`` and, once it has reaped that child, ``exited
<token> <wait status>``.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

FORKABLE_TARGETS = frozenset({"deploykit.harness:run_job", "deploykit.harness:capture_job"})
FORKABLE_FORMATS = frozenset({"onnx", "ort", "tflite"})
# A converter's one-shot job -> the kind of zygote that forks it.
CONVERTER_KINDS = {"converters.onnx_to_tflite:job": "onnx2tf", "converters.tflite_to_onnx:job": "tf2onnx",
                   "converters.torch_to_tflite:job": "litert-torch", "converters.llm_to_tflite:convert": "litert-torch",
                   "converters.torch_to_executorch:job": "executorch",
                   "converters.llm_to_executorch:convert": "executorch",
                   "converters.torch_to_coreai:job": "coreai", "converters.torch_to_coreml:job": "coreml"}
SWITCH_ENV = "DEPLOYKIT_ZYGOTE"
IDLE_ENV = "DEPLOYKIT_ZYGOTE_IDLE_S"
IDLE_S = 300.0          # a converter's zygote with no job for this long ends (the next conversion starts another)
# What each kind of zygote imports before it forks: the runners', or a converter's (TensorFlow + onnx2tf: 3.3 s of
# a 4.5 s small conversion; forked after them, a conversion of the two-layer net took 0.9 s instead of 4.9 s).
# "module:function" is called once imported: coremltools is imported as its job imports it, without TensorFlow.
PRELOAD = {"runners": ("numpy", "deploykit.harness", "deploykit.model", "runtimes.onnxruntime", "runtimes.litert"),
           "onnx2tf": ("numpy", "tensorflow", "onnx", "onnx2tf", "converters.onnx_to_tflite"),
           "tf2onnx": ("numpy", "tf2onnx", "onnx", "deploykit.transforms.tflite_prep", "converters.tflite_to_onnx"),
           "litert-torch": ("numpy", "torch", "litert_torch", "deploykit.model", "converters.torch_to_tflite"),
           "executorch": ("numpy", "torch", "executorch.exir", "executorch.version",
                          "executorch.backends.xnnpack.partition.xnnpack_partitioner", "deploykit.model",
                          "converters.torch_to_executorch"),
           "coreai": ("numpy", "torch", "coreai_torch", "deploykit.model", "converters.torch_to_coreai"),
           "coreml": ("numpy", "torch", "deploykit.model", "converters.torch_to_coreml",
                      "converters.torch_to_coreml:_coremltools")}
# Set before the preload, as the jobs set them before their first import (read once, at import).
PRELOAD_ENV = {"onnx2tf": {"TF_CPP_MIN_LOG_LEVEL": "3"}, "tf2onnx": {"TF_CPP_MIN_LOG_LEVEL": "3"},
               "litert-torch": {"LITERT_TORCH_SHOW_PROGRESS": "n"}}
# A command's reused child (deploykit.child.Session) is forked from the PyTorch zygote when its first job is one of
# these, or describes a source of these formats: it then starts with torch, torch.export and torch.onnx imported
# (2.8-3.2 s a command, paid once per process instead).
SESSION_TARGETS = {"converters.torch_to_onnx:export_job": "torch-session",
                   "deploykit.llm.jobs:source_reference": "torch-session",
                   "deploykit.llm.speed:prompt_job": "torch-session"}
SESSION_FORMATS = frozenset({"torchscript", "exported_program", "state_dict", "torch_pickle", "python_factory",
                             "hf_causal_lm", "gguf"})
PRELOAD["torch-session"] = ("numpy", "torch", "torch.export", "onnx", "torch.onnx", "deploykit.model")
SESSION_START_S = 300.0     # the zygote's imports come first; under load they have taken over a minute
# Variables that change between jobs without changing what a child does: the parent's pid (set per launch) and
# pytest's name of the running test (set per test: with it in the key, every test would start its own zygotes).
VOLATILE = frozenset({"DEPLOYKIT_PARENT_PID", "PYTEST_CURRENT_TEST"})
SERVE = "--serve"           # a job line "<token> --serve <folder>": fork a reused child for that session folder
_LOCK = threading.Lock()
_ZYGOTES: dict = {}


def forkable(target: str, request: dict) -> Optional[str]:
    """The kind of zygote that may fork a job (None: it gets a child of its own; see the module's docstring)."""
    if os.environ.get(SWITCH_ENV, "1") == "0":
        return None
    if target in CONVERTER_KINDS:
        return CONVERTER_KINDS[target]
    model = request.get("model") or {}
    return "runners" if target in FORKABLE_TARGETS and model.get("format") in FORKABLE_FORMATS else None


def run(target: str, request: dict, folder: Path, env: dict, timeout: float, stage, what: str,
        abort=None) -> Optional[tuple]:
    """(returncode, stdout, stderr) of the job in ``folder``, run in a forked child; None when it is not
    ``forkable`` or no zygote could serve it (the caller starts a child of its own). The zygote is started on first
    use, and anew when it has ended (idle) or the children's environment has changed (a test's monkeypatched
    variable, a factory's folder on PYTHONPATH)."""
    kind = forkable(target, request)
    zygote = _zygote(kind, env) if kind else None
    return zygote.run(folder, timeout, stage, what, abort) if zygote else None


def session_kind(target: str, request: dict) -> Optional[str]:
    """The kind of zygote that may fork a command's reused child whose first job this is (None: a child of its
    own)."""
    if os.environ.get(SWITCH_ENV, "1") == "0":
        return None
    return SESSION_TARGETS.get(target) or ("torch-session" if request.get("format") in SESSION_FORMATS else None)


def start_session(target: str, request: dict, root: Path, env: dict) -> Optional["ForkedSession"]:
    """A command's reused child forked from a warm zygote, for ``deploykit.child.Session``; None when its first job
    (``target``, ``request``) is not ``session_kind`` or no zygote could serve it (the caller starts a child of
    its own). Jobs are named on the FIFO ``root/jobs`` and answered on ``root/done``, as a child of its own reads
    its stdin and writes an inherited pipe."""
    kind = session_kind(target, request)
    zygote = _zygote(kind, env) if kind else None
    if zygote is None:
        return None
    jobs, done = root / "jobs", root / "done"
    (root / "log").touch(0o600)     # the session reads each job's output from it, from the first job on
    for fifo in (jobs, done):       # a session whose child died (a crash, a time-out) forks a new one: new FIFOs
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)
    # Both opened before the fork is asked for, so that neither side's open blocks: "done" non-blocking (select
    # says when to read; it reports end-of-file only once the child had it open), "jobs" for reading and writing.
    done_r, jobs_w = os.open(done, os.O_RDONLY | os.O_NONBLOCK), os.open(jobs, os.O_RDWR)
    started = zygote.fork_session(root)
    if started is None:
        for fd in (done_r, jobs_w):
            os.close(fd)
        for fifo in (jobs, done):
            fifo.unlink()
        return None
    return ForkedSession(zygote, *started, jobs_w, done_r)


def _zygote(kind: str, env: dict) -> Optional["Zygote"]:
    """This process's zygote of ``kind``, started now when there is none, it has ended, or ``env`` changed."""
    key = tuple(sorted((k, v) for k, v in env.items() if k not in VOLATILE))
    with _LOCK:
        zygote = _ZYGOTES.get(kind)
        if zygote is not None and (zygote.key != key or not zygote.alive()):
            zygote.close()
            zygote = None
        if zygote is None:
            try:
                zygote = _ZYGOTES[kind] = Zygote(kind, env, key)
            except OSError:
                return None
    return zygote


def current(kind: str = "runners") -> Optional["Zygote"]:
    """The zygote of ``kind`` this process started (None before its first job)."""
    return _ZYGOTES.get(kind)


class Zygote:
    """The parent side: the zygote process, a reader thread for its answers, and each job's wait."""

    def __init__(self, kind: str, env: dict, key: tuple) -> None:
        self.kind, self.key = kind, key
        self._events: dict = {}
        self._cond = threading.Condition()
        self._tokens = 0
        self._write = threading.Lock()
        started, box = threading.Event(), {}
        argv = [sys.executable, "-P", "-m", "deploykit.zygote", kind]

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

    def _send(self, line: str) -> Optional[str]:
        """Hand the zygote a job line; its token (None: the zygote is gone)."""
        with self._write:
            self._tokens += 1
            token = str(self._tokens)
            try:
                self.process.stdin.write(f"{token} {line}\n".encode())
                self.process.stdin.flush()
            except (BrokenPipeError, OSError):
                return None
        return token

    def fork_session(self, root: Path) -> Optional[tuple]:
        """(token, pid) of a reused child forked to serve the jobs of ``root``; None when the zygote is gone."""
        token = self._send(f"{SERVE} {root}")
        deadline = time.monotonic() + SESSION_START_S
        while token is not None and time.monotonic() < deadline:
            event = self._wait(token, 0.25, "started")
            if event is None:
                break
            if "started" in event:
                return token, event["started"]
        if token is not None:
            self.forget(token)
        return None

    def forget(self, token: str) -> None:
        with self._cond:
            self._events.pop(token, None)

    def run(self, folder: Path, timeout: float, stage, what: str, abort) -> Optional[tuple]:
        token = self._send(str(folder))
        if token is None:
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

    def _wait(self, token: str, seconds: float, until: str = "exited") -> Optional[dict]:
        """The events of ``token`` once ``until`` came or ``seconds`` passed; None when the zygote closed first."""
        with self._cond:
            self._cond.wait_for(lambda: until in self._events.get(token, {}) or "closed" in self._events,
                                timeout=seconds)
            if "closed" in self._events and "exited" not in self._events.get(token, {}):
                return None
            return dict(self._events.get(token, {}))

    def close(self) -> None:
        try:
            self.process.kill()
        except OSError:
            pass


class ForkedSession:
    """A reused child forked by a zygote, with what ``deploykit.child.Session`` uses of a ``subprocess.Popen``:
    ``pid``, ``stdin`` (the jobs FIFO), ``poll()``, ``communicate()`` (after its group was killed), ``returncode``;
    and ``done_r``, the end of the "done" FIFO the session reads."""

    def __init__(self, zygote: Zygote, token: str, pid: int, jobs_w: int, done_r: int) -> None:
        self._zygote, self._token = zygote, token
        self.pid, self.done_r, self.returncode = pid, done_r, None
        self.stdin = os.fdopen(jobs_w, "wb")

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            event = self._zygote._wait(self._token, 0)
            if event is None:           # the zygote died, and its children with it (PR_SET_PDEATHSIG)
                self.returncode = -9
            elif "exited" in event:
                self.returncode = os.waitstatus_to_exitcode(event["exited"])
        return self.returncode

    def communicate(self) -> tuple:
        deadline = time.monotonic() + 10
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            self.stdin.close()
        except OSError:
            pass
        self._zygote.forget(self._token)
        return None, None


def _kill(pid: Optional[int]) -> None:
    if pid is not None:
        from deploykit.procinfo import kill_tree

        kill_tree(pid)


def _output(folder: Path) -> tuple:
    texts = []
    for name in ("stdout.log", "stderr.log"):
        try:
            texts.append((folder / name).read_text(errors="replace"))
        except OSError:
            texts.append("")
    return tuple(texts)


# ---- the zygote's side -------------------------------------------------------------------------------------------

def _preload(kind: str) -> None:
    import importlib

    for variable, value in PRELOAD_ENV.get(kind, {}).items():
        os.environ.setdefault(variable, value)
    for name in PRELOAD.get(kind, ()):
        module, _, function = name.partition(":")
        try:
            loaded = importlib.import_module(module)
            if function:
                getattr(loaded, function)()
        except Exception:  # noqa: BLE001 - a runtime that is not installed is simply imported by no child
            pass


def _idle_limit(kind: str) -> float:
    """Seconds a zygote of ``kind`` waits for a job before it ends (inf: the runners' zygote serves on)."""
    if kind == "runners":
        return float("inf")
    try:
        return float(os.environ.get(IDLE_ENV, IDLE_S))
    except ValueError:
        return IDLE_S


def _serve(kind: str) -> int:
    from deploykit import child

    child._die_with_parent()
    _preload(kind)
    me, jobs, pending = os.getpid(), {}, b""
    out = sys.stdout.buffer
    idle_limit, last_busy = _idle_limit(kind), time.monotonic()
    while True:
        ready, _, _ = select.select([0], [], [], 0.05)
        if jobs or pending:
            last_busy = time.monotonic()
        elif not ready and time.monotonic() - last_busy > idle_limit:
            return 0                    # idle: the parent's next job of this kind starts a new zygote
        if ready:
            data = os.read(0, 65536)    # raw reads: a buffered readline could hide a second job from select
            if not data:
                return 0                # the parent closed the pipe: it is gone
            pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            token, _, folder = line.decode().strip().partition(" ")
            serve = folder.startswith(SERVE + " ")
            out.flush()
            pid = os.fork()
            if pid == 0:
                where = Path(folder[len(SERVE) + 1:] if serve else folder)
                _forked(lambda: (_session_child if serve else _child)(where, me))
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


def _forked(body) -> None:
    """In the forked child: a session of its own, then ``body()`` (its exit code); never back in the zygote's loop."""
    code = 70
    try:
        os.setsid()
        code = body()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _child(folder: Path, zygote: int) -> int:
    """A forked job: output into the job folder, then the job, as deploykit.child runs it."""
    for fd, name in ((1, "stdout.log"), (2, "stderr.log")):
        os.dup2(os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    from deploykit import child

    os.environ[child.PARENT_ENV] = str(zygote)
    child._die_with_parent()
    child.RSS_AT_START = child.status_bytes("VmRSS")
    return child._child_main(folder)


def _session_child(root: Path, zygote: int) -> int:
    """A forked reused child: output appended to root/log, jobs read from the FIFO root/jobs, "done" written to
    root/done — then deploykit.child's own serving loop."""
    log = os.open(root / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for fd in (1, 2):
        os.dup2(log, fd)
    os.dup2(os.open(root / "jobs", os.O_RDONLY), 0)
    done = os.open(root / "done", os.O_WRONLY)
    from deploykit import child

    os.environ.update({child.PARENT_ENV: str(zygote), child.SESSION_ENV: str(done)})
    child._die_with_parent()
    return child._serve(root)


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
