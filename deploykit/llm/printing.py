"""Human-readable output for causal LMs (rich tables on the caller's console): the generation oracle, the bench."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from deploykit.text import clip as _clip
from deploykit.text import printable
from deploykit.text import short_number as _fmt


def print_llm_export(result: dict, console) -> None:
    print_oracle(result["report"], console)
    where = result["artifact"] or "nothing written (the artifact failed the oracle)"
    console.print(f"artifact: {printable(where)}")
    for note in result.get("notes", []):
        console.print(f"note: {printable(note)}")


def print_llm_bench_case(case: dict, console) -> None:
    """One line per bench case as it finishes."""
    name = f"{Path(case['model']).name} · {case['row']} · {case['threads']} thread(s)"
    if "error" in case:
        console.print(f"  [red]✗[/red] {printable(name)}: {printable(case['error'])}")
    else:
        console.print(f"  [green]✓[/green] {printable(name)}: first token {case['ttft_ms']:.1f} ms, "
                      f"{case['decode_tok_s']:.1f} tokens/s")


def print_oracle(report: dict, console) -> None:
    """The generation oracle's report: one row per stage, then one per prompt (``deploykit.llm.oracle``)."""
    mark = "[green]PASS[/green]" if report["passed"] else "[red]FAIL[/red]"
    table = Table(title=f"generation oracle: {printable(Path(report['artifact']).name)} on {report['runtime']} vs "
                        f"{printable(Path(report['source']).name)}  {mark}  ({report['precision']}, "
                        f"{report['tokens']} tokens, {len(report['prompts'])} prompts)", title_justify="left")
    for column in ("stage", "verdict", "detail"):
        table.add_column(column)
    for name, stage in report["stages"].items():
        verdict = "[green]pass[/green]" if stage["passed"] else "[red]fail[/red]"
        table.add_row(name, verdict, printable(stage["detail"]))
    console.print(table)
    prompts = Table(title="per prompt (the artifact's own greedy continuation)",
                    title_justify="left")
    for column in ("#", "prompt", "tok", "prefill max_abs", "worst step", "diverges at", "artifact continuation"):
        prompts.add_column(column, justify="right" if column in ("#", "tok", "prefill max_abs", "worst step")
                           else "left", overflow="fold")
    for number, p in enumerate(report["prompts"], 1):
        worst = p.get("worst_step") or {}
        d = p.get("divergence")
        where = "—" if not d else f"token {d['step'] + 1}{' (near-tie)' if d['near_tie'] else ''}"
        prompts.add_row(str(number), printable(_clip(p["prompt"], 32)), str(p["prompt_tokens"]),
                        _fmt(p["prefill"]["max_abs"]), _fmt(worst.get("max_abs")), where,
                        printable(_clip(p["artifact_text"].replace("\n", "⏎"), 48)))
    console.print(prompts)
    for problem in report.get("problems", []):
        console.print(f"[red]problem:[/red] {printable(problem)}")



def print_llm_bench(result: dict, console) -> None:
    """A causal LM's bench: time to first token and decode speed beside the memory-bandwidth bound."""
    table = Table(title=f"causal LM: first token for a {result['prompt_tokens']}-token prompt, decode over "
                        f"{result['tokens']} tokens (median of {result['repeats']} generations); memory bandwidth "
                        f"{result['bandwidth_gb_s']:.1f} GB/s (1 thread)", title_justify="left")
    for column in ("model", "runtime", "precision", "thr", "first token ms", "decode tok/s", "bound tok/s",
                   "% of bound", "peak MiB", "size MB", "cold start s"):
        table.add_column(column, justify="left" if column in ("model", "runtime", "precision") else "right")
    for r in result["rows"]:
        if "error" in r:
            table.add_row(printable(Path(r["model"]).name), r["row"], r["precision"], str(r["threads"]),
                          f"[red]{printable(r['error'][:60])}[/red]", *[""] * 6)
            continue
        table.add_row(printable(Path(r["model"]).name), r["row"], r["precision"], str(r["threads"]),
                      f"{r['ttft_ms']:.1f}", f"{r['decode_tok_s']:.1f}", f"{r['bound_tok_s']:.1f}",
                      f"{100 * r['bound_fraction']:.0f}%", f"{r['peak_mib']:.0f}", f"{r['size_bytes'] / 1e6:.1f}",
                      f"{r['cold_start_s']:.2f}")
    console.print(table)
    head = result.get("headline")
    if head:
        console.print(f"production vs research: {head['production']} decodes {head['speedup']:.2f}× the "
                      f"{head['research']} source at 1 thread ({100 * head['bound_fraction']:.0f}% of the bandwidth "
                      f"bound)")
    for note in result.get("notes", []):
        console.print(f"note: {printable(note)}")
