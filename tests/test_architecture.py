"""The architecture is checked, not described: import-linter contracts, every core module in a layer,
test markers from the registry's one package table, and one child-process launcher."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from deploykit import registry
from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"Contracts: 5 kept, 0 broken", proc.stdout), proc.stdout[-2000:]


def test_every_core_module_sits_in_a_layer():
    """A new module must be given its place in the layers, so that the contract covers it."""
    layers = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.split(":")}
    modules = {f"deploykit.{p.stem}" for p in (ROOT / "deploykit").glob("*.py") if p.stem != "__init__"}
    assert modules - named == set(), "add these modules to a layer in pyproject.toml"
    assert named - modules == set(), "these layer entries name no module"


def test_markers_come_from_the_registry_table():
    declared = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    assert declared == set(registry.test_markers()) | {"slow", "gpu"}
    assert "--strict-markers" in PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"]


def test_core_modules_import_no_framework_at_module_level():
    heavy = "|".join(registry.heavy_modules())
    pattern = re.compile(rf"^(import|from) ({heavy})\b", re.M)
    offenders = [p.name for p in (ROOT / "deploykit").glob("*.py") if pattern.search(p.read_text())]
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
