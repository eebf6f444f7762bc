"""The zygote (deploykit/zygote.py): .onnx/.tflite runner jobs forked from a process that imported the runtimes once
keep every guarantee of the child harness (tests/test_child.py proves them for children of their own)."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from deploykit import errors, zygote
from deploykit.child import CONVERT, LOAD, RUN, run_child

AS_AN_ONNX_RUN = {"model": {"format": "onnx"}}      # what makes a job forkable, besides its target


@pytest.fixture
def forkable_test_jobs(monkeypatch):
    """The tests' fault jobs (a crash, a hang, a raising job) made forkable, as a runner job of an .onnx is."""
    targets = {f"tests.jobs:{name}" for name in ("sleep_job", "crash_job", "error_job", "deploykit_error_job",
                                                 "echo_job", "spawn_grandchild_job")}
    monkeypatch.setattr(zygote, "FORKABLE_TARGETS", zygote.FORKABLE_TARGETS | targets)
    yield
    for kind in list(zygote._ZYGOTES):      # this test's fault jobs crashed or killed its zygotes on purpose
        zygote._ZYGOTES.pop(kind).close()


def _served() -> int:
    """How many jobs the current zygote has been handed (0: none running)."""
    return zygote.current()._tokens if zygote.current() is not None and zygote.current().alive() else 0


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.litert
@pytest.mark.parametrize("to", ["onnx", "tflite"])
def test_a_runner_job_is_forked_and_computes_what_a_fresh_child_does(exported, samples_dir, to, monkeypatch):
    from deploykit.artifact import Artifact

    artifact = Artifact.open(exported("two_layer_net.pt2", to).artifact)
    feeds = [{artifact.spec.inputs[0].name: np.load(samples_dir / "two_layer_net.inputs.npz")["x"]}]
    first = zygote.current()
    before = first._tokens if first is not None else 0
    forked = artifact.run(feeds)
    now = zygote.current()                                # a new one when the environment changed meanwhile
    assert now is not None and now._tokens == (before + 1 if now is first else 1)
    monkeypatch.setenv(zygote.SWITCH_ENV, "0")
    fresh = artifact.run(feeds)
    assert zygote.current() is now and now._tokens == (before + 1 if now is first else 1)     # a child of its own
    name = next(iter(forked.outputs[0]))
    assert np.array_equal(forked.outputs[0][name], fresh.outputs[0][name]) and forked.ran_on == fresh.ran_on


def test_what_is_never_forked():
    """A cold start that is measured, other formats (TensorFlow must not share a process with LiteRT's runtime),
    converters but onnx2tf and the tests' own jobs start children of their own."""
    assert zygote.forkable("deploykit.harness:run_job", AS_AN_ONNX_RUN) == "runners"
    assert zygote.forkable("deploykit.harness:capture_job", {"model": {"format": "tflite"}}) == "runners"
    assert not zygote.forkable("deploykit.harness:measure_job", AS_AN_ONNX_RUN)
    for fmt in ("saved_model", "keras", "exported_program", "torchscript", "executorch"):
        assert not zygote.forkable("deploykit.harness:run_job", {"model": {"format": fmt}})
    assert zygote.forkable("converters.onnx_to_tflite:job", {"onnx": "m.onnx"}) == "onnx2tf"
    kinds = {"tflite_to_onnx:job": "tf2onnx", "torch_to_tflite:job": "litert-torch",
             "llm_to_tflite:convert": "litert-torch",
             "torch_to_executorch:job": "executorch", "llm_to_executorch:convert": "executorch",
             "torch_to_coreai:job": "coreai", "torch_to_coreml:job": "coreml"}
    for converter, kind in kinds.items():      # one zygote per converter: never two frameworks' imports in one
        assert zygote.forkable(f"converters.{converter}", {}) == kind
    for converter in ("keras_to_tflite:job", "torch_to_onnx:export_job", "llm_to_onnx:convert"):
        assert not zygote.forkable(f"converters.{converter}", AS_AN_ONNX_RUN)
    assert not zygote.forkable("tests.jobs:crash_job", AS_AN_ONNX_RUN)
    # a command's reused child: forked from the PyTorch zygote when its first job is PyTorch's
    assert zygote.session_kind("deploykit.model:describe_job", {"format": "exported_program"}) == "torch-session"
    assert zygote.session_kind("converters.torch_to_onnx:export_job", {}) == "torch-session"
    assert zygote.session_kind("deploykit.llm.jobs:source_reference", {"source": "m"}) == "torch-session"
    for fmt in ("keras", "saved_model", "onnx", "tflite"):
        assert not zygote.session_kind("deploykit.model:describe_job", {"format": fmt})
    assert not zygote.session_kind("deploykit.readiness.jobs:probe_job", {"format": "tflite"})


