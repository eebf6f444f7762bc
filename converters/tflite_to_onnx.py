"""TFLite -> ONNX with tf2onnx's TFLite reader, in a child process.

tf2onnx can leave TFLite-only fused ops in the graph, or exit 0 after logging "Unsupported
ops"; the check loads and runs the result in ONNX Runtime, so such a file is a failed
conversion, never a success. The layout is the TFLite file's own. tf2onnx names the graph's inputs and outputs
after the flatbuffer's tensors (``StatefulPartitionedCall:1``), in the flatbuffer's order, which need not be the
signature's: they are renamed to the signature's names and put in its order, so that checks pair them by name.
tf2onnx reads no TFLite sparsity: a file with sparse weights (MediaPipe's pose detector) is converted from a copy
with those weights stored dense (deploykit.transforms.tflite_prep), which LiteRT runs bit-identically.
"""
from __future__ import annotations

from pathlib import Path

from deploykit.child import CONVERT, run_child
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.model import LoadedModel

DEFAULT_OPSET = 17


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    payload = {"tflite": model.path, "out": str(out_path), "opset": options.opset or DEFAULT_OPSET,
               "names": _signature_names(model)}
    info = run_child("converters.tflite_to_onnx:job", payload, stage=CONVERT, what="tf2onnx", timeout=options.timeout,
                     debug=options.debug).info
    result = ConversionResult(path=out_path, converter="tflite_to_onnx", tool=info["tool"],
                              notes=list(info.get("notes") or []))
    _refuse_leftover_ops(out_path, model.path)
    return accept(result, check, options, "tf2onnx", "tf2onnx (from TFLite)",
                  "the TFLite file may use fused TFLite-only ops; convert from the original model instead")


def _signature_names(model: LoadedModel) -> list:
    """[tensor name, signature name] of each input then output, in the signature's order (LiteRT's loader records
    the map; a file without a signature has none: tf2onnx's names are the tensors' own)."""
    tensors = model.details.get("tensor_names") or {}
    order = list(model.spec.input_names) + list(model.spec.output_names)
    return [[tensors[name], name] for name in order if name in tensors]


def _refuse_leftover_ops(onnx_path: Path, tflite_path: str) -> None:
    """Every TFLite-only op tf2onnx left in the graph, named at once with its count (not just the first that ONNX
    Runtime trips on), beside the custom ops the .tflite file declares."""
    from collections import Counter

    import onnx

    from deploykit.errors import ConversionError
    from deploykit.onnx_io import every_node
    from deploykit.tflite_metadata import custom_ops

    try:
        nodes = list(every_node(onnx.load(str(onnx_path)).graph))   # unchecked: the checker stops at the first op
    except Exception:  # noqa: BLE001 - a file that does not parse: accept says so
        return
    # ai.onnx.ml and com.microsoft ops run on ONNX Runtime: only what tf2onnx could not translate is named
    runnable = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
    left = Counter(n.op_type for n in nodes if n.op_type.startswith("TFL_") or n.domain not in runnable)
    if not left:
        return
    declared = custom_ops(Path(tflite_path).read_bytes())
    ops = ", ".join(f"{op} ×{count}" for op, count in sorted(left.items()))
    raise ConversionError(
        f"tf2onnx (from TFLite) left {len(left)} op type(s) ONNX has no kernel for: {ops}"
        + (f"; the .tflite declares custom op(s) {', '.join(declared)} (fused by the app's own runtime)"
           if declared else ""),
        "convert from the model the .tflite was made from, or run the .tflite itself on LiteRT with those kernels")


def job(payload: dict, arrays: dict) -> dict:
    import os
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf2onnx

    from deploykit.transforms.tflite_prep import densify_sparse_constants

    prepared = densify_sparse_constants(Path(payload["tflite"]).read_bytes())
    with tempfile.TemporaryDirectory(prefix="deploykit-tflite-") as scratch:   # never beside the user's output
        source = payload["tflite"]
        if prepared.densified:
            source = str(Path(scratch) / "dense.tflite")
            Path(source).write_bytes(prepared.model_bytes)
        tf2onnx.convert.from_tflite(source, opset=payload["opset"], output_path=payload["out"])
    if payload.get("names"):
        _rename_io(payload["out"], payload["names"])
    return {"tool": f"tf2onnx {tf2onnx.__version__} (from TFLite) opset {payload['opset']}",
            "notes": [prepared.note()] if prepared.densified else []}


def _rename_io(path: str, pairs: list) -> None:
    """Rename the graph's inputs and outputs from tensor names to signature names, and order them as the signature
    does. A signature name some other tensor of the graph already has is left alone (names must stay unique)."""
    import onnx

    from deploykit.onnx_io import every_node

    model = onnx.load(path)
    graph = model.graph
    taken = {n for node in every_node(graph) for n in list(node.input) + list(node.output)}
    taken |= {t.name for t in graph.initializer}
    rename = {old: new for old, new in pairs if old != new and new not in taken}
    for node in every_node(graph):
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                names[i] = rename.get(name, name)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = rename.get(value.name, value.name)
    rank = {new: i for i, (_old, new) in enumerate(pairs)}
    for field in (graph.input, graph.output):
        ordered = sorted(field, key=lambda v: rank.get(v.name, len(rank)))
        copies = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in ordered]
        del field[:]
        field.extend(copies)
    onnx.save(model, path)
