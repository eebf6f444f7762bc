"""The runtime bill of materials: what the app's runtime must contain to run one artifact — the operators (and
types where the tool gives them) for a selective build, with the readiness tables beside them. Written into every
bundle as ``runtime-bom.json``; the app never reads it (``app.py selftest`` is unaffected), the app's build does.

- ONNX Runtime: the ``required_operators_and_types.config`` that ORT's reduced build takes
  (``--include_ops_by_config``), from ORT's own converter with type reduction — a reduced (minimal) ORT build loads
  only the .ort form, so the config is the one of the model converted for ``platform``;
- LiteRT: builtin op codes with the versions used, and custom ops (the op resolver a selective build registers);
- ExecuTorch: ExecuTorch's selected_operators.yaml (kernels with dtypes) and the delegate backends it calls.
"""
from __future__ import annotations

from deploykit.readiness.report import Readiness

SCHEMA = "deploykit.runtime-bom/1"
BOM_FILE = "runtime-bom.json"


def runtime_bom(found: Readiness, runtime: str, runtime_version: str) -> dict:
    """The JSON object a bundle carries for ``found`` (a ``readiness()`` result of the bundled model)."""
    return {"schema": SCHEMA, "runtime": runtime, "runtime_version": runtime_version, "format": found.format,
            "operators": found.operators or {"note": "no operator list: " + "; ".join(found.notes)},
            "readiness": {"tables": [t.to_dict() for t in found.tables], "fixes": found.to_dict()["fixes"],
                          "notes": list(found.notes), "tools": dict(found.tools)}}
