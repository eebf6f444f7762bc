"""ONNX -> TFLite (and SavedModel) with onnx2tf, in a child process.

onnx2tf's traps (FIELD-NOTES) and how they are handled here:
* it overwrites the .onnx it is given: it gets a temporary copy;
* it may download calibration images for 3-channel inputs: it runs in a scratch directory
  that already holds a (random) calibration file, so nothing is fetched;
* it shells out to onnxsim when found (~9 s a run) and rewrites names with sng4onnx:
  not_use_onnxsim, not_use_opname_auto_generate;
* its .tflite files carry no signature (the LiteRT runner falls back to the raw tensor API), and name the output
  tensors Identity, Identity_1, ... and the inputs after the prepared graph's (renamed) names: the source's own
  names are written back into the file (``_sign_with_source_names``), so the artifact, its manifest, contract and
  verify's tables show "class scores", not Identity or class_scores;
* it assumes 4-D inputs are NCHW: inputs that are already NHWC (a Keras model through
  tf2onnx) are named to keep_nwc_or_nhwc_or_ndhwc_input_names, else it transposes them twice;
* it turns NCHW inputs and 4-D outputs into NHWC (TFLite's native layout, the fast one on
  phones): the permutations are read from the shapes (onnx2tf's rule decides a square map, whose
  shape reads the same both ways) and recorded in the manifest, so
  verify feeds and compares in the source's layout; --keep-layout keeps the inputs NCHW
  (keep_ncw_or_nchw_or_ncdhw_input_names; outputs stay NHWC, onnx2tf has no such option).
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from deploykit.artifact import Artifact
from deploykit.child import CONVERT, run_child
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError
from deploykit.layout import CHANNELS_LAST, Layout, axis_order, inverse, shown
from deploykit.model import LoadedModel
from deploykit.onnx_io import every_node, read_onnx
from deploykit.quiet import captured_output
from deploykit.transforms.onnx_prep import prepare
from deploykit.spec import ModelSpec

CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    return _convert(model, out_path, options, check, saved_model=False)


def convert_saved_model(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    return _convert(model, out_path, options, check, saved_model=True)


def _convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check, saved_model: bool):
    nhwc = _channels_last_inputs(model)
    keep_nchw = [t.name for t in model.spec.inputs if len(t.shape or ()) in CHANNELS_LAST
                 and t.name not in nhwc] if options.keep_layout else []
    prepared = prepare(model, out_path.parent / f"{out_path.name}.prepared", options, check)
    try:
        _refuse_ops_onnx2tf_lacks(prepared.path)          # after preparing: folding may remove some
        return _convert_prepared(model, prepared, out_path, options, check, saved_model, nhwc, keep_nchw)
    except ConversionError as failure:
        # What the prep pass did (pinned, renamed, rewrote, left untouched and why) and the integer inputs that steer
        # the graph belong to the verdict: the notes reach the manifest only on success otherwise.
        from deploykit.transforms.onnx_verdicts import steering_inputs, with_context

        raise with_context(failure, prepared.notes, steering_inputs(read_onnx(prepared.path)),
                           _single_values(model)) from None


def _single_values(model: LoadedModel) -> dict:
    """{input: value} for inputs whose --input range holds one value (``sr::int64:16000..16001``)."""
    return {t.name: t.value_range[0] for t in model.spec.inputs
            if t.value_range and t.value_range[1] - t.value_range[0] == 1}


def _convert_prepared(model: LoadedModel, prepared, out_path: Path, options: ExportOptions, check: Check,
                      saved_model: bool, nhwc: list, keep_nchw: list) -> ConversionResult:
    keep = {"keep_nhwc": nhwc, "keep_nchw": keep_nchw, "keep_exact": []}
    try:
        return _attempt(model, prepared, out_path, options, check, saved_model, keep)
    except ConversionError as first:
        # onnx2tf moves the channels of every 3-D/5-D input last; a state or sequence input is no image, and
        # its own remedy for that is -kat (keep_shape_absolutely_input_names): one more try with it.
        exact = [t.name for t in model.spec.inputs if len(t.shape or ()) in (3, 5)
                 and t.name not in nhwc + keep_nchw and t.name not in model.spec.fixed_inputs]
        if not exact or "did not finish within" in first.message:     # a timeout is no layout problem
            raise
        _remove(out_path)
        try:
            result = _attempt(model, prepared, out_path, options, check, saved_model, {**keep, "keep_exact": exact})
        except ConversionError as second:
            raise ConversionError(f"{first.message}; again with {', '.join(exact)} kept in the ONNX layout: "
                                  f"{second.message}", first.remedy, first.details, outcome=first.outcome,
                                  report=first.report) from None
        result.notes.append(f"onnx2tf kept {', '.join(exact)} in the ONNX layout (keep_shape_absolutely_input_names)"
                            f": the channels-last try failed ({first.message[:160]})")
        return result


def _refuse_ops_onnx2tf_lacks(onnx_path: str) -> None:
    """Every op type onnx2tf has no converter for, named at once with its count and first node, before it runs
    (onnx2tf itself stops at the first, after building everything before it). onnx2tf looks a node's converter up
    as the module ``onnx2tf.ops.<OpType>``, so its ops folder is the list — read without importing TensorFlow."""
    import importlib.util
    from collections import Counter

    spec = importlib.util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        return                                       # not installed: the child says so with the install hint
    folder = Path(list(spec.submodule_search_locations)[0]) / "ops"
    known = {f.stem for f in folder.glob("*.py")}
    if not known:
        return
    lacking, first = Counter(), {}
    for node in every_node(read_onnx(onnx_path).graph):
        if node.op_type not in known:
            lacking[node.op_type] += 1
            first.setdefault(node.op_type, node.name or "(unnamed)")
    if lacking:
        ops = ", ".join(f"{op} ×{count} (first: {first[op]})" for op, count in sorted(lacking.items()))
        raise ConversionError(f"onnx2tf has no converter for {len(lacking)} op type(s) in this graph: {ops}",
                              "export the source with standard ops (another opset or exporter), or rewrite those "
                              "parts; --to onnx keeps them for ONNX Runtime")


def _attempt(model: LoadedModel, prepared, out_path: Path, options: ExportOptions, check: Check, saved_model: bool,
             keep: dict) -> ConversionResult:
    """One onnx2tf run on the prepared graph with these layout options, checked against the source."""
    renamed = prepared.renamed
    payload = {"onnx": prepared.path, "out": str(out_path), "saved_model": saved_model, "names": _name_pairs(prepared),
               **{key: [renamed.get(n, n) for n in names] for key, names in keep.items()}}
    info = run_child("converters.onnx_to_tflite:job", payload, stage=CONVERT, what="onnx2tf", timeout=options.timeout,
                     debug=options.debug).info
    result = ConversionResult(path=out_path, converter="onnx_to_saved_model" if saved_model else "onnx_to_tflite",
                              tool=info["tool"], description=info.get("artifact"))
    result.notes.extend(prepared.notes)
    if info.get("artifact"):
        written = ModelSpec.from_dict(info["artifact"]["spec"])
    else:                    # a SavedModel is read by its loader in this process (TensorFlow), once: accept reuses it
        result.artifact = Artifact.open(out_path, layout=Layout())
        written = result.artifact.spec
    kept = {name for names in keep.values() for name in names}
    result.input_perms = _perms(*_paired(model.spec.inputs, written.inputs), result.notes, kept=kept)
    result.output_perms = _perms(*_paired(_known_outputs(prepared.path, model.spec.outputs), written.outputs),
                                 result.notes, outputs=True)
    accept(result, check, options, "onnx2tf", "onnx2tf", "try --via litert, or simplify the ONNX graph first",
           result.layout)
    if any(result.output_perms.values()):
        result.notes.append("onnx2tf changed the layout of outputs (channels-last, or axes reordered); recorded "
                            f"permutations {result.output_perms}")
    return result


def _name_pairs(prepared) -> dict:
    """[prepared graph's name, source's name] of each input and output, in the graph's order (the child writes
    the source's names into the .tflite signature)."""
    graph = read_onnx(prepared.path).graph
    original = {new: old for old, new in prepared.renamed.items()}
    stored = {t.name for t in graph.initializer}      # fixed inputs became initializers: the artifact has none
    return {"inputs": [[i.name, original.get(i.name, i.name)] for i in graph.input if i.name not in stored],
            "outputs": [[o.name, original.get(o.name, o.name)] for o in graph.output]}


