"""The matrix's report: matrix.json (the whole document), matrix.html (models × target/precision grid, coloured
by status) and cells/<key>.html (one cell: verdict, route, parity table, timings), all written to the store."""
from __future__ import annotations

import html
import json

COLOURS = {"passed": "#c8f0c8", "failed": "#f6b9b9", "crashed": "#e08080", "error": "#e08080",
           "unsupported": "#e4e4e4", "xfail": "#f8e3a8", "xpass": "#bde0f6", "not run": "#ffffff"}
STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
         "td,th{border:1px solid #bbb;padding:4px 7px;vertical-align:top}td.cell a{color:#000;text-decoration:none}"
         ".small{color:#555;font-size:11px}.legend span{padding:2px 8px;margin-right:4px}")


def write_report(store, document: dict) -> dict:
    """Write the three kinds of file; returns where they are (the store's references)."""
    for cell in document["cells"]:
        if cell.get("status") != "not run":
            store.write_text(f"cells/{cell['key']}.html", cell_page(cell))
    store.write_text("matrix.json", json.dumps(document, indent=1, default=str))
    store.write_text("matrix.html", grid_page(document))
    return {"html": store.url("matrix.html"), "json": store.url("matrix.json")}


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _dicts(value) -> list:
    """The dict items of a list from a record. A reused record's nested parts come from the store, which anyone
    with access may have edited: the page shows what has the expected shape and skips the rest."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{STYLE}</style>"
            f"</head><body>{body}</body></html>")


def grid_page(document: dict) -> str:
    cells = document["cells"]
    models = list(dict.fromkeys(c["model"] for c in cells))
    columns = list(dict.fromkeys((c["target"], c["precision"]) for c in cells))
    by_place = {(c["model"], c["target"], c["precision"]): c for c in cells}
    head = "".join(f"<th>{_e(t)}<br>{_e(p)}</th>" for t, p in columns)
    rows = []
    for model in models:
        tds = "".join(_grid_cell(by_place.get((model, t, p))) for t, p in columns)
        rows.append(f"<tr><th style='text-align:left'>{_e(model)}</th>{tds}</tr>")
    legend = "".join(f"<span style='background:{c}'>{_e(s)}</span>" for s, c in COLOURS.items())
    executor = document.get("executor", {})
    return _page(f"matrix {document['name']}", (
        f"<h1>deploykit matrix: {_e(document['name'])}</h1>"
        f"<p><b>{_e(document['summary_line'])}</b> — {len(cells)} cell(s) in {document['seconds']} s on "
        f"{_e(executor.get('executor'))} ({_e(executor.get('workers'))} worker(s))"
        f"{' — <b>interrupted</b>: rerun the same command to finish' if document.get('interrupted') else ''}</p>"
        f"<p class='legend'>{legend}</p><table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"
        f"<p class='small'>Each cell links to its parity table, route and timings. Spec: {_e(document['spec'])}</p>"))


def _grid_cell(cell) -> str:
    if cell is None:
        return "<td></td>"
    status, metrics = cell["status"], cell.get("metrics") or {}
    lines = [f"<b>{_e(status)}</b>"]
    if "cosine" in metrics:
        lines.append(f"cos {metrics['cosine']:.6f}")
    if "artifact_p50_ms" in metrics:
        lines.append(f"{metrics['artifact_p50_ms']:.3g} ms ({_e(metrics.get('artifact_row'))})")   # a stored record may lack the row
        lines.append(_delegated(metrics))
    if "speedup" in metrics:
        lines.append(f"×{metrics['speedup']} vs {_e(metrics.get('source_row'))}")
    if cell.get("verdict") and status != "passed":
        lines.append(f"<span class='small'>{_e(cell['verdict'][:90])}</span>")
    if cell.get("reused"):
        lines.append("<span class='small'>reused</span>")
    elif cell.get("rerun_because"):
        lines.append(f"<span class='small'>rerun: {_e(cell['rerun_because'][:90])}</span>")
    body = "<br>".join(lines)
    if status != "not run":
        body = f"<a href='cells/{_e(cell['key'])}.html'>{body}</a>"
    return f"<td class='cell' style='background:{COLOURS.get(status, '#fff')}'>{body}</td>"


def _delegated(metrics: dict) -> str:
    """The artifact row's delegation, measured here, beside its latency ("—" for a record stored before deploykit
    recorded it), and the phone accelerators' predicted verdicts in small type."""
    line = f"delegated: {_e(metrics.get('delegated') or '—')}"
    predicted = metrics.get("predicted")
    if isinstance(predicted, list) and predicted:
        line += f"<br><span class='small'>predicted: {_e(', '.join(map(str, predicted)))}</span>"
    return line


