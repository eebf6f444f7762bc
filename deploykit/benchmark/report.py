"""The research-vs-production report: a self-contained HTML page, its PNG plots and the JSON."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Optional

from deploykit import fsutil
from deploykit.benchmark import delegation
from deploykit.errors import MissingDependency

PLOTS = ("latency", "cold_start", "memory", "size", "footprint")
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
         "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
         ".headline{font-size:1.3em;font-weight:bold}.note{color:#a60}img{max-width:100%}")


def build_report(bench: dict, out_dir: "str | Path", parity: Optional[dict] = None, footprint: Optional[dict] = None,
                 force: bool = False) -> dict:
    """Write report.html, report.json and one PNG per plot into ``out_dir``; returns the paths."""
    _matplotlib()
    out = Path(out_dir)
    footprint = footprint if footprint is not None else runtime_footprints()
    data = {**bench, "parity": parity, "footprint": footprint, "headline_text": headline_text(bench, parity)}
    # Only timed rows are plotted: an ARM row's emulated wall time is no latency (its parity is in the table).
    ok = [c for c in bench["cases"] if "error" not in c and "latency_ms" in c]
    drawers = {"latency": _plot_latency, "cold_start": _plot_cold_start, "memory": _plot_memory,
               "size": _plot_size, "footprint": _plot_footprint}
    plots = {f"{name}.png": (lambda draw=drawers[name]: draw(ok, footprint)) for name in PLOTS}
    written = _write_all(out, plots, {"report.json": json.dumps(data, indent=2, default=str)},
                         ("report.html", lambda staged: render_html(data, {n: staged[f"{n}.png"] for n in PLOTS})),
                         force)
    return {"html": written["report.html"], "json": written["report.json"],
            "plots": {name: written[f"{name}.png"] for name in PLOTS}, "headline": data["headline_text"]}


def plotted_page(out_dir: "str | Path", stem: str, data: dict, draw, render, force: bool = False) -> dict:
    """Write ``<stem>.png`` (``draw()``'s figure), ``<stem>.json`` (``data``) and ``<stem>.html`` (``render(png)``)
    into ``out_dir``, atomically, never over existing files without ``force``; returns their paths."""
    _matplotlib()
    png = f"{stem}.png"
    written = _write_all(Path(out_dir), {png: draw}, {f"{stem}.json": json.dumps(data, indent=2, default=str)},
                         (f"{stem}.html", lambda staged: render(staged[png])), force)
    return {"html": written[f"{stem}.html"], "json": written[f"{stem}.json"], "plot": written[png]}


# Names from model files and layers reach plot labels; matplotlib would parse "$...$" in them as mathtext (a
# "$\frac{1}{0}$" file name crashed the report) or hand them to LaTeX. Text is drawn as written.
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}


def _write_all(out: Path, plots: dict, texts: dict, page: tuple, force: bool) -> dict:
    """Draw and write every file of a report in a staging folder beside ``out``, then publish them all: a report
    that fails part-way leaves nothing behind (not even the folder it created). Returns name -> final path."""
    import matplotlib

    names = [*plots, *texts, page[0]]
    with fsutil.parents_removed_on_failure(out / names[0]):
        for name in names:
            fsutil.prepare_output(out / name, force)
        with fsutil.staging_dir(out) as stage:
            staged = {name: stage / name for name in names}
            with matplotlib.rc_context(LITERAL_TEXT):
                for name, draw in plots.items():
                    save_figure(draw(), staged[name])
            for name, text in texts.items():
                fsutil.write_text_atomic(staged[name], text)
            fsutil.write_text_atomic(staged[page[0]], page[1](staged))
            fsutil.publish([(staged[name], out / name) for name in names], force=force)
    return {name: str(out / name) for name in names}


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise MissingDependency.for_package("matplotlib", "report", "needed to draw the report's plots") from None
    matplotlib.use("Agg")
    return matplotlib


def save_figure(figure, path: Path) -> None:
    """Save a matplotlib figure atomically and release it: the PNG goes to fsutil's temporary file in ``path``'s
    folder (a handle, so matplotlib never opens a name a planted link could redirect) and is renamed over ``path``."""
    import matplotlib.pyplot as plt

    try:
        with fsutil.atomic_writer(path) as handle:
            figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)


def runtime_footprints() -> dict:
    """Installed bytes of each runtime's minimal environment (package + what it requires, numpy included)."""
    from deploykit.machine import install_footprint
    from deploykit.registry import runtime_distributions

    return {name: install_footprint(dists) for name, dists in runtime_distributions().items()}


def headline_text(bench: dict, parity: Optional[dict]) -> str:
    """The report's first line: production against research, then each production row that is slower or left
    part of the model off its delegate (``delegation.findings``), with the numbers."""
    findings = (bench.get("delegation") or {}).get("findings") or []
    return _speed_text(bench, parity) + "".join(f". {sentence}" for sentence in findings)


def _speed_text(bench: dict, parity: Optional[dict]) -> str:
    head = bench.get("headline")
    if not head:
        return "no research/production pair at the same threads and batch was measured"
    error = _max_error(parity)
    text = (f"production vs research: {head['speedup']}× faster, {head['memory_ratio']}× less memory, "
            f"{head['startup_ratio']}× faster to start ({head['production']} vs {head['research']}, "
            f"{head['threads']} thread(s))")
    text += f", with max error {error:.2e}" if error is not None else ", parity not measured"
    browser = head.get("browser")
    if browser:
        text += (f"; in the browser: {browser['row']} {browser['p50_ms']:.3g} ms, {browser['speedup_vs_research']}× "
                 f"vs research, {browser['slowdown_vs_native']}× the native time")
    return text


def _max_error(parity: Optional[dict]):
    if not parity:
        return None
    values = [o["max_abs"] for c in parity.get("comparisons", []) for o in c["outputs"] if o.get("max_abs") is not None]
    return max(values) if values else None


def _label(case: dict) -> str:
    batch = f", b{case['batch']}" if case.get("batch") else ""
    return f"{case['row']}\n{Path(case['model']).suffix or 'dir'} t{case['options'].get('threads')}{batch}"


RESEARCH_MARKERS = ("torch", "tensorflow", ".pt", ".keras", ".h5")


def _bars(values: list, labels: list, title: str, unit: str, errors=None):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(5, 1.1 * len(values) + 2), 3.6))
    # Red: the research side (framework runtimes and files), blue: production runtimes and artifacts.
    colors = ["#c0504d" if any(m in label for m in RESEARCH_MARKERS) else "#4f81bd" for label in labels]
    axis.bar(range(len(values)), values, color=colors, yerr=errors, capsize=4)
    axis.set_xticks(range(len(values)), labels, fontsize=8)
    axis.set_ylabel(unit)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    return figure


