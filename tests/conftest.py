"""Shared fixtures: markers (from the registry's one package table) that skip when a heavy dependency is
missing, a guard that keeps the quick loop free of conversions, and the sample models and their exports
built once per test session, each only when a test first names it."""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Two workers, each starting framework children, ask for more threads than the machine has cores. PyTorch's
# OpenMP threads then spin-wait for each other: 3 training steps took 33 s instead of 2 s beside the suite. With
# the passive wait policy an idle thread sleeps. Set before any test process starts torch (children inherit it);
# timing tests (`serial`) run without it, as a user's process would.
if "OMP_WAIT_POLICY" not in os.environ:          # a user's own setting is left alone everywhere
    os.environ.update(OMP_WAIT_POLICY="PASSIVE", DEPLOYKIT_TESTS_SET_OMP="1")    # xdist workers inherit both
_PASSIVE_SET_HERE = os.environ.get("DEPLOYKIT_TESTS_SET_OMP") == "1"
sys.path.insert(0, str(ROOT))
from deploykit.registry import test_markers  # noqa: E402 - after the path is set

_MARKER_PACKAGES = test_markers()


def _has(*packages: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


def pytest_collection_modifyitems(config, items):
    """Skip tests whose dependency is missing (CI installs everything, so nothing skips there); order the run."""
    _schedule(items)
    for item in items:
        for marker, packages in _MARKER_PACKAGES.items():
            if marker in item.keywords and not _has(*packages):
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(packages)}"))
        if "gpu" in item.keywords and not _gpu_present():
            item.add_marker(pytest.mark.skip(reason="needs a GPU (none on this machine)"))
        if "arm" in item.keywords and _arm_problem():
            item.add_marker(pytest.mark.skip(reason=f"needs the emulated ARM cores: {_arm_problem()}"))


def _gpu_present() -> bool:
    from deploykit.machine import gpu_present

    return gpu_present()


def _arm_problem() -> str:
    """Why the ARM runtimes cannot run here ("" when they can, or can once provisioned on first use)."""
    from deploykit.emulation.userland import unavailable_reason

    return unavailable_reason()


_SERIAL_LOCKS: list = []


def _serial_locks():
    """(turnstile, room) lock files shared by the workers of one xdist run; None outside xdist."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return None
    if not _SERIAL_LOCKS:
        folder = Path(tempfile.gettempdir()) / f"deploykit-tests-{run}"
        folder.mkdir(exist_ok=True)
        _SERIAL_LOCKS.extend(open(folder / name, "a+") for name in ("turnstile", "room"))
    return _SERIAL_LOCKS


def pytest_sessionfinish(session, exitstatus):
    """Close this worker's lock files and remove their folder (a worker still running keeps its open files,
    which lock the same inodes)."""
    for handle in _SERIAL_LOCKS:
        handle.close()
    if _SERIAL_LOCKS:
        shutil.rmtree(Path(_SERIAL_LOCKS[0].name).parent, ignore_errors=True)
    _SERIAL_LOCKS.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """`serial` tests (timings, time-outs, killed workers) run alone: a readers-writer lock over the workers.

    Every other test holds the room shared; a serial test holds it exclusively, so no parallel test distorts
    what it measures. The turnstile gives the writer priority: a waiting serial test stops new tests from
    entering, so it never starves behind the other worker's stream of tests. Held from setup to teardown.
    """
    serial = item.get_closest_marker("serial") is not None
    locks = _serial_locks()
    if serial and _PASSIVE_SET_HERE:   # the runtime's own thread behaviour for what a timing test measures
        os.environ.pop("OMP_WAIT_POLICY", None)
    if locks is not None:
        fcntl.flock(locks[0], fcntl.LOCK_EX)
        if not serial:
            fcntl.flock(locks[0], fcntl.LOCK_UN)
        fcntl.flock(locks[1], fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
    try:
        yield
    finally:
        if locks is not None:
            fcntl.flock(locks[1], fcntl.LOCK_UN)
            if serial:
                fcntl.flock(locks[0], fcntl.LOCK_UN)
        if serial and _PASSIVE_SET_HERE:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


# Modules whose slow tests take longest (measured with --durations on the 2-core machine), started first so that
# the two workers finish together instead of one waiting on a long test begun late.
LONGEST_FIRST = ("test_inspect_demo", "test_executorch", "test_browser", "test_quantize", "test_tflite",
                 "test_locate_routes", "test_field_models", "test_bundle")


def _schedule(items) -> None:
    """Longest work first, quick tests after it (they fill the gaps), `serial` tests last (one worker runs them
    while the other drains the rest)."""
    def key(item):
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        heavy = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
        return (item.get_closest_marker("serial") is not None, item.get_closest_marker("slow") is None, heavy)

    items.sort(key=key)


@pytest.fixture(autouse=True)
def _quick_tests_never_convert(request, monkeypatch):
    """The quick loop (`-m "not slow"`) must stay under two minutes: a test that converts must say `slow`.

    Enforced, not hoped for: outside `slow` tests every route (in-process or through the CLI) refuses to run.
    """
    from deploykit.exporting.routing import FORBID_ENV

    if "slow" not in request.keywords:
        monkeypatch.setenv(FORBID_ENV, "1")


class _SampleFolder(type(Path())):
    """A folder whose sample files are built the first time a test names one (`folder / "x.pt2"`), so that a
    test of the two-layer net never waits for the MobileNetV2 sample's training."""

    def __truediv__(self, name):
        _ensure_sample(Path(self), str(name))
        return Path(self) / name


