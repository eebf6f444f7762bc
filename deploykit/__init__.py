"""deploykit: export research models to production runtimes, prove parity, measure the gain.

The public API, re-exported lazily so that ``import deploykit`` stays cheap (no framework, no numpy):

* functions — ``export``, ``verify``, ``verify_bundle``, ``package``, ``bench``, ``inspect``, ``doctor``,
  ``report``, ``load_options``
  (see :mod:`deploykit.api`; the CLI is a thin face over them);
* options — ``ExportRequest`` (one export, every option), ``VerifyOptions``, ``QuantizeOptions``, ``BenchOptions``, ``LoadOptions``, ``PackageOptions``,
  ``Timing``;
* objects — ``Artifact`` (a model file that runs itself), ``ModelSpec``, ``TensorSpec``, ``Tolerance``;
* errors — ``DeploykitError`` and its subclasses carry an exit code and a remedy (``deploykit.errors``).
"""
from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "export": ("deploykit.api", "export"),
    "verify": ("deploykit.api", "verify"),
    "verify_bundle": ("deploykit.api", "verify_bundle"),
    "package": ("deploykit.api", "package"),
    "bench": ("deploykit.api", "bench"),
    "inspect": ("deploykit.api", "inspect"),
    "doctor": ("deploykit.api", "doctor"),
    "report": ("deploykit.api", "report"),
    "load_options": ("deploykit.api", "load_options"),
    "ExportRequest": ("deploykit.request", "ExportRequest"),
    "VerifyOptions": ("deploykit.options", "VerifyOptions"),
    "QuantizeOptions": ("deploykit.options", "QuantizeOptions"),
    "BenchOptions": ("deploykit.benchmark.cases", "BenchOptions"),
    "LoadOptions": ("deploykit.model", "LoadOptions"),
    "PackageOptions": ("deploykit.bundle.packaging", "PackageOptions"),
    "Timing": ("deploykit.harness", "Timing"),
    "Artifact": ("deploykit.artifact", "Artifact"),
    "ModelSpec": ("deploykit.spec", "ModelSpec"),
    "TensorSpec": ("deploykit.spec", "TensorSpec"),
    "Tolerance": ("deploykit.parity", "Tolerance"),
    "DeploykitError": ("deploykit.errors", "DeploykitError"),
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module, attribute = _EXPORTS[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")


__all__ = list(_EXPORTS) + ["__version__"]
