"""In-process work under a deadline (deploykit.deadline): the value or the call's own error comes back; an
overrun is the stage's error at the deadline, and the CLI knows to end the process hard."""
import threading
import time

import pytest

from deploykit import deadline, errors
from deploykit.child import CONVERT, LOAD


def test_value_and_own_error_come_back():
    assert deadline.call_within(lambda: 42, 5, LOAD, "m.pt") == 42
    with pytest.raises(ZeroDivisionError):
        deadline.call_within(lambda: 1 / 0, 5, LOAD, "m.pt")


@pytest.mark.serial
def test_an_overrun_is_the_stages_error_at_the_deadline_and_is_remembered(monkeypatch):
    monkeypatch.setattr(deadline, "_ABANDONED", [])
    release = threading.Event()
    started = time.perf_counter()
    with pytest.raises(errors.ConversionError, match="the x converter did not finish within 0.3 s") as info:
        deadline.call_within(release.wait, 0.3, CONVERT, "x")
    assert time.perf_counter() - started < 3
    assert "--timeout" in info.value.remedy
    assert deadline.abandoned()            # the CLI must os._exit: the thread still runs
    release.set()
    deadline._ABANDONED[0].join(5)
    assert not deadline.abandoned()


def test_pending_reports_failure_without_waiting():
    gate = threading.Event()

    def work():
        gate.wait(5)
        raise ValueError("bad file")

    pending = deadline.Pending(work, name="t")
    assert pending.exception() is None and not pending.done()
    gate.set()
    with pytest.raises(ValueError):
        pending.result(5, LOAD, "m")
    assert isinstance(pending.exception(), ValueError)
