"""Human-readable output (rich tables). Machine-readable output is the same data as JSON."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from deploykit.llm import printing as llm_printing
from deploykit.text import clip as _clip
from deploykit.text import printable
from deploykit.text import short_number as _fmt

import sys

# Piped output gets rich's default of 80 columns, too narrow for the metric tables.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 130)


def parity_table(report: dict, title: str = "") -> Table:
    mark = "[green]PASS[/green]" if report["passed"] else "[red]FAIL[/red]"
    heading = title or f"{report['candidate']}  vs  {report['reference']}"
    table = Table(title=f"{heading}  {mark}", title_justify="left")
    for column in ("output", "shape", "status", "max_abs", "mean_abs", "max_rel", "rmse", "cosine", "mismatch",
                   "top-1", "top-5"):  # noqa: E501
        table.add_column(column, justify="left" if column in ("output", "status", "shape") else "right")
    for out in report["outputs"]:
        style = {"pass": "green", "fail": "red"}.get(out["status"], "yellow")
        table.add_row(out["name"], "x".join(map(str, out["shape"])), f"[{style}]{out['status']}[/{style}]",
                      _fmt(out["max_abs"]), _fmt(out["mean_abs"]), _fmt(out["max_rel"]), _fmt(out["rmse"]),
                      _fmt(out["cosine"], 7), _pct(out["mismatch_fraction"]), _pct(out["top1_agreement"]),
                      _pct(out["top5_agreement"]))
    return table


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def print_parity(report: dict, title: str = "") -> None:
    if report.get("unverifiable"):     # never run: no table of metrics, no PASS or FAIL
        from rich.markup import escape      # file and tensor names are the user's, not markup

        console.print(f"{escape(title or report['candidate'])}  [yellow]UNVERIFIED[/yellow]\n  "
                      f"{escape(report['summary'])}")
        for note in report["notes"]:
            console.print(f"  note: {escape(note)}")
        return
    console.print(parity_table(report, title))
    tol = report["tolerance"]
    console.print(f"  {report['samples']} sample(s); tolerance {tol['preset']}: atol {tol['atol']:g}"
                  f"{' × max(1, max|ref|)' if tol['scale_by_reference'] else ''}, rtol {tol['rtol']:g}, "
                  f"cosine ≥ {tol['min_cosine']}")
    for line in report["problems"] + [f"{o['name']}: {o['reason']}" for o in report["outputs"] if o["reason"]]:
        console.print(f"  [red]•[/red] {line}")
    for note in report["notes"]:
        console.print(f"  note: {note}")


def print_routes(routes: list) -> None:
    table = Table(title="routes tried", title_justify="left")
    for column in ("route", "status", "convert s", "max_abs", "cosine", "1-thread p50 ms", "kept"):
        table.add_column(column, justify="left" if column in ("route", "status") else "right")
    for route in routes:
        status = "[green]pass[/green]" if route["passed"] else "[yellow]unverified[/yellow]" if \
            route.get("unverified") else f"[red]{route.get('outcome', 'FAIL')}[/red] {(route['error'] or '')[:70]}"
        table.add_row(route["route"], status, _fmt(route["seconds"]), _fmt(route["max_abs"]),
                      _fmt(route["cosine"], 7), _fmt(route["latency_ms_1thread"]), "✓" if route.get("chosen") else "")
    console.print(table)


def print_precisions(result: dict) -> None:
    table = Table(title=f"precisions of {result['source']} (agreement with the float source)", title_justify="left")
    for column in ("precision", "status", "MiB", "× fp32 size", "1-thread p50 ms", "× fp32 speed", "max_abs", "cosine",
                   "top-1", "top-5"):
        table.add_column(column, justify="left" if column in ("precision", "status") else "right")
    for row in result["precisions"]:
        if "error" in row:
            table.add_row(row["precision"], "[red]FAIL[/red]", "—", "—", "—", "—", _fmt(row.get("max_abs")),
                          _fmt(row.get("cosine"), 5), _pct(row.get("top1_agreement")), _pct(row.get("top5_agreement")))
            continue
        status = "[green]pass[/green]" if row["passed"] else "[yellow]unverified[/yellow]" if row.get("unverified") \
            else "[red]FAIL[/red]"
        table.add_row(row["precision"], status,
                      f"{row['bytes'] / 2**20:.2f}", _fmt(row.get("size_vs_fp32")), _fmt(row["latency_ms"]),
                      _fmt(row.get("speed_vs_fp32")), _fmt(row["max_abs"]), _fmt(row["cosine"], 5),
                      _pct(row["top1_agreement"]), _pct(row["top5_agreement"]))
    console.print(table)
    judged = sorted({row["judged_on"] for row in result["precisions"] if row.get("judged_on")})
    if judged:
        console.print(f"agreement judged on: {'; '.join(judged)}")
    for row in result["precisions"]:
        if "route" in row:
            console.print(f"{row['precision']}: {row['artifact']} via {row['route']}")
        elif "error" in row:
            console.print(f"{row['precision']}: not written — {row['error']}")
    for row in result.get("skipped") or []:
        console.print(f"{row['precision']}: not offered — {row['reason']}")
    for row in result["precisions"]:
        for warning in row.get("warnings", []):
            console.print(f"[yellow]warning ({row['precision']}):[/yellow] {warning}")
    if result.get("report"):
        console.print(f"{result['report']['headline']}\nreport: {result['report']['html']}")


def print_export(result: dict) -> None:
    if result.get("kind") == "causal_lm":
        llm_printing.print_llm_export(result, console)
        return
    if "precisions" in result:
        print_precisions(result)
        return
    print_parity(result["parity"], title=f"parity: {result['artifact']}")
    if len(result.get("routes", [])) > 1:
        print_routes(result["routes"])
    for hop in result["route"]:
        console.print(f"route: {hop['edge']} via {hop['tool']}")
        for note in hop.get("notes") or []:
            console.print(f"  {note}")
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"[green]exported[/green] {result['artifact']} (+ {result['manifest']}) "
                  f"in {result['seconds']:.1f} s")


def print_verify(result: dict) -> None:
    if result.get("kind") == "causal_lm":
        for report in result["reports"]:
            llm_printing.print_oracle(report, console)
        return
    for report in result["comparisons"]:
        print_parity(report)
    for location in result.get("locate", []):
        print_locate(location)
    if result.get("report"):
        console.print(f"report: {result['report']['html']}")
    verdict = "[green]verified[/green]" if result["passed"] else "[red]verification FAILED[/red]"
    console.print(f"{verdict}: {len(result['comparisons'])} comparison(s) in {result['seconds']:.1f} s")


def print_locate(location: dict) -> None:
    """The layer table of ``--locate``: the source's layers in order, each against its artifact counterpart
    (plain columns: a rich table squeezes the layer paths, which are the point of it)."""
    if location["problems"]:
        console.print(f"[yellow]locate {location['candidate']}:[/yellow] {location['summary']}")
        return
    console.print(f"[bold]layers[/bold] of {location['candidate']} vs {location['reference']} "
                  f"({location['preset']} preset, {location['samples']} sample(s))")
    by = {"weight name": "name", "weight values": "values", "weight size and order": "order"}
    rows = [("#", "layer", "op", "shape", "max_abs", "cosine", "rel err", "by", "artifact tensor", "status")]
    for index, row in enumerate(location["rows"]):
        rows.append((str(index), row["layer"], row["op"].split(" → ")[0], "x".join(map(str, row["shape"])),
                     _fmt(row["max_abs"], 2), "—" if row["cosine"] is None else f"{row['cosine']:.6f}",
                     _fmt(row["relative_error"], 2), by.get(row["matched_by"], row["matched_by"]), _clip(row["artifact_tensor"], 32), row["status"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    marks = {location["first_diverging"]: " ◀ first outside the preset", location["largest_growth"]: " ◀ grows most"}
    if location["first_diverging"] is not None and location["first_diverging"] == location["largest_growth"]:
        marks[location["first_diverging"]] = " ◀ first outside the preset, grows most"
    for index, row in enumerate(rows):
        cells = "  ".join(c.rjust(w) if i in (0, 4, 5, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        style = {"pass": "green", "fail": "red"}.get(row[-1], "yellow" if index else "bold")
        console.print(f"  {cells}  [{style}]{row[-1]}[/{style}]{marks.get(index - 1, '')}", soft_wrap=True)
    console.print(f"  {location['summary']}")
    for note in location["notes"]:
        console.print(f"  note: {note}")


def print_inspect(info: dict) -> None:
    console.print(f"[bold]{info['path']}[/bold]  format: {info['format']}"
                  + (f"  size: {info['bytes'] / 1e6:.2f} MB" if "bytes" in info else ""))
    table = Table(title="signature", title_justify="left")
    for column in ("kind", "name", "shape", "dtype", "value range"):
        table.add_column(column)
    for kind in ("inputs", "outputs"):
        for t in info["signature"][kind]:
            rng = t.get("value_range")
            table.add_row(kind[:-1], t["name"], "x".join("?" if d is None else str(d) for d in t["shape"]) or "scalar",
                          t["dtype"],
                          f"[{rng[0]}, {rng[1]})" if rng else "")
    console.print(table)
    if "parameters" in info or "nodes" in info:
        params = f"parameters: {info['parameters']:,}   " if "parameters" in info else ""
        console.print(f"{params}nodes: {info.get('nodes', '—')}")
    if info.get("ops"):
        ops = ", ".join(f"{name}×{count}" for name, count in list(info["ops"].items())[:15])
        more = len(info["ops"]) - 15
        console.print(f"ops: {ops}" + (f", … {more} more" if more > 0 else ""))
    for key in ("opset", "producer"):
        if info.get(key):
            console.print(f"{key}: {info[key]}")
    if info.get("contract"):
        print_contract(info["contract"])
    if info.get("readiness"):
        from deploykit.readiness.printing import print_readiness

        print_readiness(info["readiness"], console)
    if info.get("manifest"):
        if info["manifest"].get("unverified"):
            from rich.markup import escape

            why = info["manifest"]["unverified"]      # the report's summary: "UNVERIFIED: … was not run: …"
            console.print(f"manifest: route {info['manifest']['route']}, "
                          f"{escape(why if why.startswith('UNVERIFIED') else 'UNVERIFIED: ' + why)}")
        else:
            console.print(f"manifest: route {info['manifest']['route']}, parity passed: "
                          f"{info['manifest']['parity_passed']}")


def print_doctor(info: dict) -> None:
    console.print(f"deploykit {info['deploykit']} · Python {info['python']} · {info['platform']} · "
                  f"{info['cpus']} CPUs · GPU: {info['gpu']}")
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    table = Table(title="routes and runtimes", title_justify="left")
    for column in ("kind", "name", "from → to / formats", "available", "install"):
        table.add_column(column)
    for edge in info["routes"]:
        table.add_row("route", edge["edge"], f"{', '.join(edge['from'])} → {edge['to']}", _yes(edge["available"]),
                      edge["hint"])
    for runtime in info["runtimes"]:
        table.add_row("runtime", runtime["runtime"], ", ".join(runtime["formats"]), _yes(runtime["available"]),
                      runtime["hint"])
    console.print(table)
    # Lines the doctor composed, already markup-escaped by the CLI (terminal_safe): printing them without markup
    # would show the escapes ("deploykit\[apple]").
    for section in ("arm64", "apple"):
        for line in info.get(section, {}).get("lines", []):
            console.print(line, highlight=False)


def _yes(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"


def print_samples(built: list) -> None:
    table = Table(title="sample models", title_justify="left")
    for column in ("name", "parameters", "files", "factory"):
        table.add_column(column)
    for item in built:
        files = ", ".join(Path(f).name for f in item.get("files", {}).values())
        table.add_row(item["name"], f"{item['parameters']:,}" if "parameters" in item else "", files,
                      item["factory"])
    console.print(table)


def print_bench_case(case: dict) -> None:
    """One line per case as it finishes (a bench takes minutes)."""
    if case.get("kind") == "causal_lm":
        llm_printing.print_llm_bench_case(case, console)
        return
    name = f"{Path(case['model']).name} · {case['row']} · {case['options'].get('threads')} thread(s)"
    if "error" in case:
        console.print(f"  [red]✗[/red] {name}: {case['error']}")
        return
    if case.get("emulated"):
        console.print(f"  ✓ {name}: emulated on {case['cpu']} (no latency): {_arm_parity(case['parity'])}")
        return
    lat = case["latency_ms"]
    console.print(f"  ✓ {name}: p50 {lat['p50']:.3f} ms (p90 {lat['p90']:.3f}), first result "
                  f"{case['time_to_first_result_s']:.2f} s, peak {case['peak_rss_bytes'] / 2**20:.0f} MiB"
                  + ("  [yellow](noisy)[/yellow]" if case["noisy"] else ""))


def print_bench(result: dict) -> None:
    if result.get("kind") == "causal_lm":
        llm_printing.print_llm_bench(result, console)
        return
    table = Table(title="benchmark: ms per inference after warm-up (all fields: --json or --report)",
                  title_justify="left")
    for column in ("model", "runtime", "thr", "p50", "p90", "p99", "delegated", "per s", "first result s",
                   "peak MiB", "GFLOP/s", "% peak", "ran on"):
        table.add_column(column, justify="left" if column in ("model", "runtime", "delegated", "ran on") else "right",
                         no_wrap=column in ("model", "runtime"))
    for c in result["cases"]:
        if "error" in c:
            table.add_row(Path(c["model"]).name, c["row"], str(c["options"].get("threads")), f"[red]{c['error'][:60]}")
            continue
        if c.get("emulated"):      # an emulated core's wall time is no phone's latency: listed below the table
            continue
        lat = c["latency_ms"]
        table.add_row(Path(c["model"]).name, c["row"] + (" (reference)" if c.get("reference") else ""),
                      str(c["options"].get("threads")),
                      *(_fmt(lat[k]) for k in ("p50", "p90", "p99")), (c.get("delegated") or {}).get("text", "—"),
                      _fmt(c["throughput_per_s"]),
                      _fmt(c["time_to_first_result_s"]), f"{c['peak_rss_bytes'] / 2**20:.0f}",
                      _fmt(c.get("gflops_per_s")), _pct(c.get("fraction_of_peak")),
                      ", ".join(c["providers"]) + (" [yellow]noisy[/yellow]" if c["noisy"] else ""))
    console.print(table)
    for c in result["cases"]:
        if c.get("emulated") and "error" not in c:
            console.print(f"{Path(c['model']).name} · {c['row']}: emulated on {c['core']} — no latency; "
                          f"{_arm_parity(c['parity'])}")
    for skipped in result["skipped"]:
        console.print(f"skipped {skipped['runtime']} for {Path(skipped['model']).name}: {skipped['reason']}")
    for note in result["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    machine = result["machine"]
    console.print(f"machine: {machine['cpu']}, {machine['isa']}, peak {machine['peak_gflops_per_core']} GFLOP/s per "
                  f"core ({machine['assumption']})")
    if result.get("report"):
        console.print(f"[bold]{result['report']['headline']}[/bold]")
        console.print(f"report: {result['report']['html']}")
    elif result.get("headline"):
        from deploykit.benchmark.report import headline_text
        console.print(f"[bold]{headline_text(result, None)}[/bold]")


def _arm_parity(parity: dict) -> str:
    cosine = f"{parity['cosine']:.7f}" if parity.get("cosine") is not None else "—"
    return f"vs {parity['against']} max_abs {parity['max_abs']:.3g}, cosine {cosine}"


def print_report(result: dict) -> None:
    console.print(f"report: {result['html']}\n{result['headline']}")


def print_contract(contract: dict) -> None:
    from deploykit.contract import summary

    console.print("[bold]contract[/bold] (deploykit.contract v1)")
    for line in summary(contract):
        console.print(f"  {line}")


def print_bundle(info: dict) -> None:
    console.print(f"[bold]{info['bundle']}[/bold]  {info['bytes'] / 1e6:.2f} MB, model {info['model']} on "
                  f"{info['runtime']}")
    console.print("files: " + ", ".join(info["files"]))
    if info.get("runtime_bom"):       # what the app's build must include (deploykit.bundle.runtime_bom)
        console.print(info["runtime_bom"], markup=False)
    if info.get("app") == "web":
        print_contract(info["contract"])
        console.print(f"in a browser: deploykit serve {info['bundle']}  (then open /, or /selftest.html for the "
                      "golden vectors); any static host works, single-threaded without COOP/COEP headers")
        return
    console.print("the app needs: " + " ".join(info["runtime_requirements"]))
    if info.get("kind") == "causal_lm":      # a text-generation bundle (deploykit.llm.bundle)
        for line in info["summary"]:
            console.print(f"  {line}", markup=False)
        console.print(f"on the device: cd {info['bundle']} && pip install -r requirements.txt && python app.py "
                      "selftest && python app.py generate \"Once upon a time\"", markup=False)
        return
    print_contract(info["contract"])
    if info.get("unverified"):        # package --keep-unverified: its golden vectors could not run here
        from rich.markup import escape

        console.print(f"[yellow]UNVERIFIED[/yellow]: the bundled model was not run on its golden vectors here "
                      f"({escape(printable(str(info.get('unverified_reason'))))}); its app checks it where it runs")
    console.print(f"on the device: cd {info['bundle']} && pip install -r requirements.txt && "
                  "python app.py selftest")


def print_seed_story(table: dict) -> None:
    """One row per (model, runtime): 1-thread latency, speed-up over PyTorch, size, cold start, parity."""
    out = Table(title="PyTorch for research; for production: ONNX Runtime, LiteRT or ExecuTorch (1 thread)",
                title_justify="left")
    for column in ("model", "runtime", "file", "p50 ms", "× torch", "MB", "cold start s", "peak MiB", "max_abs vs source"):
        out.add_column(column, justify="left" if column in ("model", "runtime", "file") else "right")
    for row in table["rows"]:
        if "error" in row:
            out.add_row(row["model"], row["runtime"], row["file"], "[red]error[/red]", "", "", "", "", row["error"][:60])
            continue
        parity = "source" if row["runtime"] == "torch" else _fmt(row["max_abs"])
        speedup = "reference" if row.get("reference") else _fmt(row.get("speedup_vs_torch"))
        out.add_row(row["model"], row["runtime"], row["file"], _fmt(row["p50_ms"]), speedup,
                    f"{row['size_bytes'] / 1e6:.2f}", f"{row['cold_start_s']:.2f}",
                    f"{row['peak_rss_bytes'] / 2**20:.0f}", parity)
    console.print(out)
    if any(r.get("reference") for r in table["rows"]):
        console.print("  Core AI runs here on coreai-core's CPU path: it proves the .aimodel computes the same thing; "
                      "its time is no iPhone's (no GPU, no Neural Engine), so it is never a speed-up")
    imports = [r for r in table["rows"] if r.get("bindings_import_s")]
    if imports:
        console.print(f"  ExecuTorch's cold start includes {max(r['bindings_import_s'] for r in imports):.1f} s of "
                      "importing its Python bindings (torch + the extension): an app links the C++ runtime instead")


STATUS_STYLE = {"passed": "green", "failed": "red", "crashed": "red", "error": "red", "xfail": "yellow",
                "xpass": "cyan", "unsupported": "dim", "not run": "dim"}


class MatrixProgress:
    """`deploykit matrix` while it runs, on stderr: a progress bar on a terminal, else a line per finished cell
    (what a CI log keeps). Called as ``progress(record, done, total)``."""

    def __init__(self) -> None:
        self.bar = None
        self.err = Console(stderr=True, highlight=False)

    def __enter__(self) -> "MatrixProgress":
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("matrix"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.description}"), console=self.err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=None)
        return self

    def __call__(self, record: dict, done: int, total: int) -> None:
        from rich.markup import escape

        status = record["status"]
        line = (f"[{done}/{total}] {escape(printable(record['model']))} → {record['target']} {record['precision']}: "
                f"[{STATUS_STYLE.get(status, '')}]{status}[/]")
        if record.get("verdict") and status != "passed":
            line += f" — {escape(printable(_clip(record['verdict'], 110)))}"
        if self.bar is not None:
            self.bar.update(self.task, total=total, completed=done,
                            description=f"{escape(printable(record['model']))} {status}")
            self.bar.console.print(line)
        else:
            self.err.print(line, soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_matrix(result: dict) -> None:
    table = Table(title=f"matrix {result['name']}: {result['summary_line']}", title_justify="left")
    for column in ("model", "target", "precision", "status", "cosine", "artifact ms", "speedup", "verdict"):
        table.add_column(column, justify="right" if column in ("cosine", "artifact ms", "speedup") else "left")
    for cell in result["cells"]:
        metrics, status = cell.get("metrics") or {}, cell["status"]
        table.add_row(cell["model"], cell["target"], cell["precision"],
                      f"[{STATUS_STYLE.get(status, '')}]{status}[/]" + (" (reused)" if cell.get("reused") else ""),
                      "—" if metrics.get("cosine") is None else f"{metrics['cosine']:.6f}", _fmt(metrics.get("artifact_p50_ms")),
                      _fmt(metrics.get("speedup")), _clip(cell.get("verdict") or "", 70) if status != "passed" else "")
    console.print(table)
    executor = result["executor"]
    console.print(f"{result['output']}: matrix.html, matrix.json ({executor['executor']}, "
                  f"{executor.get('workers')} worker(s), {result['seconds']} s)")
    Console(stderr=True, highlight=False).print(f"matrix: {result['summary_line']}")     # the CI line: on stderr