def test_the_switch_turns_every_zygote_off(monkeypatch):
    monkeypatch.setenv(zygote.SWITCH_ENV, "0")
    assert not zygote.forkable("deploykit.harness:run_job", AS_AN_ONNX_RUN)
    assert not zygote.forkable("converters.torch_to_executorch:job", {})
    assert not zygote.session_kind("deploykit.model:describe_job", {"format": "exported_program"})


def test_a_forked_crash_is_the_stage_error(forkable_test_jobs):
    with pytest.raises(errors.ParityError, match="running m.onnx crashed with SIGSEGV"):
        run_child("tests.jobs:crash_job", AS_AN_ONNX_RUN, stage=RUN, what="m.onnx", timeout=60)
    assert _served() >= 1


def test_a_forked_job_sends_errors_and_arrays_back_as_a_child_does(forkable_test_jobs):
    with pytest.raises(errors.ModelLoadError) as info:
        run_child("tests.jobs:deploykit_error_job", AS_AN_ONNX_RUN, stage=CONVERT, what="x", timeout=60)
    assert (info.value.message, info.value.details) == ("the file is odd", {"where": "header"})
    with pytest.raises(errors.ConversionError, match="the tf2onnx converter failed: RuntimeError: unsupported op "
                                                      "FancyOp$"):
        run_child("tests.jobs:error_job", AS_AN_ONNX_RUN, stage=CONVERT, what="tf2onnx", timeout=60)
    answer = run_child("tests.jobs:echo_job", AS_AN_ONNX_RUN, stage=RUN, what="x", timeout=60,
                       arrays={"a": np.arange(4, dtype=np.float32)})
    assert np.array_equal(answer.arrays["a"], np.arange(4, dtype=np.float32) * 2)


@pytest.mark.serial
def test_a_forked_time_out_kills_the_job_and_its_grandchildren_and_the_zygote_serves_on(forkable_test_jobs,
                                                                                        tmp_path):
    pid_file = tmp_path / "pid"
    started = time.perf_counter()
    with pytest.raises(errors.ModelLoadError, match="loading m.tflite did not finish within 2 s"):
        run_child("tests.jobs:spawn_grandchild_job", dict(AS_AN_ONNX_RUN, pid_file=str(pid_file)), stage=LOAD,
                  what="m.tflite", timeout=2)
    assert time.perf_counter() - started < 10
    grandchild = int(pid_file.read_text())
    assert _gone(grandchild), "the grandchild survived the time-out"
    served = _served()
    assert run_child("tests.jobs:echo_job", AS_AN_ONNX_RUN, stage=RUN, what="x", timeout=60).info["tool"] == "echo"
    assert _served() == served + 1


@pytest.mark.serial
def test_a_forked_job_dies_with_the_zygote(forkable_test_jobs):
    """The zygote dies (killed, or with the parent that started it): the job it forked dies too, and the waiting
    caller learns it at once rather than at the time-out."""
    run_child("tests.jobs:echo_job", AS_AN_ONNX_RUN, stage=RUN, what="x", timeout=60)
    outcome = []

    def wait_for_a_sleeper():
        try:
            run_child("tests.jobs:sleep_job", dict(AS_AN_ONNX_RUN, seconds=60), stage=RUN, what="m.onnx", timeout=120)
        except errors.DeploykitError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_a_sleeper, daemon=True)
    waiter.start()
    time.sleep(1.5)
    from deploykit.procinfo import descendants

    jobs = descendants(zygote.current().process.pid)
    assert jobs, "the sleeper was not forked"
    started = time.perf_counter()
    zygote.current().process.kill()
    waiter.join(15)
    assert not waiter.is_alive() and time.perf_counter() - started < 10
    assert isinstance(outcome[0], errors.ParityError)
    assert all(_gone(pid) for pid in jobs)


