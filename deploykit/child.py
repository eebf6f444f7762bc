"""The one child-process harness: every child deploykit starts begins here.

Converter jobs (onnx2tf, litert-torch, tf2onnx), runs of an artifact on feeds, benchmark
cases, FLOP counts and the description of a file a runtime could crash on all run as

    run_child("package.module:function", request, arrays=..., timeout=..., stage=RUN, what="m.tflite")

and come back as a ChildResult (JSON info + numpy arrays). Why a child at all: a runtime can
segfault on a bad file, a converter can hang or flood the terminal, and a benchmark must own
its process (import cost, peak memory). What the harness guarantees, for every caller alike:

* a DeploykitError raised in the child is raised in the parent as the same class, with its
  message, remedy, details and outcome;
* any other exception, a crash (signal) or a time-out becomes the *stage's* error — loading
  (exit 2), converting (exit 4), running (exit 1) or measuring — with a remedy that names the
  stage's own option (``--timeout``) and never an option that makes no sense there;
* the child never sees the working directory on ``sys.path`` (``python -P``), so a folder
  holding ``numpy.py`` or ``runtimes/`` cannot inject code; the parent's own code root is
  put on PYTHONPATH instead;
* the child and anything it starts run in their own process group, killed as a whole on a time-out or an interrupt;
* its stdout/stderr are kept out of the user's terminal (shown with ``debug``);
* .onnx/.tflite runner jobs, converters' one-shot jobs and a PyTorch source's reused child are forked from warm
  zygotes that imported the runtimes, the converter or PyTorch once (``deploykit.zygote``).

A ``reuse=True`` job (describing a PyTorch or Keras source, its reference outputs, a converter
that needs the live module) runs in the command's *reused child* while one is open (``with
reused_child():``, entered around each CLI command and export): one child that keeps what earlier
jobs loaded, so a .pt2 is deserialized once per command. Same guarantees; a crash or time-out ends
that child (the next job starts a fresh one). With none open, the job gets a child of its own.

A job is ``def job(request: dict, arrays: dict[str, np.ndarray]) -> dict``; a returned dict
may carry an ``"arrays"`` entry (name -> ndarray) that travels back as .npz, exactly.
This module imports no numpy at module level: a benchmark child reads its memory baseline
before anything heavy is imported, and numpy is imported only when arrays travel.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

from deploykit import errors, frameworks, zygote
from deploykit.errors import Outcome
from deploykit.procinfo import descendants, kill_tree, status_bytes  # noqa: F401 - part of this module's API
from deploykit.text import exception_line, last_line

IN_CHILD_ENV = "DEPLOYKIT_CHILD"        # set in every child: code that would isolate itself need not
PARENT_ENV = "DEPLOYKIT_PARENT_PID"     # the pid that started the child: it dies with that process
DEBUG_ENV = "DEPLOYKIT_DEBUG"           # set by --debug: every child's output is shown, whichever command ran it
SESSION_ENV = "DEPLOYKIT_SESSION_FD"    # set in a reused child: the descriptor on which it says "job done"
POLL_S = 0.25                           # how often an `abort` callback is asked while a child runs
RSS_AT_START: Optional[int] = None     # the child's resident memory before its job imported anything


@dataclass(frozen=True)
class Stage:
    """What a child does, and how its failures read: the error class, the words, the remedies."""

    name: str
    error: type
    subject: str            # "{what}" is filled in: "loading m.tflite", "the onnx2tf converter"
    timeout_remedy: str
    failure_remedy: str
    outcome: Optional[Outcome] = None

    def describe(self, what: str) -> str:
        return self.subject.format(what=what)


LOAD = Stage("load", errors.ModelLoadError, "loading {what}",
             "raise --timeout if the model is just large; a small file that never loads is damaged or loops",
             "the file is corrupt or hits a bug in the runtime; --debug shows the runtime's log",
             Outcome.ARTIFACT_LOAD_FAILED)
CONVERT = Stage("convert", errors.ConversionError, "the {what} converter",
                "raise --timeout, or try another route with --via",
                "run with --debug for the converter's log, or try another route with --via",
                Outcome.CONVERT_FAILED)
RUN = Stage("run", errors.ParityError, "running {what}",
            "raise --timeout, or check the model for a hang",
            "the artifact is broken or hits a runtime bug; run with --debug for its log",
            Outcome.ARTIFACT_RUN_FAILED)
MEASURE = Stage("measure", errors.MeasurementError, "measuring {what}",
                "raise --timeout, or lower --iterations / --seconds",
                "run with --debug for the runtime's log")


@dataclass(frozen=True)
class Interpreter:
    """Another Python to run a child in — an arm64 one under qemu (``deploykit.emulation.userland``).

    ``argv`` starts it (``-P -m deploykit.child JOB`` is appended); ``env`` is its whole environment, with
    deploykit's code root added to its PYTHONPATH and a scratch HOME inside the job's folder: nothing of the
    host's Python (site-packages, virtualenv, PYTHONPATH) may reach a foreign interpreter."""

    argv: tuple
    env: Mapping
    label: str = ""
    cpu: str = ""


