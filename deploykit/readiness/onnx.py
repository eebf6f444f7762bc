"""ONNX readiness (child side): NNAPI and CoreML partitions from ONNX Runtime's mobile checker, the dims that keep
nodes off them (with the ``--input`` that pins them), and the rewrites deploykit can make itself, each re-checked.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from deploykit.manifest import library_versions
from deploykit.readiness import ort_checker, ort_fixes
from deploykit.readiness.report import Coverage, Fix, OpIssue

RUNTIME = "onnxruntime"


def ort_version() -> str:
    return library_versions(("onnxruntime",)).get("onnxruntime", "unknown")


def tables(path: str) -> list:
    """One Coverage per execution provider the checker knows (NNAPI, CoreML NeuralNetwork, CoreML MLProgram)."""
    version = ort_version()
    parsed = ort_checker.parse(ort_checker.run(path), version)
    dynamic, counts = _graph_facts(path)
    return [_coverage(name, parsed[name], version, dynamic, counts) for name in ort_checker.PROVIDERS]


def _coverage(name: str, entry: dict, version: str, dynamic: list, counts: dict) -> Coverage:
    found = entry["as_is"]
    source = f"onnxruntime {version} check_onnx_model_mobile_usability"
    issues = tuple(OpIssue(op=op.split(":", 1)[-1], count=counts.get(op.split(":", 1)[-1], 0),
                           source=f"{source} ({name} supported-ops list)",
                           reason=f"not in {name}'s supported operators", fix=ort_fixes.hint(op.split(":", 1)[-1]))
                   for op in found["unsupported_ops"])
    issues += tuple(OpIssue(op=op.split(":", 1)[-1], count=counts.get(op.split(":", 1)[-1], 0), source=source,
                            reason="input rank above the limit")
                    for op in found["rank_ops"])
    blockers = ()
    if found["dynamic_blocked"]:
        pins = " ".join(f"--input {name_}:{'x'.join(dims)}" for name_, dims in dynamic) or "--input NAME:DIMS"
        blockers = (f"{found['dynamic_blocked']} nodes see a dynamic shape: pin the dims the app feeds ({pins}, "
                    f"each symbolic or ? dim replaced by its size)",)
    notes = tuple(f"{n} nodes are inside If/Loop subgraphs: whether {name} takes them is the EP's call"
                  for n in [found["subgraph_nodes"]] if n)
    fixed = entry.get("fixed")
    if_fixed = ""
    if fixed is not None and entry.get("verdict_fixed"):
        if_fixed = (f"{fixed['supported']}/{fixed['total']} nodes · {fixed['partitions']} partitions · "
                    f"{entry['verdict_fixed']}")
    return Coverage(runtime=RUNTIME, target=name, source=source, verdict=entry["verdict"], measured=False,
                    supported=found["supported"], total=found["total"], partitions=found["partitions"],
                    unsupported=issues, blockers=blockers, if_fixed_shapes=if_fixed, notes=notes)


def _graph_facts(path: str) -> tuple:
    """([(input name, [dim or symbol])] of the inputs with a dim the file leaves open, {op type: nodes in the file,
    subgraphs included})."""
    import collections

    from deploykit.onnx_io import read_onnx

    graph = read_onnx(path).graph
    counts: collections.Counter = collections.Counter()
    pending = [graph]
    while pending:
        current = pending.pop()
        for node in current.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                pending.extend(([attr.g] if attr.HasField("g") else []) + list(attr.graphs))
    stored = {init.name for init in graph.initializer}
    found = []
    for value in graph.input:
        if value.name in stored:
            continue
        # Paddle2ONNX writes a dynamic dim as dim_value -1: a "?" like an unnamed one
        dims = [str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                for d in value.type.tensor_type.shape.dim]
        if any(not d.isdigit() for d in dims):
            found.append((value.name, dims))
    return found, dict(counts)


def checked_fixes(path: str, before: list) -> list:
    """Apply each rewrite deploykit knows to a copy, re-run the checker on it, and keep the before/after."""
    from deploykit.onnx_io import read_onnx

    proto = read_onnx(path)
    fixes = []
    for rewrite in ort_fixes.REWRITES:
        candidate = type(proto)()
        candidate.CopyFrom(proto)
        changed = rewrite.apply(candidate)
        if not changed:
            continue
        with tempfile.TemporaryDirectory(prefix="deploykit-readiness-") as tmp:
            rewritten = Path(tmp) / "rewritten.onnx"
            rewritten.write_bytes(candidate.SerializeToString())
            after = {t.target: t for t in tables(str(rewritten))}
        for table in before:
            if any(issue.op == rewrite.op for issue in table.unsupported):
                fixes.append(Fix(op=rewrite.op, rewrite=rewrite.description, nodes=changed,
                                 before=f"{table.target}: {table.summary()}",
                                 after=f"{table.target}: {after[table.target].summary()}"))
    return fixes


def probe(path: str) -> dict:
    """Every ONNX table for one .onnx file, with the checked rewrites (child side)."""
    from deploykit.transforms import ort_format

    found = tables(path)
    return {"tables": [t.to_dict() for t in found], "fixes": [vars(f) for f in checked_fixes(path, found)],
            "operators": ort_format.operators(path), "tools": {"onnxruntime": ort_version()}}
