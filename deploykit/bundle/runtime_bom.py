"""``runtime-bom.json`` in every bundle: what the app's runtime must contain to run the bundled model (issue 31).

``write`` computes ``deploykit.readiness.readiness`` of the model as bundled (its bytes changed when the contract
went in) and writes ``deploykit.readiness.bom.runtime_bom`` of it into the bundle's staging folder, so it is
published atomically with the rest and listed with its sha256 in deploykit-bundle.json like every file. The app
never reads it (``app.py selftest`` is unaffected); the app's *build* does: ORT's ``--include_ops_by_config``,
LiteRT's selective build, the op list a custom browser runtime keeps.

``problems`` is what ``verify BUNDLE`` checks: the file has the shape written here, names the bundle's runtime
and model, and records the sha256 of the model bytes it was computed from. The operators are not recomputed on
verify — readiness runs ONNX Runtime's converter and checker in a child (seconds) — the sha256 ties them to the
model instead, and the listing ties the file to the bundle.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional

from deploykit import fsutil
from deploykit.readiness.bom import BOM_FILE, SCHEMA

# How an app's build uses the operators section, per bundle runtime (what each project documents).
BUILD = {
    "onnxruntime": "save operators.required_operators_config to a file and build ONNX Runtime from source with "
                   "--include_ops_by_config FILE --enable_reduced_operator_type_support (with --minimal_build the "
                   "runtime loads only the .ort form: deploykit export MODEL --to ort)",
    # A bundle of an .ort: its model is already the form a minimal build loads, and the config is read from it.
    "onnxruntime:ort": "save operators.required_operators_config to a file and build ONNX Runtime from source with "
                       "--minimal_build --include_ops_by_config FILE --enable_reduced_operator_type_support; the "
                       "bundle's model.ort is the form such a build loads, and the config was read from its own "
                       "graph (kernels for the platform it was converted for: --ort-platform)",
    "onnxruntime-web": "the published onnxruntime-web has every operator; a smaller WASM build is ONNX Runtime's "
                       "build script with its WebAssembly option and --include_ops_by_config on "
                       "operators.required_operators_config (with --minimal_build it loads only the .ort form; the "
                       "config comes from the Python onnxruntime that operators.tool names)",
    "litert": "a LiteRT selective build (build_aar.sh / build_ios_framework.sh --input_models=model.tflite) or "
              "a C++ MutableOpResolver registers these builtin op codes at these versions, plus the custom ops",
    "litert-js": "LiteRT.js ships one prebuilt WASM runtime (no selective build): the list says which of its "
                 "builtin ops the model uses; a custom op must not be listed (LiteRT.js ran one it could not "
                 "resolve and returned garbage; deploykit's browser runner refuses such a model)",
    "coreai": "Core AI is part of iOS/macOS 27: no selective build; the histogram is what the model's program holds",
    "coreml": "Core ML is part of iOS/macOS: no selective build; the histogram is what the model's program holds",
}
_HISTOGRAM_RUNTIMES = ("coreai", "coreml")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def write(folder: Path, model_file: str, runtime: str, runtime_version: str, timeout: float,
          histogram: Optional[dict] = None) -> dict:
    """Write ``runtime-bom.json`` for ``folder/model_file`` (the model as bundled) and return it. ``histogram``:
    the op histogram deploykit read from an Apple model, carried where readiness has no operator list."""
    from deploykit.model import LoadOptions
    from deploykit.readiness import readiness
    from deploykit.readiness.bom import runtime_bom

    path = folder / model_file
    found = readiness(str(path), LoadOptions(timeout=timeout))
    if not found.operators and runtime in _HISTOGRAM_RUNTIMES:
        found = replace(found, operators=_histogram_section(runtime, found.format, histogram or {}))
    build = BUILD.get(f"{runtime}:{found.format}", BUILD.get(runtime, ""))
    bom = {**runtime_bom(found, runtime, runtime_version), "model": model_file,
           "model_sha256": fsutil.sha256_of(path), "build": build}
    fsutil.write_text_atomic(folder / BOM_FILE, json.dumps(bom, indent=2) + "\n")
    return bom


def _histogram_section(runtime: str, fmt: str, histogram: dict) -> dict:
    """An Apple model's operators section: said plainly to be the program's op histogram, not a build list."""
    return {"runtime": runtime, "format": fmt, "tool": "deploykit's reading of the model's program (inspect's ops)",
            "op_histogram": {str(op): int(count) for op, count in histogram.items()},
            "note": "the ops in the model's program by count, not what a runtime build must include: "
                    f"{runtime} is part of the OS and decides on the device which unit runs each op"}


def count(bom: dict) -> tuple:
    """(how many operators, what they are) of a BOM's operators section."""
    operators = bom.get("operators") or {}
    if "op_histogram" in operators:
        return len(operators["op_histogram"]), "op types in the program, no selective build"
    if "builtin_operators" in operators:
        custom = len(operators.get("custom_operators") or [])
        use = " of LiteRT.js's prebuilt runtime" if bom.get("runtime") == "litert-js" else " for the op resolver"
        return (len(operators["builtin_operators"]) + custom,
                "builtin op codes with versions" + (f" ({custom} custom)" if custom else "") + use)
    if "operators" in operators:
        return len(operators["operators"]), "operators with types for ONNX Runtime's reduced build"
    return 0, "operators: none listed"