@dataclass
class ChildResult:
    """What a job returned (JSON-able info) and the arrays it sent back."""

    info: dict
    arrays: dict = field(default_factory=dict)
    seconds: float = 0.0


def run_child(target: str, request: dict, *, stage: Stage, what: str, timeout: float,
              arrays: Optional[Mapping] = None, debug: bool = False,
              abort: Optional[Callable[[], Optional[BaseException]]] = None, reuse: bool = False,
              interpreter: Optional[Interpreter] = None) -> ChildResult:
    """Run ``target`` (``module:function``) in a fresh Python process and return its result.

    Raises the child's own DeploykitError, or ``stage.error`` for a crash, a time-out or any
    other exception in the child. ``timeout`` is in seconds (finite, > 0). ``abort`` is polled
    while the child runs: when it returns an exception (the source's load failed meanwhile, say),
    the child is stopped and that exception raised, rather than waiting for work that is moot.
    ``reuse=True``: run in the command's reused child when one is open (see the module's docstring).
    ``interpreter``: run in that Python (an emulated arm64 one) rather than this one; never reused.
    """
    check_timeout(timeout)
    failure = abort() if abort else None
    if failure is not None:       # moot before it starts (the source it would load failed to load)
        raise failure
    session = _ACTIVE if reuse and interpreter is None else None
    if session is not None:
        return session.call(target, request, stage=stage, what=what, timeout=timeout, arrays=arrays, debug=debug,
                            abort=abort)
    with tempfile.TemporaryDirectory(prefix="deploykit-child-") as tmp:
        folder = Path(tmp)
        _write_request(folder, target, request, arrays)
        started = time.perf_counter()
        forked = None if interpreter else zygote.run(target, request, folder, _child_env(), timeout, stage, what, abort)
        returncode, stdout, stderr = forked or _launch(folder, timeout, stage, what, abort, interpreter)
        seconds = time.perf_counter() - started
        if debug or os.environ.get(DEBUG_ENV):
            sys.stderr.write(stdout + stderr)
        return _collect(folder, returncode, stderr, stage, what, seconds)


def _write_request(folder: Path, target: str, request: dict, arrays: Optional[Mapping]) -> None:
    envelope = {"target": target, "request": request, "arrays": bool(arrays), "spawned_at": time.time()}
    (folder / "request.json").write_text(json.dumps(envelope, default=str))
    if arrays:
        _save_arrays(folder / "arrays.npz", arrays)


def _collect(folder: Path, returncode, stderr: str, stage: Stage, what: str, seconds: float) -> ChildResult:
    """The job's result from its folder, or the error it (or its death) stands for."""
    if (folder / "error.json").exists():
        error = _child_error(json.loads((folder / "error.json").read_text()), stage, what)
        raise errors.exhaustion(error.message, stage.describe(what)) or error
    if not (folder / "result.json").exists():
        raise errors.exhaustion(stderr[-4000:], stage.describe(what)) or stage.error(
            f"{stage.describe(what)} {_describe_exit(returncode)}: {last_line(stderr)}", stage.failure_remedy,
            outcome=stage.outcome)
    info = json.loads((folder / "result.json").read_text())
    returned = _load_arrays(folder / "result.npz") if (folder / "result.npz").exists() else {}
    return ChildResult(info, returned, seconds)


