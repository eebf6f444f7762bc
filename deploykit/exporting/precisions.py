"""`--quantize all`: fp32, fp16, dynamic and int8 artifacts side by side — size, latency, agreement."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from deploykit.errors import DeploykitError, UsageError
from deploykit.exporting.pipeline import default_output, export_model
from deploykit.request import ExportRequest
from deploykit.progress import Progress
from deploykit.exporting.routing import SUFFIXES

MODES = (None, "fp16", "dynamic", "int8")


def export_all_precisions(request: ExportRequest) -> dict:
    """Build one artifact per precision (name.<mode>.<suffix>), verify each, time each (1 thread, the
    one timing loop); with ``request.report`` also write precisions.html/.json/.png there."""
    dst, report_dir = request.target, request.report
    output = default_output(request.source, dst, request.output)
    if not output.endswith(SUFFIXES[dst]):
        raise UsageError("--quantize all needs -o with the target's suffix", f"e.g. -o model{SUFFIXES[dst]}")
    if report_dir:   # fail before minutes of converting, not after
        from deploykit import fsutil, registry
        from deploykit.exporting.precision_report import FILES

        registry.require(("matplotlib",), "needed to draw the report's plots")
        for name in FILES:
            fsutil.prepare_output(Path(report_dir) / name, request.force)
    from deploykit.exporting.routing import quantize_modes

    out = Path(output)
    rows = []
    offered = quantize_modes(dst)
    skipped = [{"precision": m, "reason": f"no edge into {dst.value} applies it"} for m in MODES if m and m not in offered]
    modes = [m for m in MODES if m is None or m in offered]
    with Progress(f"--quantize all: {len(modes)} precisions", total=len(modes)) as progress:
        for done, mode in enumerate(modes, start=1):
            rows.extend(_export_precision(request, out, mode))
            verdict = "passed" if rows[-1].get("passed") else "kept unverified" if rows[-1].get("unverified") else \
                "failed"
            progress.update(done, f"{mode or 'fp32'} {verdict}")
    baseline = next((r for r in rows if r["precision"] == "fp32" and "error" not in r), None)
    for row in rows:
        if baseline and "error" not in row:
            row["size_vs_fp32"] = round(row["bytes"] / baseline["bytes"], 3)
            row["speed_vs_fp32"] = round(baseline["latency_ms"] / row["latency_ms"], 2) if row["latency_ms"] else None
    standing = [r for r in rows if not r.get("superseded")]
    table = {"passed": all(r.get("passed") for r in standing), "source": request.source,
             "precisions": rows,
             "skipped": skipped}
    if any(r.get("unverified") for r in standing) and all(r.get("passed") or r.get("unverified") for r in standing):
        table["unverified"] = True     # kept with --keep-unverified (exit 6), never a pass
    if report_dir:
        from deploykit.exporting.precision_report import build_precision_report

        table["report"] = build_precision_report(table, report_dir, request.force)
    return table


def _export_precision(request: ExportRequest, out: Path, mode: Optional[str]) -> list:
    """The table's rows for one precision: its export (or its error), after the failing model a repair replaced."""
    target = out if mode is None else out.with_name(f"{out.stem}.{mode}{out.suffix}")
    options = replace(request.quantize, mode=mode) if mode else None
    try:
        result = export_model(replace(request, output=str(target), quantize=options, report=None))
    except DeploykitError as exc:
        parity = exc.details.get("parity") or {}
        return [{"precision": mode or "fp32", "passed": False, "error": exc.one_line(),
                 "judged_on": _judged_on(exc.report), **_metrics(parity.get("outputs", []))}]
    return _unrepaired(mode, result) + [_row(mode, result, request.verify.timeout)]


def _row(mode: Optional[str], result, timeout: float) -> dict:
    from deploykit.benchmark.cases import artifact_size
    from deploykit.exporting.pipeline import measure_latency
    from deploykit.inputs import random_feeds

    artifact = result.opened
    # An artifact no runtime here runs (a Core ML package on Linux) has no latency here.
    latency = None if result.parity.unverifiable else measure_latency(artifact, random_feeds(artifact.spec, 1)[0],
                                                                     timeout)
    worst = _metrics([vars(output) for output in result.parity.outputs])
    kept = [layer for hop in result.chosen.hops for layer in hop.kept_float]
    label = f"{mode} ({len(kept)} layer(s) float)" if kept else (mode or "fp32")
    return {"precision": label, "artifact": result.artifact, "passed": result.passed, "kept_float": kept,
            **({"unverified": True} if result.unverified else {}),
            "bytes": artifact_size(result.artifact), "latency_ms": latency, "route": result.chosen.name,
            "warnings": result.warnings, "judged_on": _judged_on(result.parity), **worst}


def _unrepaired(mode: Optional[str], result) -> list:
    """A repaired int8 export's first, failing model as its own row (the repair's log keeps its verdict)."""
    hop = next((h for h in result.chosen.hops if h.repaired), None)
    if hop is None:
        return []
    first = next((a for a in hop.attempts if not a["ok"]), {})
    return [{"precision": f"{mode} before repair", "passed": False, "superseded": True,
             "error": first.get("why", "failed its preset")}]


def _judged_on(report) -> str:
    """'32 held-out calibration samples' (the feeds a ParityReport was judged on), else its sample count."""
    if report is None:
        return ""
    if report.compared_on:
        count, kind = report.compared_on
        return f"{count} {kind} samples"
    return f"{report.samples} samples" if report.samples else ""


def _metrics(outputs: list) -> dict:
    return {k: _worst([o.get(k) for o in outputs], k) for k in ("max_abs", "cosine", "top1_agreement",
                                                                   "top5_agreement")}


def _worst(values: list, key: str):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return max(values) if key == "max_abs" else min(values)
