"""LiteRT readiness (child side): what XNNPACK really takes here, what the GPU delegate would take by its own
published rules, and the operators (codes and versions) a selective LiteRT build must register.

XNNPACK is *measured*: the LiteRT interpreter applies its default XNNPACK delegate at ``allocate_tensors`` and lists
the resulting delegate kernels after the original nodes (``_get_ops_details``, private but what LiteRT's own
visualizer reads). A delegate kernel's region is the set of original nodes between its input and output tensors:
walking producers back from its outputs and stopping at its inputs finds exactly the nodes it replaced.

The GPU delegate cannot run here (no mobile GPU, and the wheels ship no GPU delegate), so its table is *predicted* by
``deploykit.readiness.litert_gpu`` from the delegate's compatibility rules; TFLite's own analyzer is run beside it and
its claim is reported only to say where it disagrees (``deploykit.readiness.litert_analyzer`` says why it does).
"""
from __future__ import annotations

import collections

from deploykit.errors import ModelLoadError
from deploykit.manifest import library_versions
from deploykit.readiness.report import Coverage, OpIssue, measured_verdict, suitability
from deploykit.text import one_line

LITERT = "litert"


def litert_version() -> str:
    return library_versions(("ai-edge-litert",)).get("ai-edge-litert", "unknown")


def xnnpack_coverage(path: str, flops: list) -> Coverage:
    """XNNPACK's share of the primary subgraph, as the interpreter delegated it on this machine."""
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(model_path=path, num_threads=1)
    notes = []
    try:
        interpreter.allocate_tensors()
    except RuntimeError as exc:      # delegation has happened before a custom op's prepare fails: still measurable
        if "unresolved custom op" not in str(exc):
            raise ModelLoadError(f"{path}: LiteRT cannot prepare this model ({one_line(str(exc), 160)})",
                                 "check it with `deploykit verify`; readiness needs a model LiteRT can load") from None
        notes.append("the model needs custom operators this LiteRT does not register (the app must register "
                     "them; they run on the CPU outside XNNPACK)")
    details = interpreter._get_ops_details()
    delegates = [d for d in details if d["op_name"] == "DELEGATE"]
    originals = [d for d in details if d["op_name"] != "DELEGATE"]
    taken: set = set()
    for kernel in delegates:
        taken |= _region(originals, set(int(t) for t in kernel["inputs"]), set(int(t) for t in kernel["outputs"]))
    left = collections.Counter(d["op_name"] for d in originals if d["index"] not in taken)
    total_flops = sum(flops) or 0
    flop_share = (sum(flops[i] for i in taken if i < len(flops)) / total_flops) if total_flops else None
    issues = tuple(OpIssue(op=op, count=count, source=f"LiteRT {litert_version()} execution plan",
                           reason="not taken by XNNPACK (no XNNPACK kernel for this op or these parameters): "
                                  "runs on LiteRT's builtin CPU kernel",
                           nodes=tuple(d["index"] for d in originals if d["op_name"] == op and d["index"] not in taken)[:8])
                   for op, count in left.most_common())
    subgraphs = interpreter.num_subgraphs()
    if subgraphs > 1:
        notes.append(f"measured on the primary subgraph; the file has {subgraphs} subgraphs")
    return Coverage(runtime=LITERT, target="XNNPACK (CPU)", measured=True, verdict=measured_verdict(len(taken), len(originals)),
                    source=f"LiteRT {litert_version()} interpreter: execution plan after XNNPACK",
                    supported=len(taken), total=len(originals), partitions=len(delegates), flop_share=flop_share,
                    unsupported=issues, notes=tuple(notes))


def _region(nodes: list, inputs: set, outputs: set) -> set:
    """Indices of the original nodes a delegate kernel replaced: producers reached from its outputs without
    crossing its inputs."""
    producer = {}
    for node in nodes:
        for tensor in node["outputs"]:
            producer[int(tensor)] = node
    found, pending = set(), [t for t in outputs if t not in inputs]
    while pending:
        node = producer.get(pending.pop())
        if node is None or node["index"] in found:
            continue
        found.add(node["index"])
        pending.extend(int(t) for t in node["inputs"] if int(t) >= 0 and int(t) not in inputs)
    return found


