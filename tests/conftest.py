"""Shared fixtures: markers (from the registry's one package table) that skip when a heavy dependency is
missing, a guard that keeps the quick loop free of conversions, and the sample models and their exports
built once per test session, each only when a test first names it."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from deploykit.registry import test_markers  # noqa: E402 - after the path is set

_MARKER_PACKAGES = test_markers()


def _has(*packages: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


def pytest_collection_modifyitems(config, items):
    """Skip tests whose dependency is missing; CI installs everything, so nothing skips there."""
    for item in items:
        for marker, packages in _MARKER_PACKAGES.items():
            if marker in item.keywords and not _has(*packages):
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(packages)}"))
        if "gpu" in item.keywords and not _gpu_present():
            item.add_marker(pytest.mark.skip(reason="needs a GPU (none on this machine)"))


def _gpu_present() -> bool:
    from deploykit.machine import gpu_present

    return gpu_present()


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


_BUILT: set = set()


def _ensure_sample(folder: Path, file_name: str) -> None:
    from sample_models import SAMPLES
    from sample_models.build import build_sample, _resolve

    framework = folder.name.split("_samples")[0]
    if file_name == "shapes":        # the shapes images, without training the CNN that comes with them
        key = (folder, "shapes")
        if key not in _BUILT:
            _resolve("sample_models.shapes:write_images")(folder, False)
            _BUILT.add(key)
        return
    for sample in sorted(SAMPLES, key=lambda s: -len(s.name)):
        if sample.framework == framework and file_name.startswith(sample.name + "."):
            if (folder, sample.name) not in _BUILT:
                build_sample(sample, folder, force=True)
                _BUILT.add((folder, sample.name))
            return


def _build_samples(tmp_path_factory, framework: str, package: str) -> Path:
    if not _has(package):
        pytest.skip(f"needs {package}")
    return _SampleFolder(tmp_path_factory.mktemp(f"{framework}_samples"))


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    """Every PyTorch sample written once per session (TorchScript, .pt2, weights, inputs)."""
    return _build_samples(tmp_path_factory, "torch", "torch")


@pytest.fixture(scope="session")
def keras_samples_dir(tmp_path_factory) -> Path:
    """The Keras samples (.keras, .h5, inputs) written once per session."""
    return _build_samples(tmp_path_factory, "tensorflow", "tensorflow")


@pytest.fixture(scope="session")
def exported(samples_dir, tmp_path_factory) -> dict:
    """ONNX exports of the samples, keyed by source file name; built lazily, once each."""
    from deploykit import api

    folder = tmp_path_factory.mktemp("onnx")
    cache: dict = {}

    def get(source_name: str, to: str = "onnx", via: "str | None" = None, source_dir: "Path | None" = None):
        key = (source_name, to, via)
        if key not in cache:
            suffix = {"onnx": ".onnx", "tflite": ".tflite", "saved_model": "_saved_model"}[to]
            out = folder / (source_name.replace(".", "_") + f"_{via or 'default'}{suffix}")
            cache[key] = api.export(str((source_dir or samples_dir) / source_name), to, str(out), via=via)
            assert cache[key].passed
        return cache[key]

    return get


def run_cli(*args: str, cwd: "Path | None" = None, timeout: float = 600,
            extra_path: "str | None" = None) -> subprocess.CompletedProcess:
    """Run the real command in a child process: exit code, stdout and stderr as a user sees them (``extra_path``:
    a folder of the user's own modules, e.g. a model factory, on PYTHONPATH)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [extra_path, str(ROOT)])))
    return subprocess.run([sys.executable, "-m", "deploykit.cli.commands", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """A one-line `error: … — …` message, the documented exit code, and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert " — " in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
