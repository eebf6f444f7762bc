"""`inspect --readiness` on the terminal: one table of delegates, then what each refuses and why, the rewrites
deploykit checked, the notes, and the operators the app's runtime must ship. Works on the ``to_dict`` form (the CLI
prints what ``--json`` would write, control characters already escaped)."""
from __future__ import annotations

from rich.table import Table


def print_readiness(data: dict, console) -> None:
    table = Table(title=f"readiness: {data['path']} ({data['format']})", title_justify="left")
    for column in ("runtime", "delegate / EP", "takes", "verdict", "how"):
        table.add_column(column)
    for row in data.get("tables", []):
        table.add_row(row["runtime"], row["target"], _takes(row), row["verdict"],
                      "measured here" if row.get("measured") else "predicted")
    if data.get("tables"):
        console.print(table)
    for row in data.get("tables", []):
        console.print(f"  {row['target']}: source: {row['source']}")
        _print_refusals(row, console)
    for fix in data.get("fixes", []):
        console.print(f"fix checked: {fix['rewrite']} ({fix['nodes']} node{'s' * (fix['nodes'] != 1)}): "
                      f"{fix['before']}  →  {fix['after'].split(': ', 1)[-1]}")
    for note in data.get("notes", []):
        console.print(f"note: {note}")
    bom = data.get("operators") or {}
    if bom:
        console.print(f"runtime must include: {operator_summary(bom)}")


def _takes(row: dict) -> str:
    parts = []
    if row.get("total"):
        parts.append(f"{row['supported']}/{row['total']} {row.get('unit', 'nodes')}")
    if row.get("partitions") is not None:
        parts.append(f"{row['partitions']} partition{'s' * (row['partitions'] != 1)}")
    if row.get("flop_share") is not None:
        parts.append(f"{row['flop_share']:.0%} FLOPs")
    if row.get("if_fixed_shapes"):
        parts.append(f"fixed shapes: {row['if_fixed_shapes']}")
    return " · ".join(parts) or "—"


def _print_refusals(row: dict, console) -> None:
    for issue in row.get("unsupported", []):
        count = f" ×{issue['count']}" if issue.get("count") else ""
        nodes = f" (nodes {', '.join(map(str, issue['nodes']))})" if issue.get("nodes") else ""
        fix = f" — fix: {issue['fix']}" if issue.get("fix") else ""
        console.print(f"  {row['target']}: {issue['op']}{count}{nodes}: {issue['reason']} (source: {issue['source']}){fix}")
    for blocker in row.get("blockers", []):
        console.print(f"  {row['target']}: {blocker}")
    for note in row.get("notes", []):
        console.print(f"  {row['target']}: {note}")


def operator_summary(bom: dict) -> str:
    """'12 builtin operators (CONV_2D v1, …), 3 custom (…)' — one line of a bill of materials."""
    if "builtin_operators" in bom:
        builtin = [f"{e['op']} v{'/'.join(map(str, e['versions']))}" for e in bom["builtin_operators"]]
        custom = [e["op"] for e in bom.get("custom_operators", [])]
        text = f"{len(builtin)} builtin operators ({', '.join(builtin[:8])}{', …' if len(builtin) > 8 else ''})"
        return text + (f", {len(custom)} custom ({', '.join(custom)})" if custom else "")
    ops = [f"{op['domain']}:{op['op']}" if isinstance(op, dict) else str(op) for op in bom.get("operators") or []]
    shown = ", ".join(ops[:8]) + (", …" if len(ops) > 8 else "")
    backends = bom.get("delegate_backends") or []
    text = f"{len(ops)} kernel operators" + (f" ({shown})" if ops else "")
    return text + (f", delegate backends: {', '.join(backends)}" if backends else "") + f" — {bom.get('tool', '')}"
