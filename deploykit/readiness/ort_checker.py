"""ONNX Runtime's mobile usability checker, run and read.

``onnxruntime.tools.check_onnx_model_mobile_usability`` (module ``mobile_helpers.usability_checker``) optimizes the
model to ORT's BASIC level (as the .ort conversion does), then reports for NNAPI, CoreML NeuralNetwork and CoreML
MLProgram the partitions, supported nodes, unsupported ops, nodes kept off by dynamic shapes or rank, and a
YES/MAYBE/NO verdict — as it is, and again as if every dim were fixed. Its answer exists only as log text: deploykit
captures the INFO lines and parses them here. Every line must be one the parser knows; a new shape of line, or an
execution provider without its verdict, raises ``ToolOutputError`` naming onnxruntime's version — a changed tool
must never read as an empty table.
"""
from __future__ import annotations

import io
import logging
import re
from pathlib import Path

from deploykit.errors import ToolOutputError

TOOL = "ONNX Runtime's mobile usability checker (onnxruntime.tools.check_onnx_model_mobile_usability)"
PROVIDERS = ("NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram")

_PARTITIONS = re.compile(r"^(\d+) partitions with a total of (\d+)/(\d+) nodes can be handled by the (.+) EP\.$")
_COUNTED = {
    "Unsupported nodes due to operator=": "unsupported_due_to_op",
    "Unsupported nodes due to input having a dynamic shape=": "dynamic_blocked",
    "Unsupported nodes due to rank of input data=": "rank_blocked",
}
_LISTED = {"Unsupported ops: ": "unsupported_ops", "Ops with unsupported rank: ": "rank_ops"}
_VERDICT = re.compile(r"^Model should perform well with (.+?) (as is|if modified to have fixed input shapes): "
                      r"(YES|MAYBE|NO)$")
_SUBGRAPHS = re.compile(r"^(\d+) nodes are in (\d+) subgraphs\. Check EP as to whether subgraphs are supported\.$")
# Sentences that carry no number the tables need (the verdict line says the same in one word).
_PROSE = ("Checking ", "--------", "================", "Checking if model will perform better",
          "Partition information if the model was updated", "Shapes can be altered using",
          "Re-run with log level", "Unable to check shapes within model")
_PROSE_AFTER_EP = (" cannot run any nodes in this model.", " should work well for this model",
                   " may work well for this model", " will probably not work", " can be considered for this model",
                   " is not recommended with this model")


def run(path: str) -> str:
    """The checker's INFO output for ``path`` (its own optimization pass included)."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    buffer = io.StringIO()
    logger = logging.getLogger(f"deploykit.ort_checker.{id(buffer)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        usability_checker.analyze_model(Path(path), skip_optimize=False, logger=logger)
    finally:
        logger.removeHandler(handler)
    return buffer.getvalue()


def parse(text: str, version: str) -> dict:
    """{provider: {"as_is": analysis, "fixed": analysis or None, "verdict": ..., "verdict_fixed": ...}} where an
    analysis is {"partitions", "supported", "total", "sizes", "unsupported_ops", "unsupported_due_to_op",
    "dynamic_blocked", "rank_blocked", "rank_ops", "caveats", "subgraph_nodes"}."""
    found: dict = {}
    provider, current = None, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if raw.startswith("     ") and current is not None and current.get("_in_caveats"):
            current["caveats"].append(line)
            continue
        if line in {f"Checking {name}" for name in PROVIDERS}:
            provider = line[len("Checking "):]
            found[provider] = {"as_is": None, "fixed": None, "verdict": None, "verdict_fixed": None}
            current = None
            continue
        match = _PARTITIONS.match(line)
        if match:
            if provider is None or match.group(4) != provider:
                raise ToolOutputError.changed(TOOL, version, f"partitions of {match.group(4)!r} outside its section")
            current = _analysis(*(int(match.group(i)) for i in (1, 2, 3)))
            slot = "as_is" if found[provider]["as_is"] is None else "fixed"
            found[provider][slot] = current
            continue
        if _known_line(line, provider, current, found, version):
            continue
        raise ToolOutputError.changed(TOOL, version, f"unknown line {line[:80]!r}")
    return _complete(found, version)


def _analysis(partitions: int, supported: int, total: int) -> dict:
    return {"partitions": partitions, "supported": supported, "total": total, "sizes": [], "unsupported_ops": [],
            "unsupported_due_to_op": 0, "dynamic_blocked": 0, "rank_blocked": 0, "rank_ops": [], "caveats": [],
            "subgraph_nodes": 0, "_in_caveats": False}


def _known_line(line: str, provider, current, found: dict, version: str) -> bool:
    """Fold one line into the current analysis; False when the line is not one the checker is known to print."""
    if current is not None:
        current["_in_caveats"] = False
    verdict = _VERDICT.match(line)
    if verdict:
        if verdict.group(1) != provider:
            raise ToolOutputError.changed(TOOL, version, f"a verdict for {verdict.group(1)!r} in {provider!r}")
        found[provider]["verdict" if verdict.group(2) == "as is" else "verdict_fixed"] = verdict.group(3)
        return True
    if line.startswith("Partition sizes: [") and current is not None:
        current["sizes"] = [int(n) for n in re.findall(r"\d+", line)]
        return True
    for prefix, key in {**_COUNTED, **_LISTED}.items():
        if line.startswith(prefix) and current is not None:
            value = line[len(prefix):]
            current[key] = int(value) if key in _COUNTED.values() else sorted(value.split(","))
            return True
    if line.startswith("Caveats that have not been checked") and current is not None:
        current["_in_caveats"] = True
        return True
    subgraphs = _SUBGRAPHS.match(line)
    if subgraphs and current is not None:
        current["subgraph_nodes"] = int(subgraphs.group(1))
        return True
    if line.startswith(_PROSE):
        return True
    return provider is not None and line.startswith(provider) and any(p in line for p in _PROSE_AFTER_EP)


def _complete(found: dict, version: str) -> dict:
    for name in PROVIDERS:
        entry = found.get(name)
        if entry is None or entry["as_is"] is None or entry["verdict"] is None:
            raise ToolOutputError.changed(TOOL, version, f"no partitions and verdict for {name}")
        for slot in ("as_is", "fixed"):
            if entry[slot] is not None:
                entry[slot].pop("_in_caveats", None)
    return found
