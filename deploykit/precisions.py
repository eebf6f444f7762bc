"""`--quantize all`: fp32, fp16, dynamic and int8 artifacts side by side — size, latency, agreement."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from deploykit.errors import DeploykitError

MODES = (None, "fp16", "dynamic", "int8")


def export_all_precisions(source: str, to: str, output: str, quantize, **export_kwargs) -> dict:
    """Build one artifact per precision (name.<mode>.<suffix>), verify each, time each (1 thread)."""
    from deploykit import api
    from deploykit.isolation import run_isolated

    out = Path(output)
    rows = []
    for mode in MODES:
        target = out if mode is None else out.with_name(f"{out.stem}.{mode}{out.suffix}")
        options = replace(quantize, mode=mode) if mode else None
        try:
            result = api.export(source, to, str(target), quantize=options, **export_kwargs)
        except DeploykitError as exc:
            rows.append({"precision": mode or "fp32", "passed": False, "error": exc.one_line(),
                         **_metrics((exc.details.get("parity") or {}).get("outputs", []))})
            continue
        rows.append(_row(mode, result, run_isolated))
    baseline = next((r for r in rows if r["precision"] == "fp32" and "error" not in r), None)
    for row in rows:
        if baseline and "error" not in row:
            row["size_vs_fp32"] = round(row["bytes"] / baseline["bytes"], 3)
            row["speed_vs_fp32"] = round(baseline["latency_ms"] / row["latency_ms"], 2) if row["latency_ms"] else None
    return {"passed": all(r.get("passed") for r in rows), "source": source, "precisions": rows}


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
            "route": " → ".join(h["edge"] for h in result.route), "warnings": result.warnings, **worst}


def _metrics(outputs: list) -> dict:
    return {k: _worst([o.get(k) for o in outputs], k) for k in ("max_abs", "cosine", "top1_agreement",
                                                                   "top5_agreement")}


def _worst(values: list, key: str):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return max(values) if key == "max_abs" else min(values)
