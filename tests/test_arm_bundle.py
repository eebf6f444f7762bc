"""Bundles prove themselves on the phone's CPU (issue 28, item 5): `deploykit verify BUNDLE --runtime litert-arm64`
runs the bundle's own `python app.py selftest` in the emulated arm64 userland, with only the bundle's pinned
requirements installed as aarch64 wheels (no deploykit), and a tampered bundle still fails there."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.arm, pytest.mark.slow, pytest.mark.torch]
RUNTIME_OF = {"tflite": "litert-arm64", "onnx": "onnxruntime-arm64"}


@pytest.fixture(scope="module")
def bundles(exported, tmp_path_factory):
    """A bundle of two_layer_net per format (3 golden vectors), made once for the module."""
    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    folder = tmp_path_factory.mktemp("arm_bundles")
    made = {}
    for to in RUNTIME_OF:
        made[to] = folder / to
        api.package(exported("two_layer_net.pt2", to).artifact, str(made[to]), PackageOptions(samples=3))
    return made


def _copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    return copy


def _rehash(bundle: Path, name: str) -> None:
    """The record's sha256 of ``name`` rewritten, as someone who tampers with a bundle would."""
    record = json.loads((bundle / "deploykit-bundle.json").read_text())
    record["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "deploykit-bundle.json").write_text(json.dumps(record))


@pytest.mark.parametrize("to", ["tflite", "onnx"])
def test_bundle_selftest_passes_on_the_emulated_arm_core(bundles, to):
    from deploykit.bundle.arm_selftest import read_pins, requirements_site

    verified = run_cli("verify", str(bundles[to]), "--runtime", RUNTIME_OF[to], "--json")
    assert verified.returncode == 0, verified.stderr
    comparison = json.loads(verified.stdout)["comparisons"][0]
    assert comparison["passed"] and comparison["samples"] == 3 and "cortex-a76" in comparison["candidate"]
    assert comparison["outputs"][0]["max_abs"] < 1e-4 and comparison["outputs"][0]["cosine"] > 0.99999
    assert any("app.py selftest" in note and "aarch64 wheels" in note for note in comparison["notes"])
    # what the app ran with: the bundle's pins (and their dependencies), never deploykit or the other runtime
    pins = read_pins((bundles[to] / "requirements.txt").read_text())
    site = {p.name.lower() for p in requirements_site(pins).iterdir()}
    other = "onnxruntime" if to == "tflite" else "ai_edge_litert"
    assert "numpy" in site and "deploykit" not in site and other not in site, site


def test_a_tampered_bundle_fails_under_emulation(bundles, tmp_path):
    import onnx
    from onnx import numpy_helper

    bundle = _copy(bundles["onnx"], tmp_path)
    model = onnx.load(bundle / "model.onnx")
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight.flat[0] += 5.0                                   # one weight changed, the record rewritten to match
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, model.graph.initializer[0].name))
    onnx.save(model, bundle / "model.onnx")
    caught = run_cli("verify", str(bundle), "--runtime", "onnxruntime-arm64", "--arm-cpu", "cortex-a53")
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert "changed since packaging: model.onnx" in caught.stdout        # refused before anything ran
    _rehash(bundle, "model.onnx")
    failed = run_cli("verify", str(bundle), "--runtime", "onnxruntime-arm64", "--arm-cpu", "cortex-a53", "--json")
    assert failed.returncode == 1, failed.stderr
    comparison = json.loads(failed.stdout)["comparisons"][0]
    assert not comparison["passed"] and "cortex-a53" in comparison["candidate"]
    assert comparison["outputs"][0]["status"] == "fail" and "app.py selftest: max_abs" in comparison["outputs"][0]["reason"]


def test_a_bundle_requirement_no_bundle_needs_is_never_installed(bundles, tmp_path):
    bundle = _copy(bundles["tflite"], tmp_path)
    with open(bundle / "requirements.txt", "a") as handle:
        handle.write("--index-url https://example.invalid/simple\n")
    _rehash(bundle, "requirements.txt")
    verified = run_cli("verify", str(bundle), "--runtime", "litert-arm64", "--json")
    assert verified.returncode == 1
    problems = json.loads(verified.stdout)["comparisons"][0]["problems"]
    assert problems and problems[0].startswith("tampered: requirements.txt has '--index-url"), problems


def test_a_runtime_of_another_format_is_refused_with_one_line(bundles):
    refused = run_cli("verify", str(bundles["tflite"]), "--runtime", "onnxruntime-arm64")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("error: --runtime 'onnxruntime-arm64' does not run the bundle's model.tflite")
