"""TFLite's model analyzer (shipped in ai-edge-litert), run and parsed into data — and why its GPU verdict is void.

Why it says "Your model looks compatible with GPU delegate" for any model: LiteRT's copy of the analyzer
(google-ai-edge/LiteRT tflite/python/analyzer_wrapper/model_analyzer.cc, every version since the import of
2024-11-22, 7d88950ea) no longer includes gpu_compatibility.h nor calls CheckGpuDelegateCompatibility: the list of
incompatible nodes is declared per subgraph and never filled, so the flag only prints that paragraph. Probed here:
`strings` on ai_edge_litert/libpywrap_litert_common.so (2.3.0) and TF 2.21's libpywrap_tflite_common.so finds that
sentence and none of "GPU COMPATIBILITY WARNING", "Not supported op", "Not supported custom op"; both call CONV_2D
v99 with SIGN_BIT, MEAN with a runtime axis, a 5-D ADD, an unknown CUSTOM op, RFFT2D and SEGMENT_SUM "compatible".

deploykit's own verdict comes from the delegate's rules (``deploykit.readiness.litert_gpu``); this module keeps the
analyzer's claim as data, to show where it disagrees. The parser also reads the warning lines TensorFlow's older
analyzer printed ("GPU COMPATIBILITY WARNING: <status>" after an op line, then a per-subgraph summary), so a build
that checks again is read, not misread. Anything else fails loudly (ToolOutputError, exit 3), never as an empty table.
"""
from __future__ import annotations

import re

from deploykit.errors import MissingDependency, ModelLoadError, ToolOutputError
from deploykit.text import one_line

TOOL = "TFLite model analyzer (ai-edge-litert)"

_SUMMARY = re.compile(r"^Your TFLite model has ['‘’](\d+)['‘’] subgraph\(s\)", re.MULTILINE)
_SUBGRAPH = re.compile(r"^Subgraph#(\d+)(?: ([^(]*))?\(.*\) -> \[.*\]$")
_OP = re.compile(r"^  Op#(\d+) ([^(]+)\(.*\) -> \[.*\]$")
_CLAIM = re.compile(r"^Your model looks compatib(?:i)?le with GPU delegate (?:with|on) TFLite runtime version "
                    r"(\S+?)\.?$")
_ISSUES = re.compile(r"^GPU COMPATIBILITY WARNING: Subgraph#(\d+) has GPU delegate compatibility issues at nodes "
                     r"([\d, ]+) (?:with|on) TFLite runtime version (\S+?)\.?$")
_WARNING = "GPU COMPATIBILITY WARNING: "


def run_analyzer(path: str) -> str:
    """The analyzer's text for the .tflite at ``path``, with the GPU-compatibility flag on.

    It parses the flatbuffer in this process: callers holding an untrusted file run it in a child (deploykit.child).
    """
    try:
        from ai_edge_litert import _pywrap_analyzer_wrapper as analyzer
    except ImportError:
        raise MissingDependency.for_package("ai-edge-litert", "litert", "to run TFLite's model analyzer") from None
    try:
        text = analyzer.ModelAnalyzer(str(path), True, True)
    except UnicodeDecodeError:       # pybind's str conversion of a name that is not UTF-8
        raise ToolOutputError.changed(TOOL, _version(), "output that is not UTF-8 text") from None
    if "Failed to mmap" in text and not _SUMMARY.search(text):     # its error reporter's lines come first
        why = one_line(re.sub(r"\.(?=[A-Z])", ". ", text.split("Failed to mmap")[0]), 200) or "no reason given"
        raise ModelLoadError(f"TFLite's model analyzer cannot read {path}: {why}", "check that it is a .tflite file")
    return text