def summary(bom: dict) -> str:
    """One line: "runtime-bom.json: 2 operators with types for ONNX Runtime's reduced build (runtime onnxruntime
    1.32.0)"."""
    number, what = count(bom)
    return f"{BOM_FILE}: {number} {what} (runtime {bom.get('runtime')} {bom.get('runtime_version')})"


def describe(folder: Path) -> Optional[str]:
    """The summary line of the bundle's BOM (None when it has none)."""
    try:
        return summary(json.loads((Path(folder) / BOM_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


# What verify checks once every listed file is unchanged: the record can be rewritten with new sha256s by whoever
# edited the BOM, so its shape and its tie to the model are checked here.

def problems(folder: Path, info: dict) -> list:
    """Why the bundle's runtime-bom.json is not what ``write`` wrote for its model ([] when it is)."""
    try:
        bom = json.loads((folder / BOM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return [f"{BOM_FILE} is not valid JSON"]
    if not isinstance(bom, dict) or bom.get("schema") != SCHEMA:
        return [f"{BOM_FILE} is not a JSON object of schema {SCHEMA}"]
    wrong = [key for key in ("runtime", "model") if bom.get(key) != info.get(key)]
    if wrong:
        return [f"{BOM_FILE} names another {' and '.join(wrong)} than {fsutil.BUNDLE_FILE}"]
    recorded = bom.get("model_sha256")
    if not isinstance(recorded, str) or not _SHA256.fullmatch(recorded):
        return [f"{BOM_FILE} records no model_sha256"]
    model = info["model"]
    # A listed model file was just hashed by the unchanged-files check; a folder model is hashed as a whole.
    actual = info["files"].get(model) or fsutil.sha256_of(folder / model)
    if recorded != actual:
        return [f"{BOM_FILE} was computed for another model than {model} (model_sha256 differs)"]
    if not _operators_ok(bom.get("operators"), bom["runtime"], model) or not _readiness_ok(bom.get("readiness")):
        return [f"{BOM_FILE}'s operators or readiness are not the sections package writes for {bom['runtime']}"]
    return []


def _operators_ok(operators, runtime: str, model: str) -> bool:
    if not isinstance(operators, dict):
        return False
    if runtime in _HISTOGRAM_RUNTIMES:
        histogram = operators.get("op_histogram")
        return isinstance(histogram, dict) and all(isinstance(k, str) and type(v) is int and v >= 0
                                                   for k, v in histogram.items())
    if runtime in ("litert", "litert-js"):
        builtin, custom = operators.get("builtin_operators"), operators.get("custom_operators")
        return isinstance(builtin, list) and isinstance(custom, list) and all(
            isinstance(op, dict) and isinstance(op.get("op"), str) and isinstance(op.get("versions"), list)
            and all(type(v) is int for v in op["versions"]) for op in builtin)
    return _ort_ok(operators, model)


def _ort_ok(operators: dict, model: str) -> bool:
    """ONNX Runtime's section: of the model's own format (an .ort's config is read from its graph, an .onnx's from
    its conversion), the config text, and its rows exactly as that text parses (so neither was edited alone)."""
    from deploykit.transforms.ort_format import parse_config

    config, rows = operators.get("required_operators_config"), operators.get("operators")
    if not isinstance(config, str) or not isinstance(rows, list) or \
            operators.get("format") != ("ort" if model.endswith(".ort") else "onnx"):
        return False
    try:
        return parse_config(config) == rows
    except (ValueError, TypeError, RecursionError):
        return False


def _readiness_ok(section) -> bool:
    return isinstance(section, dict) and isinstance(section.get("tables"), list) and all(
        isinstance(t, dict) for t in section["tables"]) and isinstance(section.get("notes"), list)
