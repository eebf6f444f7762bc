"""The public API is what ``deploykit.__all__`` says, whatever was imported before (issue: ``import
deploykit.bench`` once rebound ``deploykit.bench`` to a module, so ``deploykit.bench([...])`` raised
"'module' object is not callable")."""
import importlib
import inspect
import pkgutil

import pytest

import deploykit
from deploykit.errors import DeploykitError


def _import_every_submodule() -> list:
    names = []
    for info in pkgutil.walk_packages(deploykit.__path__, "deploykit."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def test_every_public_name_resolves_to_its_object_after_every_submodule_is_imported():
    assert len(_import_every_submodule()) > 40
    for name in deploykit.__all__:
        if name == "__version__":
            continue
        value = getattr(deploykit, name)
        module, attribute = deploykit._EXPORTS[name]
        assert value is getattr(importlib.import_module(module), attribute), name
        assert callable(value) and not inspect.ismodule(value), name


@pytest.mark.parametrize("name", ["bench", "report", "export", "verify", "inspect", "package", "verify_bundle"])
def test_public_functions_run_and_refuse_a_missing_file(name, tmp_path):
    """Called for real after every submodule is imported: each reaches its own validation (a DeploykitError
    naming the missing file), not a TypeError from a module object."""
    _import_every_submodule()
    missing = str(tmp_path / "missing.onnx")
    calls = {"bench": lambda f: f([missing]), "report": lambda f: f(missing),
             "export": lambda f: f(missing, "tflite"), "verify": lambda f: f(missing, [missing]),
             "inspect": lambda f: f(missing), "package": lambda f: f(missing, str(tmp_path / "bundle")),
             "verify_bundle": lambda f: f(str(tmp_path / "no-bundle"))}
    with pytest.raises(DeploykitError) as caught:
        calls[name](getattr(deploykit, name))
    assert "missing" in str(caught.value) or "no-bundle" in str(caught.value), str(caught.value)
