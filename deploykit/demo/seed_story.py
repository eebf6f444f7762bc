"""The seed's story, measured: "PyTorch for research; for production: ONNX Runtime, LiteRT or ExecuTorch".

The two-layer net and MobileNetV2 are exported to ONNX, TFLite and ExecuTorch (each verified against its
source on export), then every artifact and its PyTorch source is benchmarked in its own child process at
1 thread: one table of latency, size, cold start and parity. `deploykit demo` runs it as its last step.

Where coreai-core runs, a Core AI column joins them, marked "reference runtime, Linux CPU": the .aimodel is
verified like the others, but Core AI's CPU path here is no iPhone (no GPU, no Neural Engine, tens of times
slower than torch), so its time is shown for what it is and never as a speed-up (few iterations: seconds each).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from deploykit.benchmark.cases import BenchOptions, bench
from deploykit.exporting.pipeline import export_model
from deploykit.formats import Format
from deploykit.exporting.routing import SUFFIXES
from deploykit.request import ExportRequest

TARGETS = (Format.ONNX, Format.TFLITE, Format.EXECUTORCH)
ROWS = ("torch", "onnxruntime", "litert", "executorch")
# Few iterations: the demo shows the gap (10× and more), not the third digit; `deploykit bench` measures that.
TIMING = {"warmup": 5, "iterations": 30}
REFERENCE_TARGETS = (Format.COREAI,)
REFERENCE_ROW, REFERENCE_LABEL = "coreai", "coreai (reference runtime, Linux CPU)"
REFERENCE_TIMING = {"warmup": 1, "iterations": 5}     # MobileNetV2 takes ~1.5 s a call there


def reference_targets() -> tuple:
    """The reference columns this host can fill: Core AI where coreai-core and coreai-torch are installed."""
    from deploykit import registry

    edge = next(e for e in registry.EDGES if e.name == "torch_to_coreai")
    return REFERENCE_TARGETS if edge.available and registry.runtime_entry(REFERENCE_ROW).available else ()


def seed_story(folder: Path, sources: dict, exported: dict, debug: bool = False, echo: Callable = None) -> dict:
    """Export what ``exported`` lacks ({(model, Format): ExportResult}), bench everything, return the table.

    ``sources`` maps a model name to its PyTorch file (the research row and the exports' source).
    """
    reference = reference_targets()
    for name, source in sources.items():
        for fmt in TARGETS + reference:
            if (name, fmt) not in exported:
                out = folder / f"{name}{SUFFIXES[fmt]}"
                if echo:
                    echo(f"   export {Path(source).name} → {out.name}")
                exported[(name, fmt)] = export_model(ExportRequest(str(source), fmt.value, str(out), force=True,
                                                                   debug=debug))
    rows = []
    for name, source in sources.items():
        files = [str(source)] + [exported[(name, fmt)].artifact for fmt in TARGETS]
        measured = bench(files, BenchOptions(runtimes=ROWS, threads=(1,), **TIMING))
        if reference:
            files = [exported[(name, fmt)].artifact for fmt in reference]
            measured["cases"] += bench(files, BenchOptions(runtimes=(REFERENCE_ROW,), threads=(1,),
                                                           **REFERENCE_TIMING))["cases"]
        for case in measured["cases"]:
            rows.append(_row(name, case, exported))
    return with_speedups({"rows": rows, "timing": TIMING,
                          "passed": all(r["parity_passed"] is not False and "error" not in r for r in rows)})


def _row(name: str, case: dict, exported: dict) -> dict:
    parity = next((r.parity for (model, _fmt), r in exported.items()
                   if model == name and Path(r.artifact).resolve() == Path(case["model"]).resolve()), None)
    row = {"model": name, "runtime": REFERENCE_LABEL if case.get("reference") else case["row"],
           "file": Path(case["model"]).name, **({"reference": True} if case.get("reference") else {}),
           "parity_passed": parity.passed if parity else None,
           "max_abs": max((o.max_abs for o in parity.outputs), default=None) if parity else None}
    if "error" in case:
        return {**row, "error": case["error"]}
    return {**row, "p50_ms": case["latency_ms"]["p50"], "size_bytes": case["size_bytes"],
            "cold_start_s": case["cold_start_s"], "first_result_s": case["time_to_first_result_s"],
            "peak_rss_bytes": case["peak_rss_bytes"], "ran_on": ", ".join(case.get("providers") or []),
            "bindings_import_s": case.get("bindings_import_s")}


def with_speedups(table: dict) -> dict:
    """Each production row's speed-up over its model's PyTorch row (same thread count)."""
    research = {r["model"]: r.get("p50_ms") for r in table["rows"] if r["runtime"] == "torch"}
    for row in table["rows"]:
        base = research.get(row["model"])
        if base and row.get("p50_ms") and row["runtime"] != "torch" and not row.get("reference"):
            row["speedup_vs_torch"] = round(base / row["p50_ms"], 2)
    return table