def check_timeout(value, option: str = "--timeout") -> None:
    """A time limit must be a finite number of seconds above zero (UsageError, exit 2, otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise errors.UsageError(f"{option} must be a positive number of seconds (got {value!r})", f"e.g. {option} 600")


def code_root() -> str:
    """The folder that holds the deploykit, converters and runtimes packages."""
    return str(Path(__file__).resolve().parents[1])


def _child_env() -> dict:
    extra = (code_root(), *frameworks.caller_import_paths(), os.environ.get("PYTHONPATH", ""))   # not the cwd
    pythonpath = os.pathsep.join(dict.fromkeys(p for p in extra if p))
    env = {k: v for k, v in os.environ.items() if k != SESSION_ENV}     # a reused child's own children are not
    return dict(env, PYTHONPATH=pythonpath, **{IN_CHILD_ENV: "1", PARENT_ENV: str(os.getpid())})


def _launch(folder: Path, timeout: float, stage: Stage, what: str, abort=None,
            interpreter: Optional[Interpreter] = None) -> tuple:
    # -P: the working directory is not put on sys.path, so nothing in it is imported by accident.
    if interpreter is None:
        argv, env = [sys.executable], _child_env()
    else:
        argv, env = list(interpreter.argv), _foreign_env(interpreter, folder)
    return _wait([*argv, "-P", "-m", "deploykit.child", str(folder)], env, None, timeout, stage, what, abort)


def _foreign_env(interpreter: Interpreter, folder: Path) -> dict:
    home = folder / "home"      # ONNX Runtime writes under ~/.cache: a scratch one, gone with the job
    home.mkdir()
    own = {k: v for k, v in os.environ.items() if k.startswith("DEPLOYKIT_") and k != SESSION_ENV}
    pythonpath = os.pathsep.join(p for p in (interpreter.env.get("PYTHONPATH", ""), code_root()) if p)
    return {**own, **interpreter.env, "PYTHONPATH": pythonpath, "HOME": str(home),
            IN_CHILD_ENV: "1", PARENT_ENV: str(os.getpid())}


def run_tool(argv: list, *, cwd: Path, timeout: float, what: str, stage: Optional[Stage] = None,
             env: Optional[Mapping] = None, remedy: str = "check that the npm registry is reachable, then run again"
             ) -> str:
    """Run an external tool (``npm ci``, ``apt-get download``) with the children's guarantees: its own process
    group, killed as a whole on a time-out or interrupt, output kept out of the terminal. Returns its stdout; a
    non-zero exit is ``stage.error`` (LOAD by default) with the tool's last line and ``remedy``."""
    stage = stage or LOAD
    returncode, stdout, stderr = _wait(argv, dict(env if env is not None else os.environ), cwd, timeout, stage, what)
    if returncode != 0:
        raise errors.exhaustion(stderr[-4000:], what) or stage.error(
            f"{what} {_describe_exit(returncode)}: {last_line(stderr) or last_line(stdout)}", remedy,
            outcome=stage.outcome)
    return stdout


def _wait(argv: list, env: dict, cwd, timeout: float, stage: Stage, what: str, abort=None) -> tuple:
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                # Short waits when there is something to poll; communicate() may be called again after a time-out.
                step = min(POLL_S, deadline - time.monotonic()) if abort else deadline - time.monotonic()
                stdout, stderr = process.communicate(timeout=max(step, 0.001))
                return process.returncode, stdout, stderr
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    _kill_group(process)
                    raise stage.error(f"{stage.describe(what)} did not finish within {timeout:g} s",
                                      stage.timeout_remedy, outcome=stage.outcome) from None
                failure = abort() if abort else None
                if failure is not None:
                    _kill_group(process)
                    raise failure from None
    except BaseException:
        _kill_group(process)     # Ctrl-C or SIGTERM in the parent: no orphan keeps converting
        raise


def _kill_group(process: subprocess.Popen) -> None:
    kill_tree(process.pid)
    process.communicate()


