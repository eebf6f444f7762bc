"""deploykit's own per-op verdict on the TFLite GPU delegate: would it take each operator of a .tflite file?

TFLite's model analyzer cannot answer this (its GPU check is gone from the installed builds, see
``deploykit.readiness.litert_analyzer``), so the delegate's published rules are applied here, read from the file
with LiteRT's flatbuffer schema; nothing runs. The checks follow the delegate's own order, and the first that
fails names its source in ``rule``:

1. the op list — ``model_builder.cc``'s parsers (``gpu_compatibility.cc: op list`` when neither file knows the op,
   ``model_builder.cc: op list`` when only gpu_compatibility.cc has a case, ``gpu_compatibility.cc: custom op
   list`` for a CUSTOM op other than the four the delegate parses);
2. the op version — ``model_builder.cc: <OP> version`` (gpu_compatibility.cc checks no version at all);
3. the op's constraints — ``model_builder.cc: <OP> rule`` or ``gpu_compatibility.cc: <OP> rule``;
4. its tensors — ``model_builder.cc: tensor ranks`` (5-D and up) or ``model_builder.cc: tensor types``.

The table lives in ``deploykit.readiness.litert_gpu_rules``. It models the TFLite GPU delegate with its default
options (quantized ops allowed); LiteRT's ML Drift GPU accelerator shares gpu_compatibility.cc but has its own
parsers and version limits, and MediaPipe's GPU build registers its own custom ops: neither is modelled.
"""
from __future__ import annotations

from deploykit.errors import MissingDependency, ModelLoadError
from deploykit.readiness import litert_gpu_rules as rules

RULES_SOURCE = ("google-ai-edge/LiteRT f67457790 (2026-08-21): tflite/delegates/gpu/common/model_builder.cc "
                "and tflite/tools/versioning/gpu_compatibility.cc (TFLite GPU delegate, default options)")

def gpu_verdicts(path: str) -> list:
    """One verdict per operator of every subgraph of the .tflite at ``path``, in execution order.

    Each is ``{"subgraph", "index", "op", "version", "supported", "reason", "rule"}``: ``op`` is the builtin name
    (a CUSTOM op's own name), ``reason`` one short sentence ("" when supported), ``rule`` the upstream file and
    check behind the verdict.

    Raises:
        ModelLoadError: the file is not a readable TFLite flatbuffer.
        MissingDependency: ai-edge-litert (its flatbuffer schema) is not installed.
    """
    model, schema = _read(path)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = [_op_name(c, names, schema) for c in model.operatorCodes or []]
    consts = _const_buffers(model)
    verdicts = []
    for g, graph in enumerate(model.subgraphs or []):
        sigs, fp16_weights = _signatures(graph, codes, consts)
        found = [verdict(sig) for i, sig in enumerate(sigs) if i not in fp16_weights]
        whole = all(supported for supported, _, _ in found)
        found = iter(found)
        for i, sig in enumerate(sigs):
            supported, reason, rule = _fp16_weights(whole) if i in fp16_weights else next(found)
            verdicts.append({"subgraph": g, "index": i, "op": sig.op, "version": sig.version,
                             "supported": supported, "reason": reason, "rule": rule})
    return verdicts


def _fp16_weights(whole: bool) -> tuple:
    """A DEQUANTIZE of fp16 constant weights: the delegate's partitioner (FP16GraphPartitionHelper) judges its
    consumers as if they read the fp16 constant, and takes the DEQUANTIZE itself only when it delegates the whole
    graph; under partial delegation it stays on the CPU."""
    rule = "delegates/utils.cc: FP16GraphPartitionHelper"
    if whole:
        return True, "", rule
    return False, "fp16-weight DEQUANTIZE stays on the CPU unless the whole graph is delegated", rule


def verdict(sig: rules.OpSig) -> tuple:
    """(supported, reason, rule) of one operator, checked in the delegate's order (the first failure wins)."""
    if sig.is_custom and sig.op in rules.CUSTOM_OPS:
        reason = rules.CUSTOM_OPS[sig.op](sig)
        return _result(reason, f"gpu_compatibility.cc: {sig.op} rule", sig)
    parser = rules.PARSERS.get(sig.op)
    if parser is None:
        if sig.is_custom:
            return (False, f"custom op '{sig.op}' is not a GPU delegate custom op",
                    "gpu_compatibility.cc: custom op list")
        if sig.op in rules.COMPAT_ONLY:
            return (False, "gpu_compatibility.cc lists it, but the TFLite GPU delegate has no parser for it",
                    "model_builder.cc: op list")
        return False, "not in the GPU delegate's op list", "gpu_compatibility.cc: op list"
    if parser.max_version is not None and sig.version > parser.max_version:
        return (False, f"version {sig.version} > supported {parser.max_version}",
                f"model_builder.cc: {sig.op} version")
    if parser.builder is not None:
        reason = parser.builder(sig)
        if reason:
            return False, reason, f"model_builder.cc: {sig.op} rule"
    if parser.compat is not None:
        reason = parser.compat(sig)
        if reason:
            return False, reason, f"gpu_compatibility.cc: {sig.op} rule"
    source = f"gpu_compatibility.cc: {sig.op} rule" if parser.compat else f"model_builder.cc: {sig.op} parser"
    return _result("", source, sig)