def _paired(source, artifact) -> tuple:
    """(source tensors, artifact tensors) lined up: by name when the artifact carries the source's names (a
    .tflite signature would list them sorted, not in the graph's order), else by position."""
    named = {t.name: t for t in source}
    if artifact and all(t.name in named for t in artifact):
        return [named[t.name] for t in artifact], list(artifact)
    return list(source), list(artifact)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _channels_last_inputs(model: LoadedModel) -> list:
    """Inputs that are already channels-last, which onnx2tf must not transpose again.

    Known from the layout label (deploykit's manifest: a Keras source is NHWC), or from the
    graph itself: an input whose every consumer is Transpose(perm=[0, 3, 1, 2]) is NHWC data
    that the exporter (tf2onnx, say) turns into NCHW inside the graph.
    """
    labelled = {t.name for t in model.spec.inputs if t.layout in ("NHWC", "NWC", "NDHWC")}
    graph = read_onnx(model.path).graph
    for tensor in model.spec.inputs:
        consumers = [n for n in graph.node if tensor.name in n.input]
        perms = [list(a.ints) for n in consumers if n.op_type == "Transpose" for a in n.attribute if a.name == "perm"]
        if consumers and len(perms) == len(consumers) and all(p == [0, 3, 1, 2] for p in perms):
            labelled.add(tensor.name)
    return sorted(labelled)


