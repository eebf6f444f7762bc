"""`--quantize all`: fp32, fp16, dynamic and int8 artifacts side by side — size, latency, agreement."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from deploykit.errors import DeploykitError

MODES = (None, "fp16", "dynamic", "int8")


def export_all_precisions(source: str, to: str, output: str, quantize, report_dir: Optional[str] = None,
                          **export_kwargs) -> dict:
    """Build one artifact per precision (name.<mode>.<suffix>), verify each, time each (1 thread);
    with ``report_dir`` also write precisions.html/.json/.png there."""
    from deploykit import api
    from deploykit.isolation import run_isolated

    if report_dir:   # fail before minutes of converting, not after
        from deploykit import fsutil, registry
        from deploykit.precision_report import FILES

        registry.require(("matplotlib",), "needed to draw the report's plots")
        for name in FILES:
            fsutil.prepare_output(Path(report_dir) / name, export_kwargs.get("force", False))
    out = Path(output)
    rows = []
    for mode in MODES:
        target = out if mode is None else out.with_name(f"{out.stem}.{mode}{out.suffix}")
        options = replace(quantize, mode=mode) if mode else None
        try:
            result = api.export(source, to, str(target), quantize=options, **export_kwargs)
        except DeploykitError as exc:
            parity = exc.details.get("parity") or {}
            rows.append({"precision": mode or "fp32", "passed": False, "error": exc.one_line(),
                         "judged_on": _judged_on(parity), **_metrics(parity.get("outputs", []))})
            continue
        rows.append(_row(mode, result, run_isolated))
    baseline = next((r for r in rows if r["precision"] == "fp32" and "error" not in r), None)
    for row in rows:
        if baseline and "error" not in row:
            row["size_vs_fp32"] = round(row["bytes"] / baseline["bytes"], 3)
            row["speed_vs_fp32"] = round(baseline["latency_ms"] / row["latency_ms"], 2) if row["latency_ms"] else None
    table = {"passed": all(r.get("passed") for r in rows), "source": source, "precisions": rows}
    if report_dir:
        from deploykit.precision_report import build_precision_report

        table["report"] = build_precision_report(table, report_dir, export_kwargs.get("force", False))
    return table


def _row(mode: Optional[str], result, run_isolated) -> dict:
    from deploykit.bench import artifact_size
    from deploykit.inputs import random_feeds
    from deploykit.model import load_model

    artifact = load_model(result.artifact)
    feeds = random_feeds(artifact.spec, 1)
    _outputs, info = run_isolated(result.artifact, feeds, threads=1, time_iterations=50)
    worst = _metrics(result.parity["outputs"])
    return {"precision": mode or "fp32", "artifact": result.artifact, "passed": result.passed,
            "bytes": artifact_size(result.artifact), "latency_ms": info.get("latency_ms_median"),
            "route": " → ".join(h["edge"] for h in result.route), "warnings": result.warnings,
            "judged_on": _judged_on(result.parity), **worst}


def _judged_on(parity: dict) -> str:
    """'32 held-out calibration samples', from the parity engine's note, else the sample count."""
    for note in parity.get("notes", []):
        if note.startswith("compared on "):
            return note[len("compared on "):].replace("sample(s)", "samples")
    return f"{parity['samples']} samples" if parity.get("samples") else ""


def _metrics(outputs: list) -> dict:
    return {k: _worst([o.get(k) for o in outputs], k) for k in ("max_abs", "cosine", "top1_agreement",
                                                                   "top5_agreement")}


def _worst(values: list, key: str):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return max(values) if key == "max_abs" else min(values)