def cell_page(cell: dict) -> str:
    parts = [f"<h1>{_e(cell['model'])} → {_e(cell['target'])} {_e(cell['precision'])}: {_e(cell['status'])}</h1>",
             f"<p>{_e(cell.get('verdict') or '')}</p>", _facts(cell), _route(cell), _parity(cell), _bench(cell),
             f"<h2>Versions</h2><p class='small'>{_e(json.dumps(cell.get('versions', {})))}</p>",
             "<p><a href='../matrix.html'>back to the matrix</a></p>"]
    return _page(f"{cell['model']} {cell['target']} {cell['precision']}", "".join(parts))


def _facts(cell: dict) -> str:
    facts = [("key", cell["key"]), ("source", cell.get("source")), ("artifact", cell.get("artifact")),
             ("bytes", cell.get("artifact_bytes")), ("attempts", cell.get("attempts")),
             ("seconds", json.dumps(cell.get("phases") or {})), ("finished", cell.get("finished_at")),
             ("rerun because", cell.get("rerun_because"))]
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{_e(v)}</td></tr>" for k, v in facts if v is not None) + "</table>"


def _route(cell: dict) -> str:
    routes = _dicts(_dict(cell.get("export")).get("routes"))
    if not routes:
        return ""
    rows = "".join(f"<tr><td>{_e(r.get('route'))}</td><td>{_e(r.get('outcome'))}</td><td>{_e(r.get('seconds'))}</td>"
                   f"<td>{_e(r.get('cosine'))}</td><td>{_e(r.get('error'))}</td></tr>" for r in routes)
    return f"<h2>Routes tried</h2><table><tr><th>route</th><th>outcome</th><th>s</th><th>cosine</th><th>error</th></tr>{rows}</table>"


def _parity(cell: dict) -> str:
    comparisons = _dicts(_dict(cell.get("verify")).get("comparisons"))
    if not comparisons:
        comparisons = [_dict(_dict(cell.get("export")).get("parity"))]
    blocks = []
    for comparison in comparisons:
        rows = "".join(f"<tr><td>{_e(o.get('name'))}</td><td>{_e(o.get('max_abs'))}</td><td>{_e(o.get('cosine'))}</td>"
                       f"<td>{_e(o.get('passed'))}</td></tr>" for o in _dicts(comparison.get("outputs")))
        if rows:
            blocks.append(f"<p>{_e(comparison.get('reference'))} vs {_e(comparison.get('candidate'))}: "
                          f"{_e(comparison.get('summary'))}</p><table><tr><th>output</th><th>max_abs</th>"
                          f"<th>cosine</th><th>passed</th></tr>{rows}</table>")
    return "<h2>Parity</h2>" + "".join(blocks) if blocks else ""


def _bench(cell: dict) -> str:
    cases = _dicts(_dict(cell.get("bench")).get("cases"))
    if not cases:
        return ""
    rows = "".join(f"<tr><td>{_e(c.get('row'))}</td><td>{_e(c.get('model'))}</td>"
                   f"<td>{_e(_dict(c.get('latency_ms')).get('p50'))}</td><td>{_e(_dict(c.get('latency_ms')).get('p90'))}</td>"
                   f"<td>{_e(_dict(c.get('delegated')).get('text') or '—')}</td>"
                   f"<td>{_e(_dict(c.get('delegated')).get('predicted') or '—')}</td>"
                   f"<td>{_e(c.get('peak_rss_bytes'))}</td><td>{_e(c.get('time_to_first_result_s'))}</td>"
                   f"<td>{_e(c.get('error'))}</td></tr>" for c in cases)
    return (f"<h2>Timings (1 thread, pinned to core {_e(cell.get('bench_core'))})</h2><table><tr><th>runtime</th>"
            f"<th>model</th><th>p50 ms</th><th>p90 ms</th><th>delegated (measured here)</th>"
            f"<th>phone accelerator (predicted)</th><th>peak RSS</th><th>first result s</th><th>error</th></tr>"
            f"{rows}</table>")