def gpu_coverage(path: str, flops: list) -> tuple:
    """(Coverage of the GPU delegate predicted from its rules, the analyzer's claim as a note)."""
    from deploykit.readiness import litert_analyzer, litert_gpu

    verdicts = [v for v in litert_gpu.gpu_verdicts(path) if v["subgraph"] == 0]
    supported = [v for v in verdicts if v["supported"]]
    runs = _partitions(path, {v["index"] for v in supported})
    grouped: dict = collections.OrderedDict()
    for v in verdicts:
        if not v["supported"]:
            grouped.setdefault((v["op"], v["reason"], v["rule"]), []).append(v["index"])
    issues = tuple(OpIssue(op=op, count=len(nodes), reason=reason, source=rule, nodes=tuple(nodes[:8]),
                           fix=GPU_FIXES.get(op, ""))
                   for (op, reason, rule), nodes in grouped.items())
    total_flops = sum(flops)
    flop_share = sum(flops[v["index"]] for v in supported if v["index"] < len(flops)) / total_flops \
        if total_flops else None
    claim = litert_analyzer.parse_analyzer(litert_analyzer.run_analyzer(path), litert_version())
    notes = []
    if claim["gpu_claim"] == "compatible" and issues:
        notes.append(f"TFLite's model analyzer (ai-edge-litert {litert_version()}) says \"compatible with GPU "
                     f"delegate\"; it is wrong here: LiteRT's analyzer source no longer calls the delegate's "
                     f"compatibility check, so it says so of every model (deploykit.readiness.litert_analyzer) — the "
                     f"verdict above is deploykit's, from the delegate's rules")
    return Coverage(runtime=LITERT, target="GPU delegate", measured=False,
                    verdict=suitability(len(supported), len(verdicts), runs),
                    source=litert_gpu.RULES_SOURCE, supported=len(supported), total=len(verdicts),
                    partitions=runs, flop_share=flop_share, unsupported=issues, notes=tuple(notes))


def _partitions(path: str, taken: set) -> int:
    """Partitions the delegate would form: groups of taken nodes joined by a tensor one produces and another
    consumes (so a DEQUANTIZE of a constant left on the CPU, which feeds a delegated op, splits nothing). A
    branching graph may need more partitions than this to keep each one convex: a lower bound."""
    from deploykit.flop_count import read_tflite

    graph = read_tflite(path).subgraphs[0]
    parent = {index: index for index in taken}

    def root(index):
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    producer = {}
    for index, op in enumerate(graph.operators or []):
        for tensor in (op.outputs if op.outputs is not None else []):
            producer[int(tensor)] = index
    for index, op in enumerate(graph.operators or []):
        if index not in taken:
            continue
        for tensor in (op.inputs if op.inputs is not None else []):
            source = producer.get(int(tensor))
            if source in taken:
                parent[root(source)] = root(index)
    return len({root(index) for index in taken})


# The known rewrites for ops the GPU delegate refuses (what to do at the source, before conversion).
GPU_FIXES = {
    "RFFT2D": "compute the spectrogram outside the model (app-side FFT) or as a matmul with a DFT basis (Conv/FC)",
    "SEGMENT_SUM": "rewrite as a one-hot matmul (BATCH_MATMUL) when the segment count is fixed",
    "TOPK_V2": "return the scores and take the top-k in the app",
    "SORT": "sort in the app, or keep the top-k outside the model",
    "GATHER_ND": "use GATHER on one axis, or a one-hot matmul",
    "SQUEEZE": "use RESHAPE (export with the squeezed shape)",
}


def operators(path: str) -> dict:
    """The builtin op codes (with the highest version used) and custom ops a selective LiteRT build must register
    (what tflite's `--tflite_custom_ops_srcs`/selective registration and LiteRT's op resolver need)."""
    from ai_edge_litert import schema_py_generated as schema

    from deploykit.flop_count import read_tflite

    model = read_tflite(path)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    used = collections.Counter()
    for graph in model.subgraphs or []:
        used.update(op.opcodeIndex for op in graph.operators or [])
    builtin, custom = {}, {}
    for index, code in enumerate(model.operatorCodes or []):
        if not used.get(index):
            continue
        number = max(code.builtinCode, code.deprecatedBuiltinCode)
        if number == schema.BuiltinOperator.CUSTOM:
            name = (code.customCode or b"").decode("utf-8", "replace")
            custom[name] = custom.get(name, 0) + used[index]
            continue
        name = names.get(number, str(number))
        entry = builtin.setdefault(name, {"op": name, "versions": [], "nodes": 0})
        entry["versions"] = sorted(set(entry["versions"]) | {int(code.version or 1)})
        entry["nodes"] += used[index]
    return {"runtime": LITERT, "format": "tflite", "tool": f"ai-edge-litert {litert_version()} flatbuffer schema",
            "builtin_operators": sorted(builtin.values(), key=lambda e: e["op"]),
            "custom_operators": [{"op": name, "nodes": count} for name, count in sorted(custom.items())]}


def probe(path: str) -> dict:
    """Every LiteRT table for one .tflite file (child side)."""
    from deploykit.flop_count import tflite_op_flops

    per_graph, _precision = tflite_op_flops(path)
    flops = per_graph[0] if per_graph else []
    tables = [xnnpack_coverage(path, flops), gpu_coverage(path, flops)]
    return {"tables": [table.to_dict() for table in tables], "operators": operators(path),
            "tools": {"ai-edge-litert": litert_version()}}
