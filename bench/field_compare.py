"""Two runs of bench/field_corpus.py (its --json files) side by side: `field_corpus.py --compare BEFORE AFTER`.

Rows are matched by (model, target); a row only one run has is shown against "—". Changed rows are marked, and the
totals of both runs close the table.
"""
from __future__ import annotations

from typing import Callable


def _key(row: dict) -> tuple:
    return row["model"], row["target"]


def _cell(row, short: Callable) -> str:
    if row is None:
        return "—"
    if row.get("verdict") == "already in this format":
        return "already"
    if row.get("passed"):
        cosine = "" if row.get("cosine") is None else f" (cos {row['cosine']:.6f})"
        return f"✅ {row.get('route', '')}{cosine}"
    return f"❌ exit {row.get('exit_code', 1)}: {short(row.get('verdict') or '')}"


def compare_runs(before: list, after: list, totals: Callable, short: Callable) -> str:
    """A markdown table of every row of either run, before → after, then both runs' totals.

    ``totals`` and ``short`` are field_corpus's own (the per-target count lines and the verdict shortener), so the
    comparison counts exactly as a single run does."""
    old, new = {_key(r): r for r in before}, {_key(r): r for r in after}
    keys = list(old) + [k for k in new if k not in old]
    lines = ["| model | target | before | after | |", "|---|---|---|---|---|"]
    fixed = broken = 0
    for key in keys:
        a, b = old.get(key), new.get(key)
        if (a or b).get("verdict") == "already in this format":
            continue
        passed_a, passed_b = bool(a and a.get("passed")), bool(b and b.get("passed"))
        mark = "only before" if b is None else "only after" if a is None else \
            "fixed" if passed_b and not passed_a else "BROKE" if passed_a and not passed_b else ""
        fixed, broken = fixed + (mark == "fixed"), broken + (mark == "BROKE")
        lines.append(f"| {key[0]} | {key[1]} | {_cell(a, short)} | {_cell(b, short)} | {mark} |")
    lines += ["", "before: " + "; ".join(totals(before)), "after:  " + "; ".join(totals(after)),
              f"{fixed} row(s) fixed, {broken} row(s) broken"]
    return "\n".join(lines)