def _perms(source: list, artifact: list, notes: list, kept: set = frozenset(), outputs: bool = False) -> dict:
    """The permutation onnx2tf applied to each tensor, keyed by the artifact's name (tensors lined up by ``_paired``).

    Inputs: axes that take a source tensor to the artifact's layout; outputs: axes that take the artifact's tensor
    back to the source's. One search with verify's (``deploykit.layout.axis_order``), told what onnx2tf writes:
    its Input op moves the channels of every 3-D/4-D/5-D input last unless a keep_* option names it (``kept``: the
    source's order), and image outputs stay channels-last. That rule decides a shape that reads the same both ways
    (a square map, C = H = W), which the shapes cannot; the shapes decide wherever they can, and parity judges.
    """
    perms = {}
    for src, art in zip(source, artifact):
        rank = len(src.shape)
        rule = list(range(rank)) if src.name in kept else CHANNELS_LAST.get(rank)
        order = axis_order(tuple(src.shape), tuple(art.shape), prefer=rule)
        if order.perm:
            perms[art.name] = inverse(order.perm) if outputs else order.perm
        if order.note.startswith("reads the same"):
            notes.append(f"{'output' if outputs else 'input'} {art.name} {shown(tuple(src.shape))} {order.note} "
                         "(onnx2tf's rule), recorded in the manifest's layout")
    return perms


def _known_outputs(onnx_path: str, outputs: tuple) -> list:
    """The source's outputs with the dims the prepared graph knows (pinned inputs make dynamic outputs concrete)."""
    from types import SimpleNamespace

    graph = read_onnx(onnx_path).graph
    inferred = [[d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in o.type.tensor_type.shape.dim] for o in graph.output]
    known = []
    for tensor, dims in zip(outputs, inferred + [None] * len(outputs)):
        shape = tuple(tensor.shape)
        if dims and len(dims) == len(shape):
            # Paddle2ONNX declares a dynamic dim as -1: unknown, as a named one (a -1 kept made the output's
            # channels-last permutation unreadable: PP-OCRv3 det's [1, 320, 320, 1] was compared to [1, 1, 320, 320])
            shape = tuple(size if isinstance(size, int) and size >= 0 or d is None else d
                          for size, d in zip(shape, dims))
        known.append(SimpleNamespace(name=tensor.name, shape=shape))
    return known