class Session:
    """One child that runs a command's ``reuse=True`` jobs in turn, keeping what they loaded.

    Jobs travel as folders (request.json / result.json, as for a one-shot child), named on the child's
    stdin; it answers on a pipe of its own, so a job's output (into a log file) never mixes with that.
    It is started from a thread that lives as long as the child: PR_SET_PDEATHSIG fires when the
    *thread* that started a process ends, and the first job may come from a short-lived thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="deploykit-session-"))
        self._process: Optional[subprocess.Popen] = None
        self._done_r, self._jobs, self._closed = -1, 0, False

    def call(self, target: str, request: dict, *, stage: Stage, what: str, timeout: float,
             arrays: Optional[Mapping] = None, debug: bool = False, abort=None) -> ChildResult:
        """run_child's contract, in this session's child (started now if it is not running)."""
        with self._lock:
            if self._closed:          # a job from another thread after the command ended (SIGTERM): never starts
                raise stage.error(f"{stage.describe(what)} was stopped: the command ended", stage.failure_remedy)
            if self._process is None:
                self._start(target, request)
            self._jobs += 1
            (folder := self._root / f"job{self._jobs}").mkdir()
            _write_request(folder, target, request, arrays)
            offset = (log := self._root / "log").stat().st_size
            started = time.perf_counter()
            try:
                finished = self._await(folder.name, timeout, stage, what, abort)
            except BaseException:
                self._stop()        # a time-out, an abort, Ctrl-C or SIGTERM: the child's group dies with it
                raise
            returncode = None if finished else self._stop()
            output = log.read_bytes()[offset:].decode(errors="replace")
            if debug or os.environ.get(DEBUG_ENV):
                sys.stderr.write(output)
            try:
                return _collect(folder, returncode, output, stage, what, time.perf_counter() - started)
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def _start(self, target: str, request: dict) -> None:
        forked = zygote.start_session(target, request, self._root, _child_env())    # torch imported once a process
        if forked is not None:
            self._process, self._done_r = forked, forked.done_r
            return
        done_r, done_w = os.pipe()
        started, box = threading.Event(), {}
        env = dict(_child_env(), **{SESSION_ENV: str(done_w)})
        argv = [sys.executable, "-P", "-m", "deploykit.child", "--serve", str(self._root)]

        def keeper() -> None:
            try:
                with open(self._root / "log", "ab") as log:
                    box["process"] = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=log, stderr=log,
                                                      pass_fds=(done_w,), start_new_session=True)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                box["error"] = exc
            started.set()
            if "process" in box:
                box["process"].wait()

        threading.Thread(target=keeper, name="deploykit-reused-child", daemon=True).start()
        started.wait()
        os.close(done_w)
        if "error" in box:
            os.close(done_r)
            raise box["error"]
        self._process, self._done_r = box["process"], done_r

    def _await(self, name: str, timeout: float, stage: Stage, what: str, abort) -> bool:
        """True when the child says the job is done, False when it died first; raises on a time-out or abort."""
        try:
            self._process.stdin.write(f"{name}\n".encode())
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise stage.error(f"{stage.describe(what)} did not finish within {timeout:g} s", stage.timeout_remedy,
                                  outcome=stage.outcome)
            ready, _, _ = select.select([self._done_r], [], [], min(POLL_S, left))
            if ready:
                return bool(os.read(self._done_r, 64))      # b"": the child is gone
            if self._process.poll() is not None:            # gone before it held its end of the pipe open
                return False
            if self._closed:          # the command ended (SIGTERM) while this job, from another thread, ran
                raise stage.error(f"{stage.describe(what)} was stopped: the command ended", stage.failure_remedy)
            failure = abort() if abort else None
            if failure is not None:
                raise failure

    def _stop(self) -> Optional[int]:
        """Kill the child's group (nothing of it outlives the session) and return its exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        _kill_group(process)
        os.close(self._done_r)
        return process.returncode

    def close(self) -> None:
        """End the child and remove the session's folder. The child is killed before the lock is taken: a job in
        flight in another thread (a source loading in the background when SIGTERM came) returns at once."""
        self._closed, process = True, self._process
        if process is not None:
            _kill_group(process)
        with self._lock:
            self._stop()
            shutil.rmtree(self._root, ignore_errors=True)