def _result(reason: str, rule: str, sig: rules.OpSig) -> tuple:
    """The op's own verdict, then model_builder.cc's tensor check (run after the op's checks, as upstream does)."""
    if reason:
        return False, reason, rule
    problem, kind = rules.tensor_problem(sig)
    if problem:
        return False, problem, f"model_builder.cc: tensor {kind}"
    return True, "", rule


def _read(path: str) -> tuple:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise MissingDependency.for_package("ai-edge-litert", "litert", "to read a .tflite's operators") from None
    try:
        with open(path, "rb") as handle:
            data = handle.read(8)       # the identifier; the file is parsed (once, cached) by read_tflite
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}", "check the path") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelLoadError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier)",
                             "give a .tflite file written by a TFLite/LiteRT converter")
    from deploykit.flop_count import read_tflite

    try:
        return read_tflite(path), schema
    except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer fails anywhere inside the generated reader
        raise ModelLoadError(f"{path} is a damaged TFLite flatbuffer ({type(exc).__name__})",
                             "re-export the model") from None


def _op_name(code, names: dict, schema) -> tuple:
    """(name, version, is_custom) of an operator code; a code newer than the schema keeps its number."""
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return (custom.decode("utf-8", "replace") if isinstance(custom, bytes) else str(custom or "?")), \
            code.version, True
    return names.get(builtin, f"BUILTIN_{builtin}"), code.version, False


def _const_buffers(model) -> set:
    """Buffers that hold data: a tensor on one of them is a constant (upstream's offline ``is_const``)."""
    found = set()
    for index, buffer in enumerate(model.buffers or []):
        if index and ((buffer.data is not None and len(buffer.data)) or (buffer.offset > 1 and buffer.size)):
            found.add(index)
    return found


def _signatures(graph, codes: list, consts: set) -> tuple:
    """(An OpSig per operator, with the producer and consumers the model_builder.cc rules look at; the indices of
    the DEQUANTIZE ops of fp16 constants, whose consumers are judged as reading the fp16 constant itself)."""
    tensors = graph.tensors or []
    operands = [rules.Operand(t.type, tuple(int(d) for d in (t.shape if t.shape is not None else [])),
                              t.buffer in consts) for t in tensors]
    ops = graph.operators or []
    fp16_weights, remap = set(), {}
    for i, op in enumerate(ops):
        ins, outs = _indices(op.inputs), _indices(op.outputs)
        if codes[op.opcodeIndex][0] == "DEQUANTIZE" and ins and outs and operands[ins[0]].is_const \
                and operands[ins[0]].type == rules.FLOAT16:
            fp16_weights.add(i)
            remap[outs[0]] = ins[0]
    producer, readers = {}, {}
    for op in ops:
        for t in _indices(op.outputs):
            producer[t] = op
        for t in _indices(op.inputs):
            readers.setdefault(t, []).append(op)
    sigs = []
    for op in ops:
        name, version, custom = codes[op.opcodeIndex]
        ins, outs = list(op.inputs if op.inputs is not None else []), _indices(op.outputs)
        first_in = ins[0] if ins and ins[0] >= 0 else None
        first_out = outs[0] if outs else None
        sigs.append(rules.OpSig(
            op=name, version=version, options=op.builtinOptions, is_custom=custom,
            custom=bytes(bytearray(op.customOptions)) if op.customOptions is not None else b"",
            inputs=[operands[remap.get(t, t)] if t >= 0 else rules.Operand(None) for t in ins],
            outputs=[operands[t] for t in outs],
            consumers=tuple((codes[c.opcodeIndex][0], _first_type(c, operands))
                            for c in readers.get(first_out, [])),
            producer=codes[producer[first_in].opcodeIndex][0] if first_in in producer else None,
            input_uses=len(readers.get(first_in, []))))
    return sigs, fp16_weights


def _indices(values) -> list:
    return [int(t) for t in (values if values is not None else []) if int(t) >= 0]


def _first_type(op, operands: list):
    outs = _indices(op.outputs)
    return operands[outs[0]].type if outs else None