def _shared_root(tmp_path_factory) -> Path:
    """One folder for the whole run: under pytest-xdist every worker gets its own basetemp below a shared
    parent, so exports and samples made by one worker are reused by the other."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _locked(path: Path):
    """An exclusive lock between workers (and runs) on ``path``.lock (filelock: flock on Linux)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def _sample_cache() -> Path:
    """Built samples kept across runs, keyed by what decides their bytes: the sample code, the pins, Python."""
    digest = hashlib.sha256()
    for file in sorted((ROOT / "sample_models").glob("*.py")) + [ROOT / "deploykit" / "torch_signature.py",
                                                                   ROOT / "constraints.txt"]:
        digest.update(file.name.encode() + file.read_bytes())
    digest.update(sys.version.encode())
    root = os.environ.get("DEPLOYKIT_CACHE_DIR", str(Path.home() / ".cache" / "deploykit")) or str(ROOT / ".cache")
    return Path(root) / "test-samples" / digest.hexdigest()[:16]


def _ensure_sample(folder: Path, file_name: str) -> None:
    """Copy a sample's files into the run's folder from the machine's sample cache, building them there first
    (once per machine and sample code) under a lock, so parallel workers build each sample once."""
    from sample_models import SAMPLES

    framework = folder.name.split("_samples")[0]
    wanted = "shapes" if file_name == "shapes" else next(
        (s.name for s in sorted(SAMPLES, key=lambda s: -len(s.name))
         if s.framework == framework and file_name.startswith(s.name + ".")), None)
    if wanted is None or (folder / f".copied-{wanted}").exists():
        return
    cached = _sample_cache() / framework / wanted
    with _locked(cached):
        if not (cached / ".complete").exists():
            _build_into(cached, wanted)
    with _locked(folder / f".copy-{wanted}"):
        if not (folder / f".copied-{wanted}").exists():
            shutil.copytree(cached, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
            (folder / f".copied-{wanted}").touch()


def _build_into(cached: Path, name: str) -> None:
    from sample_models import get
    from sample_models.build import _resolve, build_sample

    shutil.rmtree(cached, ignore_errors=True)
    staging = cached.with_name(cached.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if name == "shapes":          # the shapes images, without training the CNN that comes with them
        _resolve("sample_models.shapes:write_images")(staging, False)
    else:
        build_sample(get(name), staging, force=True)
    (staging / ".complete").touch()
    os.replace(staging, cached)


def _build_samples(tmp_path_factory, framework: str, package: str) -> Path:
    if not _has(package):
        pytest.skip(f"needs {package}")
    folder = _shared_root(tmp_path_factory) / f"{framework}_samples"
    folder.mkdir(exist_ok=True)
    return _SampleFolder(folder)


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    """Every PyTorch sample, copied from the machine's sample cache when a test first names it."""
    return _build_samples(tmp_path_factory, "torch", "torch")


@pytest.fixture(scope="session")
def keras_samples_dir(tmp_path_factory) -> Path:
    """The Keras samples (.keras, .h5, inputs), copied from the machine's sample cache when first named."""
    return _build_samples(tmp_path_factory, "tensorflow", "tensorflow")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """The tiny_llama sample's Hugging Face folder, copied once per run from the machine's sample cache (built there
    the first time, ~1.5 min: trained on sample_models/data, whose texts are part of its cache key)."""
    if not _has("torch", "transformers", "tokenizers", "safetensors"):
        pytest.skip("needs torch, transformers, tokenizers and safetensors")
    texts = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes()
                                    for p in sorted((ROOT / "sample_models" / "data").glob("*")))).hexdigest()[:8]
    cached = _sample_cache() / "causal_lm" / f"tiny_llama-{texts}"
    with _locked(cached):
        if not (cached / ".complete").exists():
            _build_into(cached, "tiny_llama")
    folder = _shared_root(tmp_path_factory) / "causal_lm_samples"
    with _locked(folder / ".copy-tiny_llama"):
        if not (folder / "tiny_llama").exists():          # copied whole under another name, then renamed
            staging = folder / f".tiny_llama.tmp{os.getpid()}"
            shutil.copytree(cached / "tiny_llama", staging)
            os.replace(staging, folder / "tiny_llama")
    return folder / "tiny_llama"


# The causal-LM exports the tests share: tiny_llama with a 64-token context, judged on 8 greedy tokens per prompt.
LLM_TEST_OPTIONS = dict(max_context=64, prefill_len=16, tokens=8)