_ACTIVE: Optional[Session] = None       # the command's reused child while reused_child() is entered


@contextlib.contextmanager
def reused_child():
    """Open the command's reused child for ``reuse=True`` jobs, killed when the block is left (nested: a no-op)."""
    global _ACTIVE
    if _ACTIVE is not None or in_child():
        yield _ACTIVE
        return
    session = _ACTIVE = Session()
    try:
        yield session
    finally:
        _ACTIVE = None
        session.close()


def _describe_exit(code: int) -> str:
    if code is not None and code < 0:
        try:
            return f"crashed with {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code} and no result"


def _child_error(data: dict, stage: Stage, what: str) -> errors.DeploykitError:
    if data.get("error"):
        error = errors.from_dict(data)
        if error.outcome is None:
            error.outcome = stage.outcome
        return error
    return stage.error(f"{stage.describe(what)} failed: {data.get('message', '?')}", stage.failure_remedy,
                       outcome=stage.outcome)


def _save_arrays(path: Path, arrays: Mapping) -> None:
    import numpy as np

    np.savez(path, **dict(arrays))


def _load_arrays(path: Path) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def pack_samples(samples: list) -> dict:
    """[{name: array}, ...] -> {"i::name": array}: a list of feeds as one flat .npz mapping."""
    return {f"{index}::{name}": value for index, sample in enumerate(samples) for name, value in sample.items()}


def unpack_samples(arrays: Mapping, count: Optional[int] = None) -> list:
    """The inverse of pack_samples (sample order and names kept)."""
    samples: dict = {}
    for key, value in arrays.items():
        index, _, name = key.partition("::")
        samples.setdefault(int(index), {})[name] = value
    total = count if count is not None else (max(samples) + 1 if samples else 0)
    return [samples.get(i, {}) for i in range(total)]


def in_child() -> bool:
    """True inside a process started by run_child (already isolated from the CLI)."""
    return os.environ.get(IN_CHILD_ENV) == "1"


def _child_main(folder: Path) -> int:
    """Child side: run the job, write result.json (+ result.npz) or error.json."""
    envelope = json.loads((folder / "request.json").read_text())
    request = dict(envelope["request"], _spawned_at=envelope["spawned_at"], _rss_at_start=RSS_AT_START)
    try:
        from deploykit.registry import resolve

        arrays = _load_arrays(folder / "arrays.npz") if envelope["arrays"] else {}
        result = resolve(envelope["target"])(request, arrays) or {}
        returned = result.pop("arrays", None)
        if returned:
            _save_arrays(folder / "result.npz", returned)
        (folder / "result.json").write_text(json.dumps(result, default=str))
        return 0
    except errors.DeploykitError as exc:
        (folder / "error.json").write_text(json.dumps({**exc.to_dict(), "details": exc.details}, default=str))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - any failure of a job is reported to the parent, as text
        (folder / "error.json").write_text(json.dumps({"error": None, "message": exception_line(exc)}))
        return 1


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when the process that started it dies (a matrix worker killed with
    SIGKILL leaves no converter running on). Set here, after exec, because a preexec_fn is unsafe in a parent
    that runs children from several threads."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)       # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.environ.get(PARENT_ENV) and os.getppid() != int(os.environ[PARENT_ENV]):
        os._exit(1)                         # the parent died before the line above: nobody waits for a result


def _serve(root: Path) -> int:
    """Child side of a Session: run each job folder named on stdin, say "done" on the session's pipe."""
    done = int(os.environ[SESSION_ENV])
    for line in sys.stdin:
        if line.strip():
            _child_main(root / line.strip())
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(done, b"done\n")
    return 0


def in_session() -> bool:
    """True inside a reused child: what a job loads may serve the command's later jobs."""
    return bool(os.environ.get(SESSION_ENV))


if __name__ == "__main__":
    RSS_AT_START = status_bytes("VmRSS")
    _die_with_parent()
    sys.exit(_serve(Path(sys.argv[2])) if sys.argv[1] == "--serve" else _child_main(Path(sys.argv[1])))
