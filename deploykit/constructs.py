"""Naming the construct in a user's model that a converter failed on (and where it sits).

Exporters bury the reason in pages of trace; these helpers find the line the user can act on.
Framework-free: they read error text and warnings, so any converter may use them.
"""
from __future__ import annotations

import contextlib
import os
import re

_DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "data-dependent", "Could not guard on data-dependent")
_CALL_SITE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)')
DATA_DEPENDENT_REMEDY = "rewrite the branch with torch.cond(pred, true_fn, false_fn, (x,)) so that both branches are exported"


def data_dependent_site(error_text, baked_warnings=()) -> str:
    """'file.py:12 in forward: `if x.sum() > 0:`' when torch.export failed on an `if` on tensor values,
    or a TorchScript tracer warning says a tensor became a Python value; '' otherwise."""
    if error_text and any(marker in error_text for marker in _DATA_DEPENDENT):
        match = _CALL_SITE.search(error_text.split("The following call raised this error:")[-1])
        if match:
            return f"{os.path.basename(match.group(1))}:{match.group(2)} in {match.group(3)}: `{match.group(4).strip()}`"
        return "an `if`/loop on tensor values"
    for warning in baked_warnings:
        if "boolean" in str(warning.message) or "Python value" in str(warning.message):
            return f"{os.path.basename(warning.filename)}:{warning.lineno} (a tensor converted to a Python value)"
    return ""


@contextlib.contextmanager
def data_dependence_named(tool: str):
    """Inside a converter child: a torch.export failure on data-dependent control flow becomes a ConversionError
    naming the user's line and the remedy; any other failure passes through unchanged."""
    from deploykit.errors import ConversionError
    from deploykit.text import exception_chain

    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the exporters raise many types
        site = data_dependent_site(exception_chain(exc))
        if site:
            raise ConversionError(f"data-dependent control flow at {site}: torch.export (inside {tool}) cannot "
                                  "capture it", DATA_DEPENDENT_REMEDY) from None
        raise
