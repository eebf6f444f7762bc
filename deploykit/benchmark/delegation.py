"""The bench's "delegated" column: what each timed row's runtime handed to a delegate, beside its latency.

One readiness per artifact file (``deploykit.readiness.readiness``, probes in a child), computed after every case
of the bench is timed so it never competes with a timing; each row then reads its runtime's table from it. The
MEASURED tables are what ran here (LiteRT's XNNPACK plan, an ExecuTorch program's delegate calls); the predicted
ones (LiteRT's GPU delegate, ONNX Runtime's NNAPI / CoreML) go in a second, separate cell. Rows with no table —
research frameworks, Core AI, the browsers, the emulated ARM cores — get "—" and the reason, never an error.

Plain data in and out: the column is a dict on each case (``case["delegated"]``), so a bench JSON written before the
column existed still renders ("—").
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from deploykit.errors import DeploykitError

NONE = "—"
XNNPACK = "XNNPACK (CPU)"
# Rows whose artifact's readiness gives their cell; the ONNX Runtime CPU row only for its predicted mobile EPs.
USES_READINESS = ("litert", "litert_no_xnnpack", "executorch", "onnxruntime")
WHY_NONE = {
    "torch": "a research framework: its own kernels, no delegate",
    "torch_compile": "a research framework: its own kernels, no delegate",
    "tensorflow": "a research framework: its own kernels, no delegate",
    "torch_cuda": "a research framework on the GPU: no delegate",
    "onnxruntime_cuda": "the CUDA EP's CPU fallback is decided when the session loads: not computed",
    "coreai": "Core AI: no static answer on Linux (the device's compiler plans CPU / GPU / Neural Engine)",
    "onnxruntime-web": "a browser runtime: its backend is decided by the browser at load time",
    "litert-js": "a browser runtime: its backend is decided by the browser at load time",
    "litert-arm64": "an emulated ARM core: parity only",
    "onnxruntime-arm64": "an emulated ARM core: parity only",
}
CPU_EP = "CPU EP: all nodes"
CPU_EP_NOTE = "ONNX Runtime's CPU execution provider has no delegate: it runs every node itself"


def add_columns(results: list, loads: dict, timeout: float) -> dict:
    """Give every row that ran its ``delegated`` cell; returns ``{path: compact tables, or {"error": why}}`` for
    each artifact probed. ``loads`` maps a model path to the load payload its cases used (``--input`` pins ONNX
    dims the same way)."""
    artifacts = {}
    for model in dict.fromkeys(r["model"] for r in results if _needs_readiness(r)):
        artifacts[model] = artifact_tables(model, loads.get(model), timeout)
    for row in results:
        if "error" not in row:
            row["delegated"] = cell(row["row"], artifacts.get(row["model"]))
    return artifacts


def _needs_readiness(row: dict) -> bool:
    from deploykit.formats import Format
    from deploykit.readiness import PROBED

    return "error" not in row and row["row"] in USES_READINESS and Format(row["format"]) in PROBED


def artifact_tables(path: str, load: Optional[dict], timeout: float) -> dict:
    """The artifact's readiness tables in the compact form the column reads, or ``{"error": why}`` (a probe that
    fails leaves the bench's timings standing: the row shows "—" and the reason is in the JSON)."""
    from deploykit.model import LoadOptions
    from deploykit.readiness import readiness

    options = LoadOptions.from_dict({**(load or {}), "timeout": timeout})
    try:
        found = readiness(path, options)
    except DeploykitError as exc:
        return {"error": exc.one_line().removeprefix("error: ")}
    backends = [_plain(name) for name in (found.operators or {}).get("delegate_backends") or []]
    return {"tables": [_compact(t) for t in found.tables], "delegate_backends": backends, "tools": dict(found.tools)}


def _plain(name) -> str:
    """A backend id as read from the .pte: the file is not trusted, and the name reaches the terminal (rich markup)
    and the HTML report — letters, digits, ``_.-`` only."""
    return "".join(ch for ch in str(name) if ch.isascii() and (ch.isalnum() or ch in "_.-"))[:60] or "?"


def _compact(table) -> dict:
    return {"runtime": table.runtime, "target": table.target, "measured": table.measured, "verdict": table.verdict,
            "supported": table.supported, "total": table.total, "unit": table.unit, "partitions": table.partitions,
            "flop_share": table.flop_share, "share": table.share, "summary": table.summary(), "source": table.source}


def cell(row: str, artifact: Optional[dict]) -> dict:
    """One row's cell: ``text`` (what ran where, measured here), ``predicted`` (the best phone accelerator the
    published rules give the artifact, when there is one) and the numbers behind them."""
    if row not in USES_READINESS:
        return {"text": NONE, "why": WHY_NONE.get(row, "no readiness for this runtime")}
    tables = (artifact or {}).get("tables")
    if row == "onnxruntime":    # measured needs no probe: the CPU EP runs every node (or the session fails to load)
        return {"text": CPU_EP, "measured": True, "note": CPU_EP_NOTE, **_predicted(tables, "onnxruntime")}
    if tables is None:
        why = (artifact or {}).get("error") or "no readiness for this format"
        return {"text": NONE, "why": why}
    if row == "executorch":
        return _executorch(tables, artifact.get("delegate_backends") or [])
    xnnpack = next((t for t in tables if t["target"] == XNNPACK), None)
    if xnnpack is None:
        return {"text": NONE, "why": "the readiness gave no XNNPACK table", **_predicted(tables, "litert")}
    if row == "litert_no_xnnpack":
        nodes = f"{xnnpack['total']} nodes" if xnnpack.get("total") else "every node"
        return {"text": f"XNNPACK off: {nodes} on builtin kernels", "measured": True, "delegate": None,
                "total": xnnpack.get("total"), "unit": "nodes", **_predicted(tables, "litert")}
    return {"text": xnnpack_text(xnnpack), "measured": True, "delegate": XNNPACK, **_numbers(xnnpack),
            **_predicted(tables, "litert")}


