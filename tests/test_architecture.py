"""The architecture is checked, not described: import-linter contracts, every core module in a layer,
test markers from the registry's one package table, and one child-process launcher."""
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploykit import registry
from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


CONTRACTS = PYPROJECT["tool"]["importlinter"]["contracts"]
LINT = Path(sys.executable).parent / "lint-imports"

# One planted import per contract: (file to append to, the import that breaks exactly that contract).
PLANTS = {
    "layers": ("deploykit/formats.py", "deploykit.api"),
    "inside-matrix": ("deploykit/matrix/store.py", "deploykit.matrix.run"),
    "inside-cli": ("deploykit/cli/support.py", "deploykit.cli.commands"),
    "inside-exporting": ("deploykit/exporting/calibration.py", "deploykit.exporting.pipeline"),
    "inside-checking": ("deploykit/checking/locate.py", "deploykit.checking.checker"),
    "inside-benchmark": ("deploykit/benchmark/report.py", "deploykit.benchmark.cases"),
    "inside-bundle": ("deploykit/bundle/web.py", "deploykit.bundle.packaging"),
    "inside-demo": ("deploykit/demo/seed_story.py", "deploykit.demo.run"),
    "inside-transforms": ("deploykit/transforms/onnx_rewrites.py", "deploykit.transforms.onnx_prep"),
    "inside-emulation": ("deploykit/emulation/cores.py", "deploykit.emulation.userland"),
    "inside-llm": ("deploykit/llm/session.py", "deploykit.llm.oracle"),
    "inside-readiness": ("deploykit/readiness/report.py", "deploykit.readiness.printing"),
    "plugins": ("converters/torch_to_onnx.py", "deploykit.exporting.pipeline"),
    # Indirect: the core reaching a runtime through sample_models (what allow_indirect_imports once hid).
    "registry-strings": ("sample_models/build.py", "runtimes.torch_eager"),
    "samples-entry": ("deploykit/exporting/pipeline.py", "sample_models.build"),
    "plugins-independent": ("runtimes/litert.py", "converters.onnx_to_tflite"),
    "one-edge": ("converters/torch_to_onnx.py", "converters.onnx_quantize"),
    "one-runtime": ("runtimes/litert.py", "runtimes.onnxruntime"),
}


def _lint(root: Path, *contract: str) -> subprocess.CompletedProcess:
    args = [a for c in contract for a in ("--contract", c)]
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", *args], capture_output=True, text=True, cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_import_linter_contracts_are_kept():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_every_contract_has_a_planted_violation():
    assert set(PLANTS) == {c["id"] for c in CONTRACTS}


@pytest.mark.parametrize("contract", sorted(PLANTS))
def test_each_contract_catches_its_planted_import(contract, tmp_path):
    """A contract that nothing can break proves nothing: plant one import against it in a copy of the tree."""
    for folder in ("deploykit", "converters", "runtimes", "sample_models"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "web"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert _lint(tmp_path, contract).returncode == 0
    where, target = PLANTS[contract]
    with open(tmp_path / where, "a") as handle:
        handle.write(f"\nimport {target}  # planted\n")
    proc = _lint(tmp_path, contract)
    assert proc.returncode == 1 and "1 broken" in proc.stdout, proc.stdout[-2000:]
    assert target in proc.stdout, proc.stdout[-2000:]


def _layer_names(contract_id: str) -> set:
    layers = next(c for c in CONTRACTS if c["id"] == contract_id)["layers"]
    return {m.strip() for layer in layers for m in re.split(r"[:|]", layer)}


def test_every_core_module_sits_in_a_layer():
    """A new module or feature must be given its place in the layers, so that a contract covers it."""
    core = ROOT / "deploykit"
    top = {f"deploykit.{p.stem}" for p in core.glob("*.py") if p.stem != "__init__"}
    features = {f"deploykit.{p.parent.name}" for p in core.glob("*/__init__.py")}
    named = _layer_names("layers")
    assert (top | features) - named == set(), "add these modules to a layer in pyproject.toml"
    assert named - (top | features) == set(), "these layer entries name no module"
    for feature in features:
        package = feature.split(".")[1]
        inner = {p.stem for p in (core / package).glob("*.py") if p.stem not in ("__init__", "__main__")}
        assert inner == _layer_names(f"inside-{package}"), f"give every module of {feature} its layer"


def test_no_feature_package_shadows_a_public_function():
    """``import deploykit.bench`` once rebound ``deploykit.bench`` (the API function) to the module."""
    import deploykit

    submodules = {p.stem for p in (ROOT / "deploykit").glob("*.py")} | \
        {p.parent.name for p in (ROOT / "deploykit").glob("*/__init__.py")}
    assert submodules & set(deploykit.__all__) == set()


def test_markers_come_from_the_registry_table():
    declared = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    assert declared == set(registry.test_markers()) | {"slow", "gpu", "serial", "arm"}
    assert "--strict-markers" in PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"]


def test_core_modules_import_no_framework_at_module_level():
    heavy = "|".join(registry.heavy_modules())
    pattern = re.compile(rf"^(import|from) ({heavy})\b", re.M)
    offenders = [str(p) for p in (ROOT / "deploykit").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_registry_targets_resolve_to_documented_callables():
    """Every edge and runtime string names a module and attribute that exist, with a docstring on the module."""
    import importlib.util

    for target in [e.target for e in registry.EDGES] + [r.target for r in registry.RUNTIMES] + \
            [entry.target for entry in registry.LOADERS]:
        module, _, attribute = target.partition(":")
        spec = importlib.util.find_spec(module)
        assert spec is not None, target
        source = Path(spec.origin).read_text()
        assert source.lstrip().startswith('"""'), f"{module} has no module docstring"
        assert re.search(rf"^(def|class) {attribute}\b", source, re.M), target