def _plot_latency(cases: list, _footprint):
    p50 = [c["latency_ms"]["p50"] for c in cases]
    low = [c["latency_ms"]["p50"] - c["latency_ms"]["min"] for c in cases]
    high = [c["latency_ms"]["p90"] - c["latency_ms"]["p50"] for c in cases]
    return _bars(p50, [_label(c) for c in cases], "latency per inference: p50, whiskers min..p90", "ms", [low, high])


def _plot_cold_start(cases: list, _footprint):
    return _bars([c["time_to_first_result_s"] for c in cases], [_label(c) for c in cases],
                 "cold start: process start → first result", "s")


def _plot_memory(cases: list, _footprint):
    return _bars([c["peak_rss_bytes"] / 2**20 for c in cases], [_label(c) for c in cases],
                 "peak resident memory of the process", "MiB")


def _plot_size(cases: list, _footprint):
    sizes = {}
    for case in cases:
        sizes[Path(case["model"]).name] = case["size_bytes"] / 2**20
    return _bars(list(sizes.values()), list(sizes), "artifact size on disk", "MiB")


def _plot_footprint(_cases, footprint: dict):
    names = [n for n, v in footprint.items() if v["bytes"]]
    return _bars([footprint[n]["bytes"] / 2**20 for n in names], names,
                 "install footprint of each runtime's minimal environment", "MiB")