def test_a_changed_environment_gets_a_zygote_of_its_own(forkable_test_jobs, monkeypatch):
    """The children's environment is the zygote's: a variable set later (a test's, a factory folder on PYTHONPATH)
    starts a new one rather than running the job with the old environment."""
    run_child("tests.jobs:echo_job", AS_AN_ONNX_RUN, stage=RUN, what="x", timeout=60)
    first = zygote.current().process.pid
    monkeypatch.setenv("DEPLOYKIT_TEST_MARKER", "1")
    run_child("tests.jobs:echo_job", AS_AN_ONNX_RUN, stage=RUN, what="x", timeout=60)
    assert zygote.current().process.pid != first and _gone(first)


def _gone(pid: int) -> bool:
    for _ in range(50):
        try:
            os.kill(pid, 0)
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("kind, to, suffix", [
    pytest.param("torch-session", "onnx", ".onnx", marks=pytest.mark.onnxruntime),
    pytest.param("onnx2tf", "tflite", ".tflite", marks=pytest.mark.tensorflow),
    pytest.param("litert-torch", "tflite", ".tflite", marks=pytest.mark.litert),
    pytest.param("executorch", "executorch", ".pte", marks=pytest.mark.executorch)])
def test_a_conversion_is_forked_and_writes_the_bytes_a_fresh_child_writes(exported, samples_dir, tmp_path,
                                                                          monkeypatch, kind, to, suffix):
    """torch.onnx (in the command's reused child), onnx2tf, litert-torch and ExecuTorch's exporter run in a child
    forked after their imports: the same file, byte for byte, as a child of its own writes."""
    from deploykit import api

    source = (exported("two_layer_net.pt2", "onnx").artifact if kind == "onnx2tf"
              else str(samples_dir / "two_layer_net.pt2"))
    if kind in zygote._ZYGOTES:        # an earlier test's: this export's conversion must be what it serves
        zygote._ZYGOTES.pop(kind).close()
    forked = api.export(source, to, str(tmp_path / f"forked{suffix}"))
    assert zygote.current(kind) is not None and zygote.current(kind)._tokens >= 1
    assert [hop["edge"] for hop in forked.route][-1] == {
        "torch-session": "torch_to_onnx", "onnx2tf": "onnx_to_tflite", "litert-torch": "torch_to_tflite",
        "executorch": "torch_to_executorch"}[kind]
    monkeypatch.setenv(zygote.SWITCH_ENV, "0")
    fresh = api.export(source, to, str(tmp_path / f"fresh{suffix}"))
    assert forked.passed and fresh.passed
    assert (tmp_path / f"forked{suffix}").read_bytes() == (tmp_path / f"fresh{suffix}").read_bytes()


def test_an_idle_converter_zygote_ends_and_the_next_conversion_starts_another(monkeypatch):
    """A converter's zygote holds its framework's memory: after IDLE_S without a job it ends, and the next job of its
    kind is served by a new one (the runners' zygote serves on)."""
    monkeypatch.setattr(zygote, "CONVERTER_KINDS", {"tests.jobs:echo_job": "idle-test"})
    monkeypatch.setenv(zygote.IDLE_ENV, "0.5")
    try:
        first = run_child("tests.jobs:echo_job", {"n": 1}, stage=CONVERT, what="x", timeout=60)
        pid = zygote.current("idle-test").process.pid
        assert first.info["request"] == {"n": 1} and _gone(pid)
        again = run_child("tests.jobs:echo_job", {"n": 2}, stage=CONVERT, what="x", timeout=60)
        assert again.info["request"] == {"n": 2}
        assert zygote.current("idle-test").process.pid != pid and zygote.current("idle-test")._tokens == 1
    finally:
        zygote._ZYGOTES.pop("idle-test").close()


def test_a_variable_that_changes_with_every_test_keeps_the_zygote(forkable_test_jobs, monkeypatch):
    """pytest names the running test in PYTEST_CURRENT_TEST: keyed on it, each test would start its own zygote."""
    run_child("tests.jobs:echo_job", AS_AN_ONNX_RUN, stage=RUN, what="x", timeout=60)
    first = zygote.current().process.pid
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_zygote.py::another (call)")
    run_child("tests.jobs:echo_job", AS_AN_ONNX_RUN, stage=RUN, what="x", timeout=60)
    assert zygote.current().process.pid == first
