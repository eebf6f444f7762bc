"""Preparing an ONNX graph before an ONNX → X converter (onnx2tf): what field files need and deploykit's own do not.

Graphs made by other exporters (Paddle2ONNX, tf2onnx, torch dynamo with dynamic axes) reach a converter with
unknown dims, unfolded shape arithmetic and names it cannot take, and the converter fails inside. Each step here
works on a copy, is checked against the *source* with the export's one parity engine, and is kept only if parity
holds (as onnxslim after the ONNX exporter is):

1. pin: the user's shapes are law — dims the file leaves dynamic but ``--input`` makes concrete are written into
   the graph, and onnx's shape inference carries them downstream; so are values: an integer input the user fixes
   (``--input sr::int64=16000``) becomes a constant, which lets onnxslim fold the ``If`` on it (silero-vad's
   16 kHz / 8 kHz branches) — the artifact then has no such input, and the check does not feed it;
2. names: tensor and node names a converter cannot take (tf2onnx's ``input:0``, ``@``, spaces, brackets, quotes,
   non-ASCII, a leading digit) are renamed to unique safe ones; ``Prepared.renamed`` maps them, and the converter
   writes the source's own names back into the artifact's signature (converters.onnx_to_tflite); unnamed nodes
   (Paddle2ONNX's Constants) are named ``<OpType>_<first output>`` — onnx2tf, its own naming off, keys fusions by
   node name and mixed every unnamed node up with the others;
2b. dequantize (``deploykit.transforms.dequantize``): a dynamically quantized graph (onnxruntime's
   ``quantize_dynamic``: ``DynamicQuantizeLSTM``, which onnx2tf has no converter for, ``ConvInteger``,
   ``MatMulInteger``) is written in float with its weights dequantized; checked with the int8 source's own preset;
3. fold: onnxslim folds constants and shape arithmetic, when the graph computes shapes at all (``Shape`` ops);
4. rewrite (``deploykit.transforms.onnx_rewrites``): fused ``LSTM`` nodes become MatMul/Sigmoid/Tanh once their sequence
   length is known — onnx2tf mislays a fused LSTM's state (a plain ``nn.LSTM`` exported by torch fails without
   this) — and multi-axis ``Slice`` nodes lose their full-range axes, which onnx2tf maps to the wrong axis;
5. slice (``deploykit.transforms.split_rewrite``): Splits with uneven sizes become Slices (onnx2tf's FlexSplitV is
   a TensorFlow op LiteRT's builtin runtime refuses).

A graph that needs none of them is passed on as it is, at no cost. ``onnx`` is imported inside the functions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from deploykit.conversion import Check, ExportOptions, acceptable
from deploykit.model import LoadedModel
from deploykit.onnx_io import every_node, read_onnx

# What breaks onnx2tf (seen on tf2onnx and jax2tf files, and on hand-named graphs: "class scores", "scores(1)",
# "a<b>", "ünï"): a TensorFlow-style ":0" suffix, any character outside [A-Za-z0-9_./-] (TensorFlow's op-name
# alphabet), a first character other than a letter, "_" or "/". torch's "onnx::Gemm_5" and "/fc1/Gemm_output_0"
# pass (every sample route takes them): renaming them would cost a check for nothing.
_NAME_BAD = re.compile(r"(?<!:):\d+$|^[^A-Za-z_/]|[^A-Za-z0-9_./:-]|(?<!:):(?!:)")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_./:-]|(?<!:):(?!:)")
# A graph input becomes a TensorFlow placeholder and the .tflite signature's key: onnx2tf keeps only identifiers
# ("_n_" came back as "Placeholder"), and the key is how the converter maps the name back (converters.onnx_to_tflite).
_INPUT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_INPUT_BAD_CHARS = re.compile(r"[^A-Za-z0-9_]")


@dataclass
class Prepared:
    """The graph a converter should read, the renames made in it, and what each step did (the route's notes)."""

    path: str
    renamed: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def prepare(model: LoadedModel, folder: Path, options: ExportOptions, check: Check) -> Prepared:
    """Apply the steps a converter needs to a copy in ``folder``; each kept only if the copy still matches."""
    proto = read_onnx(model.path)
    prepared = Prepared(str(model.path))
    pins = dynamic_dims_given(model, proto, keep_batch=options.dynamic_batch)
    fixed = {name: value for name, value in model.spec.fixed_inputs.items()
             if name in {i.name for i in proto.graph.input}}
    fed = _fed(proto.graph)
    bad_names = [n for n in _tensor_names(proto.graph) if _cannot_take(n, fed)]
    unnamed = sum(not node.name for node in every_node(proto.graph))
    if pins or bad_names or fixed or unnamed:
        folder.mkdir(exist_ok=True)
        # With shape inference first; without, if onnx's inference breaks the graph (it can, inside If bodies).
        for infer in ((True, False) if pins or fixed else (False,)):
            candidate = _copy(proto)
            _fix_values(candidate, fixed, model.spec)
            if pins or fixed:
                pin_dims(candidate, pins, infer)
            if fixed:       # fold the If on a fixed input at once: ONNX Runtime crashed (SIGSEGV) on it unfolded
                candidate = _slim(candidate)[0] or candidate
            renamed = _sanitize_names(candidate.graph)
            named = name_unnamed_nodes(candidate.graph)     # after renaming: a node's name derives from a safe output
            note = _pin_and_name_note(pins, renamed, fixed, named) + ("" if infer or not (pins or fixed)
                                                                       else " (without shape inference)")
            if _keep_if_it_matches(candidate, folder / "prepared.onnx", prepared, check, options, note, renamed):
                break
    from deploykit.transforms.dequantize import dynamic_ops

    if dynamic_ops(read_onnx(prepared.path)):        # before folding: onnxslim cannot infer the contrib LSTM's shapes
        folder.mkdir(exist_ok=True)
        _dequantize(prepared, folder / "dequantized.onnx", check, options)
    if any(node.op_type == "Shape" for node in read_onnx(prepared.path).graph.node):
        folder.mkdir(exist_ok=True)
        _fold(prepared, folder / "folded.onnx", check, options)
    from deploykit.transforms.onnx_rewrites import has_candidates

    if has_candidates(read_onnx(prepared.path)):
        folder.mkdir(exist_ok=True)
        _rewrite(prepared, folder / "rewritten.onnx", check, options)
    from deploykit.transforms.split_rewrite import uneven_splits

    if uneven_splits(read_onnx(prepared.path)):
        folder.mkdir(exist_ok=True)
        _slice_splits(prepared, folder / "sliced.onnx", check, options)
    return prepared


def dynamic_dims_given(model: LoadedModel, proto=None, keep_batch: bool = False) -> dict:
    """{input: {axis: size}} for dims the file leaves dynamic that the model's signature makes concrete — only the
    user's --input does that; the batch axis too (a converter guessing an unknown batch mislays axes), unless
    ``keep_batch`` (--dynamic-batch)."""
    graph = (proto or read_onnx(model.path)).graph
    # Paddle2ONNX writes a dynamic dim as dim_value -1, not as a dim_param.
    declared = {i.name: [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                         for d in i.type.tensor_type.shape.dim] for i in graph.input}
    pins = {}
    for tensor in model.spec.inputs:
        fixed = {axis: size for axis, (size, had) in enumerate(zip(tensor.shape, declared.get(tensor.name) or []))
                 if had is None and isinstance(size, int) and size > 0 and (axis > 0 or not keep_batch)}
        if fixed:
            pins[tensor.name] = fixed
    return pins


def _copy(proto):
    import onnx

    candidate = onnx.ModelProto()
    candidate.CopyFrom(proto)
    return candidate


def pin_dims(proto, pins: dict, infer: bool = True) -> None:
    """Write the concrete dims into the graph's inputs (and with ``infer``, every shape downstream)."""
    import onnx

    for graph_input in proto.graph.input:
        for axis, size in (pins.get(graph_input.name) or {}).items():
            dim = graph_input.type.tensor_type.shape.dim[int(axis)]
            dim.ClearField("dim_param")
            dim.dim_value = int(size)
    del proto.graph.value_info[:]          # stale symbolic shapes would contradict the pinned ones
    for graph_output in proto.graph.output:   # a -1 (Paddle2ONNX's "dynamic") is no dim: left for inference
        for dim in graph_output.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.ClearField("dim_value")
    if infer:
        proto.CopyFrom(onnx.shape_inference.infer_shapes(proto))


def _keep_if_it_matches(proto, path: Path, prepared: Prepared, check: Check, options: ExportOptions, note: str,
                        renamed: dict) -> bool:
    import onnx

    from deploykit.errors import DeploykitError

    onnx.save(proto, str(path))
    try:
        report = check(path, options.samples)
    except DeploykitError as exc:        # the step broke the graph: it is not applied
        prepared.notes.append(f"not applied, the graph no longer runs: {note} ({exc.message[:200]})")
        path.unlink(missing_ok=True)
        return False
    if acceptable(report, options):
        prepared.path, prepared.renamed = str(path), {**prepared.renamed, **renamed}
        prepared.notes.append(f"{note} (checked: {report.summary()})")
        return True
    prepared.notes.append(f"not applied, it changed the results: {note} ({report.summary()})")
    path.unlink(missing_ok=True)
    return False


def _fix_values(proto, fixed: dict, spec) -> None:
    """Each fixed input becomes an initializer of its value: the user's shape (else the graph's, dynamic dims 1)
    and the graph's type."""
    import numpy as np
    from onnx import helper, numpy_helper

    user_shapes = {t.name: t.shape for t in spec.inputs if t.is_static}
    for graph_input in [i for i in proto.graph.input if i.name in fixed]:
        tensor_type = graph_input.type.tensor_type
        shape = user_shapes.get(graph_input.name) or [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                                                      else 1 for d in tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        proto.graph.input.remove(graph_input)
        proto.graph.initializer.append(
            numpy_helper.from_array(np.full(shape, fixed[graph_input.name], dtype=dtype), graph_input.name))


def _pin_and_name_note(pins: dict, renamed: dict, fixed: dict = None, named: int = 0) -> str:
    parts = []
    if fixed:
        parts.append("fixed inputs (--input NAME::DTYPE=VALUE) and folded what depends on them with onnxslim "
                     "(the artifact does not take them): " +
                     ", ".join(f"{name}={value}" for name, value in fixed.items()))
    if pins:
        parts.append("pinned dynamic dims from --input: " + ", ".join(
            f"{name}[{axis}]={size}" for name, dims in pins.items() for axis, size in dims.items()))
    if renamed:
        examples = ", ".join(f"{old!r} → {new!r}" for old, new in list(renamed.items())[:3])
        parts.append(f"renamed {len(renamed)} tensor name(s) a converter cannot take, e.g. {examples}")
    if named:
        parts.append(f"named {named} unnamed node(s) after their op type and first output (onnx2tf, whose own "
                     "naming is off to keep names stable, fails on unnamed nodes)")
    return "prepared the ONNX graph: " + "; ".join(parts)


def _fold(prepared: Prepared, path: Path, check: Check, options: ExportOptions) -> None:
    """onnxslim's constant and shape folding, kept only if the folded graph still matches."""
    folded, why = _slim(prepared.path)
    if folded is None:
        if why:
            prepared.notes.append(f"onnxslim could not fold the graph ({why}); left as it was")
        return
    import onnxslim

    before, after = len(read_onnx(prepared.path).graph.node), len(folded.graph.node)
    _keep_if_it_matches(folded, path, prepared, check, options,
                        f"folded constants and shape arithmetic with onnxslim {onnxslim.__version__}: {before} → "
                        f"{after} nodes", {})


def _slim(model):
    """onnxslim's folding of ``model`` (a ModelProto or a path): (folded, "") or (None, why not; "" when onnxslim
    is not installed — an optional step)."""
    try:
        import onnxslim
    except ImportError:
        return None, ""
    try:
        import onnx

        # A declared output shape can be wrong (ddddocr's common.onnx declares [1, seqlen] and computes [T, 1, 8210]):
        # onnxslim trusts it and folds the last Reshape to it. Inference after pinning re-derives the real one.
        model = onnx.load(model) if isinstance(model, str) else _copy(model)
        for output in model.graph.output:
            output.type.tensor_type.ClearField("shape")
        return onnxslim.slim(model), ""
    except Exception as exc:  # noqa: BLE001 - an optional step: never fails an export
        from deploykit.text import brief, exception_chain

        return None, brief(exception_chain(exc))


def _dequantize(prepared: Prepared, path: Path, check: Check, options: ExportOptions) -> None:
    """Dynamically quantized ops written in float with dequantized weights, kept only if the result still matches
    the (int8) source."""
    import onnx

    from deploykit.transforms.dequantize import dequantize

    proto = onnx.load(prepared.path)      # a copy: the cached proto is read-only
    try:
        done, left = dequantize(proto)
    except Exception as exc:  # noqa: BLE001 - an optional step never ends an export: it is noted and skipped
        from deploykit.text import brief, exception_chain

        prepared.notes.append(f"quantized ops not dequantized ({brief(exception_chain(exc))})")
        return
    if left:
        prepared.notes.append(f"left quantized ({_counted(left)}): weights or scales computed in the graph, or a "
                              "scale chain of another form")
    if done:
        _keep_if_it_matches(proto, path, prepared, check, options,
                            f"dequantized {_counted(done)} to float (weights (w - zero_point) × scale; onnx2tf has "
                            "no DynamicQuantizeLSTM): the TFLite runs float", {})


def _counted(counts) -> str:
    return ", ".join(f"{count} {op_type}" for op_type, count in counts.items())


def _rewrite(prepared: Prepared, path: Path, check: Check, options: ExportOptions) -> None:
    """LSTM nodes written out as their equations and Slice nodes narrowed, kept only if the result still matches."""
    from deploykit.transforms.onnx_rewrites import narrow_slices, unroll_lstms

    import onnx

    lstms = []        # one line per LSTM node: what was done, or why it was left as it is
    try:
        # A copy (the cached proto is read-only), weights included, unchecked: the source was checked on loading.
        proto = _inferred(onnx.load(prepared.path))
        narrowed, rewritten = narrow_slices(proto), unroll_lstms(proto, lstms)
    except Exception as exc:  # noqa: BLE001 - an optional step never ends an export: it is noted and skipped
        from deploykit.text import brief, exception_chain

        prepared.notes.append(f"ops not rewritten ({brief(exception_chain(exc))})")
        return
    if not rewritten:
        prepared.notes.extend(lstms)
    done = ["LSTM nodes put into the form onnx2tf converts: " + "; ".join(lstms) * bool(rewritten),
            f"narrowed {narrowed} multi-axis Slice node(s) to the axes they cut (onnx2tf maps "
            "full-range axes to the wrong one)" * bool(narrowed)]
    if rewritten or narrowed:
        _keep_if_it_matches(_inferred(proto), path, prepared, check, options,
                            "rewrote ops onnx2tf mishandles: " + "; ".join(d for d in done if d), {})


def _slice_splits(prepared: Prepared, path: Path, check: Check, options: ExportOptions) -> None:
    """Uneven Splits written as Slices (onnx2tf may leave them as FlexSplitV, which LiteRT's builtin runtime cannot
    run), kept only if the result still matches."""
    import onnx

    from deploykit.transforms.split_rewrite import slice_uneven_splits

    proto = onnx.load(prepared.path)      # a copy: the cached proto is read-only
    count = slice_uneven_splits(proto)
    _keep_if_it_matches(proto, path, prepared, check, options,
                        f"rewrote {count} Split node(s) with uneven sizes as Slices (onnx2tf can leave such a Split "
                        "as FlexSplitV, a TensorFlow op LiteRT's builtin runtime refuses)", {})


def _inferred(proto):
    """``proto`` with onnx's shape inference applied where it works (rewrites need known shapes; a failure of
    inference is no reason to give up on them)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - onnx raises several types here
        return proto


def _sanitize_names(graph) -> dict:
    """Rename tensors (and nodes) whose names a converter cannot take to close, unique names; {old: new}.
    Names that collide once cleaned ("a b", "a;b", an existing "a_b") get a numbered suffix. Subgraphs (If/Loop
    bodies) are left alone."""
    used = set(_tensor_names(graph)) | {n.name for n in graph.node}
    inputs = _fed(graph)
    renames = {}
    for name in _tensor_names(graph):
        if _cannot_take(name, inputs):
            cleaned = (_INPUT_BAD_CHARS if name in inputs else _BAD_CHARS).sub("_", name)
            renames[name] = _fresh(cleaned, used)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        if node.name and _NAME_BAD.search(node.name):
            node.name = _fresh(_BAD_CHARS.sub("_", node.name), used)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info) + list(graph.initializer):
        value.name = renames.get(value.name, value.name)
    return renames


def name_unnamed_nodes(graph) -> int:
    """Name every unnamed node (If/Loop bodies too) ``<OpType>_<first output>``, made safe and unique: derived from
    the graph alone, so every run gives a node the same name (--locate and onnx2tf's failure line name it alike).
    Returns how many were named. Paddle2ONNX leaves its Constant nodes unnamed, by the hundred."""
    used = {node.name for node in every_node(graph)} | set(_tensor_names(graph))
    count = 0
    for node in every_node(graph):
        if not node.name:
            output = next((name for name in node.output if name), "")
            node.name = _fresh(_BAD_CHARS.sub("_", f"{node.op_type}_{output}".rstrip("_")), used)
            count += 1
    return count


def _cannot_take(name: str, inputs: set) -> bool:
    """Whether onnx2tf cannot take ``name`` as it is (an empty name is an omitted optional input: left alone)."""
    if not name:
        return False
    return bool(_NAME_BAD.search(name)) or name in inputs and not _INPUT_NAME.match(name)


def _fed(graph) -> set:
    """The graph's real inputs (old files list their weights among the inputs too)."""
    return {i.name for i in graph.input} - {t.name for t in graph.initializer}


def _tensor_names(graph) -> list:
    names = [v.name for v in list(graph.input) + list(graph.output) + list(graph.initializer)]
    return list(dict.fromkeys(names + [n for node in graph.node for n in list(node.input) + list(node.output)]))


def _fresh(base: str, used: set) -> str:
    base = base if re.match(r"^[A-Za-z/]", base) else "t_" + base     # TensorFlow names start with a letter
    name, index = base, 1
    while name in used:
        name, index = f"{base}_{index}", index + 1
    used.add(name)
    return name