def parse_analyzer(text: str, version: str) -> dict:
    """The analyzer's ``text`` as data: subgraphs with their ops, the GPU claim, the failures it names.

    Returns ``{"subgraphs": [{"name", "ops": [{"index", "op"}]}], "gpu_claim": "compatible" | "incompatible",
    "gpu_failures": [{"subgraph", "index", "op", "reason"}], "runtime_version"}``.

    Raises:
        ToolOutputError: a part the parser relies on is missing or has an unknown shape (``version`` names the
            installed tool in the message).
    """
    state = {"subgraphs": [], "failures": [], "claims": [], "last_op": None}
    declared = None
    for number, line in enumerate(text.splitlines(), 1):
        summary = _SUMMARY.match(line)
        if summary:
            declared = int(summary.group(1))
        elif not _read_line(line, state):
            raise ToolOutputError.changed(TOOL, version, f"line {number} has an unknown shape: {line[:80]!r}")
    if declared is None:
        raise ToolOutputError.changed(TOOL, version, "no 'Your TFLite model has N subgraph(s)' line")
    if not state["subgraphs"] and declared:
        raise ToolOutputError.changed(TOOL, version, "no 'Subgraph#' header")
    if len(state["subgraphs"]) != declared:
        raise ToolOutputError.changed(TOOL, version, f"{len(state['subgraphs'])} subgraph headers for {declared}")
    return _verdict(state, version)


def _read_line(line: str, state: dict) -> bool:
    """Take one line into ``state``; False for an op, subgraph or GPU line of unknown shape (other lines —
    tensors, signatures, sizes — are not read)."""
    subgraph, op = _SUBGRAPH.match(line), _OP.match(line)
    if subgraph:
        state["subgraphs"].append({"name": (subgraph.group(2) or "").strip(), "ops": []})
    elif op and state["subgraphs"]:
        ops = state["subgraphs"][-1]["ops"]
        if int(op.group(1)) != len(ops):        # a skipped or repeated op would shift every index after it
            return False
        ops.append({"index": int(op.group(1)), "op": op.group(2).strip()})
        state["last_op"] = (len(state["subgraphs"]) - 1, ops[-1])
    elif _CLAIM.match(line):
        state["claims"].append(("compatible", _CLAIM.match(line).group(1), ()))
    elif _ISSUES.match(line):
        found = _ISSUES.match(line)
        nodes = tuple(int(n) for n in found.group(2).replace(",", " ").split())
        state["claims"].append(("incompatible", found.group(3), (int(found.group(1)), nodes)))
    elif line.startswith(_WARNING):
        if state["last_op"] is None:
            return False
        g, op = state["last_op"]
        state["failures"].append({"subgraph": g, "index": op["index"], "op": op["op"],
                                  "reason": line[len(_WARNING):].strip()})
    elif line.startswith(("GPU ", "Your model looks", "  Op#", "Subgraph#")):
        return False
    else:
        state["last_op"] = None if line.strip() else state["last_op"]
    return True


def _verdict(state: dict, version: str) -> dict:
    """The claim, checked for consistency: one verdict kind, and the summary's nodes are the warned ones."""
    kinds = {kind for kind, _, _ in state["claims"]}
    if not kinds:
        raise ToolOutputError.changed(TOOL, version, "no GPU verdict line (compatible, or a compatibility warning)")
    if len(kinds) > 1:
        raise ToolOutputError.changed(TOOL, version, "both a 'compatible' line and compatibility warnings")
    kind = kinds.pop()
    if kind == "compatible" and state["failures"]:
        raise ToolOutputError.changed(TOOL, version, "op warnings beside a 'compatible' verdict")
    warned = {(f["subgraph"], f["index"]) for f in state["failures"]}
    listed = {(g, n) for _, _, (g, nodes) in state["claims"] for n in nodes} if kind == "incompatible" else warned
    if warned != listed:
        raise ToolOutputError.changed(TOOL, version, "the per-op warnings and the subgraph summary disagree")
    return {"subgraphs": state["subgraphs"], "gpu_claim": kind, "gpu_failures": state["failures"],
            "runtime_version": state["claims"][0][1]}


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