def _numbers(table: dict) -> dict:
    return {key: table.get(key) for key in ("supported", "total", "unit", "partitions", "flop_share", "share",
                                            "verdict")}


def xnnpack_text(table: dict) -> str:
    """"XNNPACK 164/222 nodes · 100% of FLOPs · 17 partitions"."""
    parts = [f"XNNPACK {table['supported']}/{table['total']} nodes" if table.get("total") else "XNNPACK"]
    if table.get("flop_share") is not None:
        parts.append(f"{percent(table['flop_share'])} of FLOPs")
    if table.get("partitions") is not None:
        parts.append(_count(table["partitions"], "partition"))
    return " · ".join(parts)


def _executorch(tables: list, backends: list) -> dict:
    table = next((t for t in tables if t["runtime"] == "executorch" and t["measured"]), None)
    if table is None or table.get("total") is None:
        return {"text": NONE, "why": "the readiness gave no delegation table"}
    calls, portable = table["supported"] or 0, table["total"] - (table["supported"] or 0)
    who = ", ".join(backends) if backends else "no delegate"
    text = f"{who} {_count(calls, 'call')}, {portable} portable op{'s' * (portable != 1)}"
    return {"text": text, "measured": True, "delegate": who, "portable": portable, **_numbers(table)}


def _predicted(tables: Optional[list], runtime: str) -> dict:
    """The accelerators a phone could hand the artifact to, as the published rules predict (never measured here):
    one with its numbers ("GPU delegate: YES (2/2 nodes · 1 partition)"), several by verdict each — NNAPI and
    CoreML are different phones, so none stands for the others."""
    found = [t for t in tables or () if not t["measured"] and t["runtime"] == runtime]
    if not found:
        return {}
    if len(found) == 1:
        text = f"{found[0]['target']}: {found[0]['verdict']} ({found[0]['summary'].rsplit(' · ', 1)[0]})"
    else:
        text = " · ".join(f"{t['target']} {t['verdict']}" for t in found)
    return {"predicted": text,
            "predicted_all": [{"target": t["target"], "verdict": t["verdict"], "summary": t["summary"],
                               "source": t["source"]} for t in found]}


def percent(share: float) -> str:
    """A share as a percentage that never rounds a partial share up to 100 % (or a non-zero one down to 0 %)."""
    text = f"{share:.0%}"
    if share < 1 and text == "100%":
        return f"{share:.1%}" if f"{share:.1%}" != "100.0%" else ">99.9%"
    if share > 0 and text == "0%":
        return "<1%"
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def text(case: dict) -> str:
    """The measured cell of a case ("—" for a row without one, or a bench JSON from before the column)."""
    return (case.get("delegated") or {}).get("text") or NONE


def predicted_text(case: dict) -> str:
    return (case.get("delegated") or {}).get("predicted") or NONE


def findings(rows: list, research_rows: tuple, not_production: tuple) -> list:
    """One sentence per production row that is slower than the research row at its threads and batch, or whose
    measured delegation left part of the model behind — with the numbers. Rows in ``not_production`` (reference,
    browser, emulated) are not judged."""
    timed = [r for r in rows if "error" not in r and "latency_ms" in r]
    out = []
    for row in timed:
        if row["row"] in research_rows + not_production:
            continue
        said = [s for s in (_slower(row, timed, research_rows), _partial(row.get("delegated") or {})) if s]
        if said:
            out.append(f"{row['row']} ({Path(row['model']).name}, {row['options'].get('threads')} thread(s)): "
                       + "; ".join(said))
    return out


def _slower(row: dict, timed: list, research_rows: tuple) -> str:
    same = [r for r in timed if r["row"] in research_rows and r["batch"] == row["batch"]
            and r["options"].get("threads") == row["options"].get("threads")]
    base = min(same, key=lambda r: research_rows.index(r["row"]), default=None)
    if base is None or row["latency_ms"]["p50"] <= base["latency_ms"]["p50"]:
        return ""
    ratio = row["latency_ms"]["p50"] / base["latency_ms"]["p50"]
    return f"{ratio:.2f}× slower than {base['row']} (delegated: {text(row)})"


def _partial(cell_: dict) -> str:
    """What a measured delegation left out, or '' when it took everything (or nothing was measured)."""
    if not cell_.get("measured") or cell_.get("share") is None or cell_["share"] >= 1:
        return ""
    left = 1 - cell_["share"]
    if cell_.get("unit") == "instructions":
        return (f"{cell_.get('portable')} of {cell_['total']} instructions ({percent(left)}) run on ExecuTorch's "
                "portable kernels, not a delegate")
    flops = f", {percent(1 - cell_['flop_share'])} of FLOPs" if cell_.get("flop_share") is not None else ""
    return (f"{_count(cell_.get('partitions') or 0, 'XNNPACK partition')}, {percent(left)} of nodes{flops} on "
            "LiteRT's builtin kernels")
