"""In-process work under the same time limit as a child: loading and probing a model, an in-process converter.

Most untrusted work runs in a child (``deploykit.child``), which can be killed — PyTorch and TensorFlow
sources included, with the converters that need their live object. What stays here is small: an ONNX
file's signature read with the onnx package, and a library's own call that the caller chooses to bound
(a scripted ``while True`` would hang the CLI beyond ``--timeout``, and even SIGTERM waits for the main
thread to come back to Python). So that work runs in a daemon thread and the caller waits for it with a
deadline. A Python thread cannot be killed: one
that overruns is *abandoned* — it keeps its CPU until the process ends — and the CLI ends the process
with ``os._exit`` when :func:`abandoned` says so (a normal exit would wait for the thread forever).
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

_ABANDONED: list = []        # threads that overran their deadline and still run


class Pending:
    """A call running in a daemon thread; :meth:`result` waits for it under a deadline."""

    def __init__(self, work: Callable[[], object], name: str):
        self._done = threading.Event()
        self._value: object = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._work, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _work(self, work: Callable[[], object]) -> None:
        try:
            self._value = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller as is
            self._error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def exception(self) -> Optional[BaseException]:
        """The call's error once it has failed, else None (never waits)."""
        return self._error if self._done.is_set() else None

    def result(self, timeout: float, stage, what: str):
        """The call's value, or its own exception; ``stage.error`` when it has not finished after
        ``timeout`` seconds (the thread is then abandoned)."""
        try:
            finished = self._done.wait(timeout)
        except BaseException:          # Ctrl-C / SIGTERM while waiting: the thread runs on, unstoppable
            _ABANDONED.append(self._thread)
            raise
        if not finished:
            _ABANDONED.append(self._thread)
            raise stage.error(f"{stage.describe(what)} did not finish within {timeout:g} s", stage.timeout_remedy,
                              outcome=stage.outcome)
        if self._error is not None:
            raise self._error
        return self._value


def call_within(work: Callable[[], object], timeout: float, stage, what: str):
    """Run ``work()`` in this process, raising ``stage.error`` if it takes longer than ``timeout`` seconds."""
    return Pending(work, name=f"deploykit-{stage.name}").result(timeout, stage, what)


def abandoned() -> bool:
    """True when a call overran its deadline and its thread still runs: exit with os._exit, not sys.exit."""
    return any(thread.is_alive() for thread in _ABANDONED)
