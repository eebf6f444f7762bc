"""The `verify --locate --report DIR` page: error along depth, one line per artifact, and each layer table.

Written as locate.html (plot inlined), locate.png and locate.json, atomically, never over existing
files without --force.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from deploykit.benchmark.report import STYLE, html_table, plotted_page

FILES = ("locate.html", "locate.json", "locate.png")


def build_locate_report(verify: dict, out_dir: "str | Path", force: bool = False) -> dict:
    """Write the page for a verify result that carries ``locate`` tables; returns the files written."""
    return plotted_page(out_dir, "locate", verify, lambda: _plot(verify["locate"]),
                        lambda plot: _render(verify, plot), force)


def _plot(locations: list):
    """Relative error (log scale) of every matched layer, in the source's order; the first layer outside the
    preset is ringed."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4))
    for location in locations:
        points = [(i, row["relative_error"]) for i, row in enumerate(location["rows"])
                  if row["relative_error"] is not None]
        if not points:
            continue
        xs, ys = zip(*points)
        floor = min((y for y in ys if y > 0), default=1e-12) / 10     # exact zeros drawn at the bottom
        line, = axis.plot(xs, [max(y, floor) for y in ys], marker=".", label=location["candidate"])
        first = location["first_diverging"]
        if first is not None:
            axis.scatter([first], [max(location["rows"][first]["relative_error"], floor)], s=160,
                         facecolors="none", edgecolors=line.get_color(), linewidths=2)
            axis.annotate(location["rows"][first]["layer"], (first, location["rows"][first]["relative_error"]),
                          textcoords="offset points", xytext=(6, 8), fontsize=8)
    axis.set_yscale("log")
    axis.set_xlabel("layer (source order)")
    axis.set_ylabel("relative error (rmse / rms)")
    axis.set_title("error along depth (ringed: first layer outside the preset)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _render(verify: dict, plot: Path) -> str:
    encoded = base64.b64encode(plot.read_bytes()).decode()
    parts = [f"<h1>deploykit verify --locate: {html.escape(verify['source'])}</h1>",
             f'<img alt="error along depth" src="data:image/png;base64,{encoded}">']
    for location in verify["locate"]:
        parts.append(f"<h2>{html.escape(location['candidate'])}</h2><p class=headline>"
                     f"{html.escape(location['summary'])}</p>")
        rows = [[i, r["layer"], r["op"], "x".join(map(str, r["shape"])), _num(r["max_abs"]), _num(r["cosine"], 6),
                 _num(r["relative_error"]), r["status"], r["matched_by"], r["artifact_tensor"]]
                for i, r in enumerate(location["rows"])]
        parts.append(html_table(["#", "layer", "op", "shape", "max_abs", "cosine", "relative error", "status",
                                 "matched by", "artifact tensor"], rows))
        parts.extend(f"<p class=note>{html.escape(n)}</p>" for n in location["notes"])
    return (f"<!doctype html><html><head><meta charset=utf-8><title>deploykit locate</title><style>{STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"
