"""deploykit: export research models to production runtimes, prove parity, measure the gain.

The public API is re-exported lazily so that ``import deploykit`` stays cheap:
``deploykit.export``, ``deploykit.verify``, ``deploykit.inspect``, ``deploykit.doctor``,
``deploykit.ModelSpec``, ``deploykit.TensorSpec``, ``deploykit.Tolerance``.
"""
from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "export": ("deploykit.api", "export"),
    "verify": ("deploykit.api", "verify"),
    "VerifyOptions": ("deploykit.api", "VerifyOptions"),
    "load_options": ("deploykit.api", "load_options"),
    "inspect": ("deploykit.introspect", "inspect_model"),
    "doctor": ("deploykit.introspect", "doctor"),
    "ModelSpec": ("deploykit.spec", "ModelSpec"),
    "TensorSpec": ("deploykit.spec", "TensorSpec"),
    "Tolerance": ("deploykit.parity", "Tolerance"),
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module, attribute = _EXPORTS[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")


__all__ = list(_EXPORTS) + ["__version__"]
