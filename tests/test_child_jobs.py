"""Converters that can hang or crash run in a child process: each failure is a clean ConversionError."""
import pytest

from converters.child import run_job
from deploykit.errors import ConversionError


def test_a_job_returns_its_result():
    assert run_job("tests.jobs:echo_job", {"a": 1}, timeout=60)["payload"] == {"a": 1}


def test_a_hung_converter_is_stopped_at_the_timeout():
    with pytest.raises(ConversionError, match="did not finish within 2 s") as info:
        run_job("tests.jobs:sleep_job", {"seconds": 30}, timeout=2)
    assert info.value.exit_code == 4 and "--timeout" in info.value.remedy


def test_a_crashing_converter_becomes_an_error():
    with pytest.raises(ConversionError, match="crashed with SIGSEGV"):
        run_job("tests.jobs:crash_job", {}, timeout=60)


def test_a_raising_converter_reports_its_first_line():
    with pytest.raises(ConversionError, match="RuntimeError: unsupported op FancyOp"):
        run_job("tests.jobs:error_job", {}, timeout=60)
