"""The `--quantize all` report: size and latency beside the accuracy cost, one row per precision.

Written as precisions.html (plot inlined), precisions.png and precisions.json, atomically,
never over existing files without --force.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from deploykit.benchmark.report import plotted_page

FILES = ("precisions.html", "precisions.json", "precisions.png")


def build_precision_report(table: dict, out_dir: "str | Path", force: bool = False) -> dict:
    written = plotted_page(out_dir, "precisions", table, lambda: _plot(table["precisions"]),
                           lambda plot: render(table, plot), force)
    return {**written, "headline": headline(table)}


def headline(table: dict) -> str:
    """The smallest precision that passed its preset and is not slower than fp32 (else the smallest that
    passed), in the three numbers a user weighs."""
    built = [r for r in table["precisions"] if r.get("passed") and r["precision"] != "fp32" and "bytes" in r]
    if not built:
        return "no quantized precision passed its preset: keep fp32"
    not_slower = [r for r in built if (r.get("speed_vs_fp32") or 0) >= 0.95]
    best = min(not_slower or built, key=lambda r: r["bytes"])
    agreement = (f"top-1 agreement {best['top1_agreement']:.0%}" if best.get("top1_agreement") is not None
                 else f"cosine {best['cosine']:.5f}")
    return (f"{best['precision']}: {best['size_vs_fp32']}× the fp32 size, {best['speed_vs_fp32']}× its 1-thread speed, "
            f"{agreement} with the float source")


def _plot(rows: list):
    """Three panels: size, latency, agreement; every bar carries its number (agreement is often 100 %)."""
    import matplotlib.pyplot as plt

    built = [r for r in rows if "bytes" in r]
    labels = [r["precision"] for r in built]
    classes = any(r.get("top1_agreement") is not None for r in built)
    agreement = [100 * (r.get("top1_agreement") or 0) if classes else r.get("cosine") or 0 for r in built]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = ((axes[0], [r["bytes"] / 2**20 for r in built], "size on disk (MiB)", "{:.2f}"),
              (axes[1], [r["latency_ms"] or 0 for r in built], "latency, 1 thread (ms, p50)", "{:.2f}"),
              (axes[2], agreement, "top-1 agreement with the float source (%)" if classes
               else "cosine with the float source", "{:.1f}" if classes else "{:.5f}"))
    for axis, values, title, form in panels:
        colors = ["#4f81bd" if r["passed"] else "#c0504d" for r in built]
        bars = axis.bar(range(len(values)), values, color=colors)
        axis.bar_label(bars, [form.format(v) for v in values], fontsize=8)
        axis.set_xticks(range(len(values)), labels)
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        axis.margins(y=0.15)
    return figure


def render(table: dict, plot: Path) -> str:
    from deploykit.benchmark.report import STYLE, html_table

    encoded = base64.b64encode(Path(plot).read_bytes()).decode()
    rows = [[r["precision"], "pass" if r.get("passed") else "FAIL", _mib(r), _num(r.get("size_vs_fp32")),
             _num(r.get("latency_ms")), _num(r.get("speed_vs_fp32")), _num(r.get("max_abs")),
             _num(r.get("cosine"), 6), _pct(r.get("top1_agreement")), _pct(r.get("top5_agreement")),
             r.get("judged_on", ""), r.get("route") or r.get("error", "")] for r in table["precisions"]]
    warnings = sorted({w for r in table["precisions"] for w in r.get("warnings", [])})
    parts = [f"<h1>deploykit: precisions of {html.escape(Path(table['source']).name)}</h1>",
             f"<p class=headline>{html.escape(headline(table))}</p>",
             f'<img alt="precisions" src="data:image/png;base64,{encoded}">',
             html_table(["precision", "status", "MiB", "× fp32 size", "1-thread ms", "× fp32 speed", "max_abs",
                         "cosine", "top-1", "top-5", "judged on", "route / error"], rows),
             "".join(f"<p class=note>{html.escape(w)}</p>" for w in warnings)]
    return (f"<!doctype html><html><head><meta charset=utf-8><title>deploykit precisions</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def _mib(row: dict) -> str:
    return f"{row['bytes'] / 2**20:.2f}" if "bytes" in row else "—"


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _pct(value) -> str:
    return "—" if value is None else f"{value:.0%}"