def render_html(data: dict, images: dict) -> str:
    """One page, images inlined as data URIs so the file can be mailed or attached as is."""
    def img(name):
        encoded = base64.b64encode(Path(images[name]).read_bytes()).decode()
        return f'<img alt="{name}" src="data:image/png;base64,{encoded}">'

    machine = data["machine"]
    parts = [f"<h1>deploykit: research vs production</h1><p class=headline>{html.escape(data['headline_text'])}</p>",
             f"<p>{html.escape(str(machine.get('cpu')))}, {machine.get('cores')} cores, {machine.get('isa')}; "
             f"fp32 peak {machine.get('peak_gflops_per_core')} GFLOP/s per core "
             f"({html.escape(machine.get('assumption', ''))})</p>",
             "".join(f"<p class=note>{html.escape(n)}</p>" for n in data.get("notes", [])),
             "<h2>Latency</h2>" + img("latency"), _cases_table(data["cases"]), _arm_table(data["cases"]),
             "<h2>Cold start</h2>" + img("cold_start"), "<h2>Peak memory</h2>" + img("memory"),
             "<h2>Artifact size</h2>" + img("size"), "<h2>Install footprint</h2>" + img("footprint"),
             _footprint_table(data["footprint"]), "<h2>Parity</h2>" + _parity_table(data.get("parity")),
             _skipped(data.get("skipped", []))]
    return (f"<!doctype html><html><head><meta charset=utf-8><title>deploykit report</title><style>{STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def html_table(headers: list, rows: list) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cases_table(cases: list) -> str:
    rows = []
    for c in cases:
        if "error" in c:
            rows.append([Path(c["model"]).name, c["row"], c["options"].get("threads"), "error: " + c["error"]]
                        + [""] * 12)
            continue
        if "latency_ms" not in c:       # an emulated ARM row: in _arm_table, never in the latency columns
            continue
        lat = c["latency_ms"]
        rows.append([Path(c["model"]).name, c["row"], c["options"].get("threads"), ", ".join(c["providers"]),
                     f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}", f"{lat['std']:.3f}",
                     delegation.text(c), delegation.predicted_text(c), f"{c['throughput_per_s']}",
                     f"{c['time_to_first_result_s']:.2f}",
                     f"{c['peak_rss_bytes'] / 2**20:.0f}", c.get("gflops_per_s", "—"),
                     f"{c['fraction_of_peak']:.0%}" if c.get("fraction_of_peak") is not None else "—",
                     "noisy" if c["noisy"] else ""])
    return html_table(["model", "runtime", "threads", "ran on", "p50 ms", "p90 ms", "p99 ms", "std ms",
                       "delegated (measured here)", "phone accelerator (predicted)", "per s", "first result s",
                       "peak MiB", "GFLOP/s", "% of peak", ""], rows)


def _footprint_table(footprint: dict) -> str:
    return html_table(["runtime", "MiB installed", "distributions"],
                      [[n, f"{v['bytes'] / 2**20:.0f}", ", ".join(v["distributions"])] for n, v in footprint.items()])


def _parity_table(parity: Optional[dict]) -> str:
    if not parity:
        return "<p>not measured (give the source model first to compare the artifacts with it)</p>"
    rows = [[c["candidate"], c["reference"], o["name"], "pass" if c["passed"] else "FAIL", f"{o['max_abs']:.3g}",
             f"{o['cosine']:.7f}" if o.get("cosine") is not None else "—"]
            for c in parity["comparisons"] for o in c["outputs"]]
    return html_table(["artifact", "reference", "output", "status", "max_abs", "cosine"], rows)


def _skipped(skipped: list) -> str:
    if not skipped:
        return ""
    return "<h2>Skipped</h2>" + html_table(["model", "runtime", "reason"],
                                           [[Path(s["model"]).name, s["runtime"], s["reason"]] for s in skipped])


def _arm_table(cases: list) -> str:
    """The ARM rows: what the emulated core computes against the native runtime on the same feeds; no time."""
    rows = [[Path(c["model"]).name, c["row"], c["core"], c["parity"]["against"], f"{c['parity']['max_abs']:.3g}",
             f"{c['parity']['cosine']:.7f}" if c["parity"].get("cosine") is not None else "—"]
            for c in cases if c.get("emulated") and "error" not in c]
    if not rows:
        return ""
    return ("<h2>Emulated ARM cores (parity, not latency)</h2><p>qemu runs these 300-500x slower than the phone: "
            "their wall time is not reported.</p>"
            + html_table(["model", "runtime", "core", "against", "max_abs", "cosine"], rows))