@pytest.fixture(scope="session")
def llm_exported(tiny_llama_dir, tmp_path_factory):
    """``get(to, quantize=None)``: the tiny_llama sample exported to ``to`` through the API (generation oracle
    passed), once per run and shared by every test and xdist worker; returns the artifact's path."""
    from deploykit import api
    from deploykit.causal_lm import LLMOptions

    folder = _shared_root(tmp_path_factory) / "llm_exports"
    data = ROOT / "sample_models" / "data"

    def get(to: str, quantize: "str | None" = None) -> Path:
        suffix = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte"}[to]
        out = folder / f"tiny_llama{'.' + quantize if quantize else ''}{suffix}"
        with _locked(out):
            if not out.exists():
                options = LLMOptions(prompts=str(data / "prompts.txt"), text=str(data / "heldout.txt"),
                                     **LLM_TEST_OPTIONS)
                request = api.ExportRequest(str(tiny_llama_dir), to, str(out), llm=options,
                                            quantize=api.QuantizeOptions(quantize) if quantize else None)
                result = api.export(request)
                assert result.passed, result.report.summary()
        return out

    return get


def _resolved_route(source: Path, to: str, via: "str | None", mode: "str | None" = None) -> str:
    """The route an export takes first, as its edge names: `via=None`, `via="litert"` (and `via="onnx"`,
    `via="onnx2tf"`) name the same export when they select the same route, so it is made once."""
    from deploykit.exporting.routing import select_routes
    from deploykit.formats import detect
    from deploykit.registry import target_format

    return "+".join(edge.name for edge in select_routes(detect(str(source)), target_format(to), via, mode)[0])


@pytest.fixture(scope="session")
def exported(samples_dir, tmp_path_factory):
    """Exports of the samples, keyed by source, *resolved* route and target: made once per run, shared by every
    test and every xdist worker (the result is kept beside the artifact, under a file lock)."""
    from deploykit import api

    folder = _shared_root(tmp_path_factory) / "exports"
    cache: dict = {}

    def get(source_name: str, to: str = "onnx", via: "str | None" = None, source_dir: "Path | None" = None,
            int8_calibration: "str | None" = None):
        """``int8_calibration``: the int8 export calibrated on that file (one per run, like the float ones)."""
        source = (source_dir or samples_dir) / source_name
        mode = "int8" if int8_calibration else None
        key = (str(source), to, _resolved_route(source, to, via, mode), int8_calibration)
        if key not in cache:
            suffix = {"onnx": ".onnx", "tflite": ".tflite", "saved_model": "_saved_model", "executorch": ".pte",
                      "coreai": ".aimodel", "coreml": ".mlpackage"}[to]
            if int8_calibration:
                suffix = f"_int8_{hashlib.sha256(int8_calibration.encode()).hexdigest()[:8]}{suffix}"
            out = folder / (source_name.replace(".", "_") + f"_{key[2]}{suffix}")
            if source_dir is not None and source_dir != samples_dir:
                out = out.with_name(f"{Path(source_dir).name}_{out.name}")
            with _locked(out):
                stored = out.with_name(out.name + ".result.pickle")
                if stored.exists():
                    cache[key] = pickle.loads(stored.read_bytes())
                    return cache[key]
                if out.exists():     # made by a worker whose result holds a live object (a SavedModel's): redo here
                    out = out.with_name(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{out.name}")
                quantize = api.QuantizeOptions("int8", calibration=int8_calibration) if int8_calibration else None
                cache[key] = api.export(str(source), to, str(out), via=via, quantize=quantize)
                assert cache[key].passed
                assert "+".join(hop["edge"] for hop in cache[key].route) == key[2], cache[key].route
                try:
                    stored.write_bytes(pickle.dumps(cache[key]))
                except (pickle.PicklingError, AttributeError, TypeError):
                    stored.unlink(missing_ok=True)
        return cache[key]

    return get


def run_cli(*args: str, cwd: "Path | None" = None, timeout: float = 600,
            extra_path: "str | None" = None) -> subprocess.CompletedProcess:
    """Run the real command in a child process: exit code, stdout and stderr as a user sees them (``extra_path``:
    a folder of the user's own modules, e.g. a model factory, on PYTHONPATH)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [extra_path, str(ROOT)])))
    return subprocess.run([sys.executable, "-m", "deploykit.cli.commands", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.fixture
def cli(capsys, monkeypatch):
    """The command in this process (``deploykit.cli.main(argv)``): exit code, stdout and stderr as
    ``run_cli`` returns them, without a Python start-up per call. For error paths and quick commands; keep
    ``run_cli`` where the process is the point (signals, ``-P``, a time-out's abandoned thread, child death)."""
    import signal

    from deploykit.cli import main

    def invoke(*args: str, cwd: "Path | None" = None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        handler = signal.getsignal(signal.SIGTERM)
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            signal.signal(signal.SIGTERM, handler)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["deploykit", *args], code, out, err)

    return invoke


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """A one-line `error: … — …` message, the documented exit code, and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert " — " in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