_NODE_IN_LOG = re.compile(r"onnx_op_name:\s*(\S+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _failed_at_node(exc: Exception, log: str, onnx_path: Path):
    """onnx2tf logs the ONNX node it failed on ("onnx_op_name: node_Conv_29"): the verdict names that node and its
    op type, where the exception alone says only which TensorFlow layer broke."""
    from deploykit.text import first_line

    log = _ANSI.sub("", log)
    match = _NODE_IN_LOG.search(log)
    if not match:
        return None
    node = match.group(1)
    names = {n.name: n.op_type for n in every_node(read_onnx(str(onnx_path)).graph)}
    # onnx2tf prefixes names that start with "/" (torch's "/rnn/LSTM" is logged as "wa/rnn/LSTM")
    node = node if node in names or not node.startswith("wa/") else node[2:]
    op = names.get(node, "?")
    detail = first_line(_reason_in_log(log) or str(exc), 240)
    return ConversionError(f"onnx2tf failed at ONNX node {node} ({op}): {detail}",
                           "run with --debug for onnx2tf's log; a converter through PyTorch or another opset may take "
                           "this node, or rewrite that part of the model")


def _reason_in_log(log: str) -> str:
    """TensorFlow's own reason, the line after Keras's 'Exception encountered when calling layer …'."""
    lines = [line.strip() for line in log.splitlines()]
    for index, line in enumerate(lines):
        if "Exception encountered when calling layer" in line:
            return next((follow for follow in lines[index + 1:] if follow), "")
    return ""


def job(payload: dict, arrays: dict) -> dict:
    """Child side: run onnx2tf on a copy of the ONNX file in a scratch directory; describe a .tflite result."""
    import numpy as np
    import onnx2tf

    out = Path(payload["out"])
    with tempfile.TemporaryDirectory(prefix="deploykit-onnx2tf-") as tmp:
        scratch = Path(tmp)
        source = scratch / "model.onnx"
        shutil.copyfile(payload["onnx"], source)
        np.save(scratch / CALIBRATION_FILE, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
        folder = scratch / "out"
        import os

        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            with captured_output(echo=True) as log:      # echoed to the child's stderr: --debug shows it
                try:
                    # copy_onnx_input_output_names_to_tflite is not used: it needs flatc and a download.
                    model = onnx2tf.convert(
                        input_onnx_file_path=str(source), output_folder_path=str(folder), not_use_onnxsim=True,
                        not_use_opname_auto_generate=True, output_signaturedefs=True,
                        keep_ncw_or_nchw_or_ncdhw_input_names=payload["keep_nchw"] or None,
                        keep_nwc_or_nhwc_or_ndhwc_input_names=payload["keep_nhwc"] or None,
                        keep_shape_absolutely_input_names=payload.get("keep_exact") or None, non_verbose=True,
                        disable_model_save=not payload["saved_model"])
                    if not payload["saved_model"]:
                        folder.mkdir(parents=True, exist_ok=True)
                        _write_float32_tflite(model, folder / "model_float32.tflite")
                except Exception as exc:  # noqa: BLE001 - onnx2tf raises anything; name the node it stopped at
                    failure = exc
                else:
                    failure = None
            if failure is not None:
                raise _failed_at_node(failure, "".join(log), Path(payload["onnx"])) or failure
        finally:
            os.chdir(cwd)
        if payload["saved_model"]:
            shutil.move(str(folder), str(out))
            for stray in out.glob("*.tflite"):
                stray.unlink()
            return {"tool": f"onnx2tf {onnx2tf.__version__}"}
        _refuse_flex_ops(folder / "model_float32.tflite", payload["onnx"], Path(onnx2tf.__file__).parent / "ops")
        _sign_with_source_names(folder / "model_float32.tflite", payload.get("names") or {})
        shutil.move(str(folder / "model_float32.tflite"), str(out))
    from deploykit.model import describe_file

    return {"tool": f"onnx2tf {onnx2tf.__version__}", "artifact": describe_file(str(out))}


def _write_float32_tflite(model, path: Path) -> None:
    """The float32 .tflite onnx2tf writes from its Keras model — the same tf.function, converter and op sets, hence
    the same bytes (checked on MobileNetV2) — without the SavedModel and the float16 .tflite it also writes, which
    a TFLite export never reads: they were about 40 % of onnx2tf's time on MobileNetV2."""
    import tensorflow as tf

    run = tf.function(func=lambda *inputs: model(inputs),
                      input_signature=[tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([run.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    converter.unfold_batchmatmul = False        # onnx2tf's default (enable_batchmatmul_unfold=False)
    path.write_bytes(converter.convert())


def _refuse_flex_ops(tflite: Path, onnx_path: str, onnx2tf_ops: Path) -> None:
    """A .tflite with TensorFlow (Flex) ops loads in no builtin LiteRT runtime: say which ops and which ONNX nodes
    they came from (the runtime's own refusal names only the op)."""
    from deploykit.errors import Outcome
    from deploykit.transforms.onnx_verdicts import flex_ops

    found = flex_ops(tflite, onnx_path, onnx2tf_ops)
    if found:
        raise ConversionError(f"onnx2tf wrote TensorFlow (Flex) op(s) that LiteRT's builtin runtime cannot run: "
                              f"{', '.join(found)}", "express that node with other ops in the source model (another "
                              "exporter or opset), or deploy the ONNX file with ONNX Runtime",
                              outcome=Outcome.ARTIFACT_LOAD_FAILED)


_TF_OUTPUT = re.compile(r"^Identity(?:_(\d+))?$")      # TensorFlow's names for a function's k-th output


def _sign_with_source_names(path: Path, names: dict) -> None:
    """Give the .tflite's inputs and outputs the source's names: the main subgraph's input and output tensors (what
    LiteRT lists without a signature, onnx2tf's case) and any signature's entries. An input is known by the prepared
    graph's name it carries, an output by that name or as TensorFlow's k-th output (Identity_k). A list is renamed
    whole or not at all (if onnx2tf named one entry otherwise, all keep onnx2tf's names, matched by position as
    before); the export's check then runs the artifact by these names, so a wrong match fails it, never passes."""
    from ai_edge_litert import schema_py_generated as schema

    if not names or path.stat().st_size >= 2**31:       # a flatbuffer over 2 GB cannot be re-packed
        return
    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    if not model.subgraphs or any(getattr(buffer, "offset", 0) > 1 for buffer in model.buffers or []):
        return
    tensors = model.subgraphs[0].tensors
    lists = [([tensors[i] for i in model.subgraphs[0].inputs], names["inputs"], False),
             ([tensors[i] for i in model.subgraphs[0].outputs], names["outputs"], True)]
    for signature in model.signatureDefs or []:
        lists += [(signature.inputs or [], names["inputs"], False), (signature.outputs or [], names["outputs"], True)]
    changed = False
    for entries, pairs, outputs in lists:
        found = [_source_name(_text(entry.name), pairs, outputs) for entry in entries]
        if found and None not in found and len(set(found)) == len(found):
            for entry, name in zip(entries, found):
                changed |= _text(entry.name) != name
                entry.name = name
    if changed:
        import flatbuffers

        builder = flatbuffers.Builder(path.stat().st_size + 4096)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        path.write_bytes(bytes(builder.Output()))


def _source_name(name: str, pairs: list, outputs: bool):
    by_name = dict(pairs)
    if name in by_name:
        return by_name[name]
    match = _TF_OUTPUT.match(name) if outputs else None
    index = int(match.group(1) or 0) if match else len(pairs)
    return pairs[index][1] if index < len(pairs) else None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
