"""PyTorch -> ONNX: the dynamo exporter first, the TorchScript exporter only as a fallback.

The legacy (TorchScript) exporter traces: an ``if`` on tensor values is baked in for the
branch the example input took, silently. So its result is verified on more, and more
varied, inputs than usual, and a mismatch after a data-dependent failure of the dynamo
exporter is reported as that construct, with its source line and the remedy.

Every exporter attempt runs in the command's reused child (``export_job``), where the source module
lives: the CLI process never deserializes the PyTorch file. Checking and onnxslim stay here (ONNX only).
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

from deploykit.child import CONVERT, run_child
from deploykit.constructs import (UNKNOWN_RANK_REMEDY, data_dependent_site, refuse_fused_fastpath,
                                  unknown_rank_site)
from deploykit.conversion import Check, ConversionResult, ExportOptions, acceptable
from deploykit.errors import ConversionError, exhaustion
from deploykit.formats import Format
from deploykit.inputs import random_feeds
from deploykit.model import LoadedModel, LoadOptions, child_load_options
from deploykit.quiet import captured_output
from deploykit.text import brief, exception_chain

EXTERNAL_DATA_THRESHOLD = 1_900_000_000   # protobuf's 2 GiB limit, with headroom for the graph
FALLBACK_SAMPLES = 16
FUSED_ENCODER_LAYER = "aten::_transformer_encoder_layer_fwd"    # nn.TransformerEncoderLayer's fast path, traced


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    result = ConversionResult(path=out_path, converter="torch_to_onnx", tool="")
    if model.format == Format.TORCHSCRIPT:
        # torch.export cannot read a ScriptModule: the TorchScript exporter is its native path, and
        # torch's TorchScript -> ExportedProgram converter feeds the dynamo exporter when that fails.
        # A saved trace keeps no intermediate shapes, which some symbolic functions need: the second attempt
        # records them by running the graph once (see _graph_with_recorded_shapes).
        strategies = [("torchscript", options.samples), ("torchscript+shapes", options.samples),
                      ("ts2ep+dynamo", options.samples)]
    else:
        strategies = [("dynamo", options.samples), ("torchscript", FALLBACK_SAMPLES)]
    dynamo_error, baked, external, unknown_rank = None, [], False, ""
    for name, samples in strategies:
        _remove_outputs(out_path)
        done = _export_in_child(model, name, out_path, options)
        if "error" in done:
            dynamo_error = done["error"] if name == "dynamo" else dynamo_error
            unknown_rank = unknown_rank or unknown_rank_site(done["error"])
            _record(result, name, False, brief(done["error"]))
            continue
        external = done["external"]
        baked += [SimpleNamespace(**w) for w in done["baked"]]
        report = check(out_path, samples)
        _record(result, name, report.passed, report.summary())
        if acceptable(report, options):
            result.tool, result.parity = done["tool"], report
            _explain_fallback(result, name, dynamo_error, baked, samples)
            break
    else:
        _raise_failure(result, dynamo_error, baked, unknown_rank)
    if options.optimize:
        _optimize(out_path, options, result, check, external)
    result.extra_files = [p for p in out_path.parent.iterdir() if p.name.startswith(out_path.name + ".")]
    return result


def _export_in_child(model: LoadedModel, strategy: str, out_path: Path, options: ExportOptions) -> dict:
    """One exporter's attempt, in the command's reused child: the exporters need the live module, and the
    source is deserialized there (torch's loader may abort on a crafted file) — once for every attempt."""
    load = child_load_options(model)
    request = {"source": model.path, "format": model.format.value, "load": load.to_dict(), "out": str(out_path),
               "strategy": strategy, "opset": options.opset, "dynamic_batch": options.dynamic_batch,
               "debug": options.debug}
    return run_child("converters.torch_to_onnx:export_job", request, stage=CONVERT, what="torch.onnx",
                     timeout=options.timeout, debug=options.debug, abort=getattr(model, "failure", None),
                     reuse=True).info


def export_job(request: dict, arrays: dict) -> dict:
    """Child side: load the source (or take it from an earlier job), export with one strategy, write the file.

    Returns the tool, whether the weights went to a side file, and the tracer's warnings about the user's code
    (as dicts); an exporter's failure comes back as its text (the parent tries the next strategy)."""
    from deploykit.model import load_model

    model = load_model(request["source"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    options = ExportOptions(opset=request["opset"], dynamic_batch=request["dynamic_batch"], debug=request["debug"])
    out_path = Path(request["out"])
    if model.format == Format.TORCHSCRIPT:
        refuse_fused_fastpath(model.handle, "the ONNX exporters", converted=(FUSED_ENCODER_LAYER,))
    external = _weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    example = _example_args(model, options)
    try:
        with captured_output(echo=options.debug), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tool = EXPORTERS[request["strategy"]](model, example, out_path, options, external)
    except Exception as exc:  # noqa: BLE001 - the exporters raise many types
        full = exhaustion(exc, f"writing {out_path.name}")
        if full:
            raise full from None     # no other exporter or --opset will find more disk
        return {"error": exception_chain(exc)}
    baked = [{"message": str(w.message), "filename": str(w.filename), "lineno": w.lineno}
             for w in caught if _is_user_tracer_warning(w)]
    return {"tool": tool, "external": external, "baked": baked}


def _export_dynamo(model: LoadedModel, example: tuple, out_path: Path, options: ExportOptions, external: bool) -> str:
    import torch

    kwargs = dict(dynamo=True, external_data=external, input_names=model.spec.input_names,
                  output_names=model.spec.output_names, opset_version=options.opset)
    if options.dynamic_batch and "exported_program" not in model.details:
        batch = torch.export.Dim("batch", min=1)
        kwargs["dynamic_shapes"] = {t.name: {0: batch} for t in model.spec.inputs if t.shape}
    torch.onnx.export(model.details.get("exported_program", model.handle), example, str(out_path), **kwargs)
    return f"torch.onnx.export(dynamo=True) torch {torch.__version__}"


def _export_legacy(model: LoadedModel, example: tuple, out_path: Path, options: ExportOptions, external: bool) -> str:
    import torch

    names_in, names_out = model.spec.input_names, model.spec.output_names
    dynamic_axes = {n: {0: "batch"} for n in names_in + names_out} if options.dynamic_batch else None
    # Global in torch, hence in this child only; it serves that one op, which torch has no symbolic for.
    torch.onnx.register_custom_op_symbolic(FUSED_ENCODER_LAYER, _encoder_layer_symbolic, LAYER_NORM_OPSET)
    torch.onnx.export(model.handle, example, str(out_path), dynamo=False, input_names=names_in,
                      output_names=names_out, dynamic_axes=dynamic_axes, opset_version=options.opset or 17)
    return f"torch.onnx.export(dynamo=False) torch {torch.__version__}"


def _export_recorded_shapes(model: LoadedModel, example: tuple, out_path: Path, options: ExportOptions,
                            external: bool) -> str:
    """The TorchScript exporter on the archive's frozen graph, every tensor's shape recorded by running it once."""
    import torch

    if external:     # freezing puts the weights inside the graph, and protobuf cannot hold 2 GiB of them
        raise RuntimeError("the weights are too large to freeze into the graph (protobuf's 2 GiB limit)")
    function = torch._C._create_function_from_graph("forward", _graph_with_recorded_shapes(model.handle, example))
    _export_legacy(LoadedModel(model.path, model.format, model.spec, function), example, out_path, options, external)
    return f"torch.onnx.export(dynamo=False) on the frozen graph with recorded shapes, torch {torch.__version__}"


def _graph_with_recorded_shapes(module, example: tuple):
    """The module's forward graph, frozen (weights as constants, no `self`), each top-level tensor typed exactly.

    A trace saved and loaded again keeps no intermediate shapes, and torch's legacy shape analysis knows no
    formula for ops such as unflatten or linear, so the exporter met nn.MultiheadAttention's
    unflatten → unsqueeze → transpose(0, -2) with no rank ("transpose for tensor of unknown rank"). Running a
    copy of the graph that returns every intermediate tensor gives each value the type a fresh trace has; the
    sizes stay computed by Shape ops in the graph, so a --dynamic-batch export still follows its input."""
    import torch

    frozen = torch._C._freeze_module(module._c)
    graph = frozen._get_method("forward").graph.copy()
    if list(next(graph.inputs()).uses()):
        raise RuntimeError("the frozen graph still reads attributes of the module")
    graph.eraseInput(0)
    probe = graph.copy()          # Graph.copy keeps the node order: values pair by position
    values, probed = _tensor_values(graph), _tensor_values(probe)
    every = probe.create("prim::ListConstruct", probed, 1)
    probe.appendNode(every)
    every.output().setType(torch._C.ListType.ofTensors())
    while list(probe.outputs()):
        probe.eraseOutput(0)
    probe.registerOutput(every.output())
    with torch.no_grad():
        recorded = torch._C._create_function_from_graph("recorded_shapes", probe)(*example)
    for value, tensor in zip(values, recorded):
        value.setType(torch._C.TensorType.create_from_tensor(tensor))
    return graph


def _tensor_values(graph) -> list:
    """The tensors the graph's top-level nodes produce (values inside an If/Loop body cannot be returned)."""
    import torch

    return [v for node in graph.nodes() for v in node.outputs() if isinstance(v.type(), torch._C.TensorType)]


LAYER_NORM_OPSET = 17     # ONNX's LayerNormalization


def _encoder_layer_symbolic(g, src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu,
                            norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2, ffn_weight_1,
                            ffn_bias_1, ffn_weight_2, ffn_bias_2, mask=None, mask_type=None):
    """nn.TransformerEncoderLayer's fused fast-path op (a trace under torch.no_grad records it) in plain ONNX ops,
    as the layer's own slow path computes it: batch-first [B, T, E] in and out (the fast path requires it)."""
    from torch.onnx import symbolic_helper as helper

    width, heads = helper._get_const(embed_dim, "i", "embed_dim"), helper._get_const(num_heads, "i", "num_heads")
    epsilon, ops = helper._get_const(eps, "f", "eps"), _OnnxOps(g)

    def norm(x, weight, bias):
        return g.op("LayerNormalization", x, weight, bias, epsilon_f=epsilon, axis_i=-1)

    def attention(x):
        q, k, v = g.op("Split", ops.linear(x, qkv_weight, qkv_bias), ops.ints([width] * 3), axis_i=2, outputs=3)
        scores = g.op("Mul", g.op("MatMul", ops.heads(q, heads), ops.transposed(ops.heads(k, heads), [0, 1, 3, 2])),
                      ops.real(1.0 / math.sqrt(width // heads)))
        if not helper._is_none(mask):
            scores = g.op("Add", scores, ops.additive(mask, helper._maybe_get_const(mask_type, "i")))
        mixed = g.op("MatMul", g.op("Softmax", scores, axis_i=-1), ops.heads(v, heads))
        merged = g.op("Reshape", ops.transposed(mixed, [0, 2, 1, 3]), ops.ints([0, 0, -1]))
        return ops.linear(merged, proj_weight, proj_bias)

    def feed_forward(x):
        hidden = ops.linear(x, ffn_weight_1, ffn_bias_1)
        hidden = ops.gelu(hidden) if helper._get_const(use_gelu, "b", "use_gelu") else g.op("Relu", hidden)
        return ops.linear(hidden, ffn_weight_2, ffn_bias_2)

    if helper._get_const(norm_first, "b", "norm_first"):
        x = g.op("Add", src, attention(norm(src, norm_weight_1, norm_bias_1)))
        return g.op("Add", x, feed_forward(norm(x, norm_weight_2, norm_bias_2)))
    x = norm(g.op("Add", src, attention(src)), norm_weight_1, norm_bias_1)
    return norm(g.op("Add", x, feed_forward(x)), norm_weight_2, norm_bias_2)


class _OnnxOps:
    """The few ONNX idioms the fused encoder layer is written with."""

    def __init__(self, g):
        self.g = g

    def ints(self, values):
        import torch

        return self.g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    def real(self, value):
        import torch

        return self.g.op("Constant", value_t=torch.tensor(value, dtype=torch.float32))

    def transposed(self, x, perm):
        return self.g.op("Transpose", x, perm_i=perm)

    def linear(self, x, weight, bias):
        return self.g.op("Add", self.g.op("MatMul", x, self.transposed(weight, [1, 0])), bias)

    def heads(self, x, count: int):
        """[B, T, E] → [B, heads, T, E / heads]; 0 keeps a dim, so a dynamic batch and sequence stay dynamic."""
        return self.transposed(self.g.op("Reshape", x, self.ints([0, 0, count, -1])), [0, 2, 1, 3])

    def gelu(self, x):
        """The exact (erf) GELU: ONNX's Gelu op needs opset 20."""
        erf = self.g.op("Erf", self.g.op("Div", x, self.real(math.sqrt(2.0))))
        return self.g.op("Mul", self.g.op("Mul", x, self.real(0.5)), self.g.op("Add", erf, self.real(1.0)))

    def additive(self, mask, mask_type):
        """The merged mask as scores to add: a bool mask is True where attention is barred; a key padding mask
        (type 1, [B, T]) broadcasts over heads and queries; an attention mask ([T, T] or [B, H, T, T]) as it is."""
        if mask.type().scalarType() == "Bool":
            mask = self.g.op("Where", mask, self.real(float("-inf")), self.real(0.0))
        return self.g.op("Unsqueeze", mask, self.ints([1, 2])) if mask_type == 1 else mask


def _export_ts2ep(model: LoadedModel, example: tuple, out_path: Path, options: ExportOptions, external: bool) -> str:
    import torch
    from torch._export.converter import TS2EPConverter   # private, hence only a fallback

    program = TS2EPConverter(model.handle, example).convert()
    converted = LoadedModel(model.path, Format.EXPORTED_PROGRAM, model.spec, program.module(),
                            details={"exported_program": program})
    _export_dynamo(converted, example, out_path, options, external)
    return f"TS2EPConverter + torch.onnx.export(dynamo=True) torch {torch.__version__}"


EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_legacy, "torchscript+shapes": _export_recorded_shapes,
             "ts2ep+dynamo": _export_ts2ep}


def _explain_fallback(result: ConversionResult, name: str, dynamo_error, baked: list, samples: int) -> None:
    if dynamo_error:
        result.warnings.append(f"the dynamo exporter failed ({brief(dynamo_error)}); used the {name} exporter")
    construct = data_dependent_site(dynamo_error, baked)
    if construct:
        result.warnings.append(f"data-dependent control flow at {construct}: parity holds on {samples} inputs of "
                               "varied sign and scale, but a branch no input took may differ")


def _raise_failure(result: ConversionResult, dynamo_error, baked: list, unknown_rank: str = "") -> None:
    construct = data_dependent_site(dynamo_error, baked)
    mismatch = next((a for a in result.attempts if "FAIL" in a["why"]), None)
    if unknown_rank and not mismatch:
        raise ConversionError(
            f"the TorchScript exporter met {unknown_rank}, a tensor whose rank it cannot know even with the shapes "
            "recorded from the example input, and torch's TorchScript → ExportedProgram converter failed too ("
            + "; ".join(f"{a['tool']}: {a['why']}" for a in result.attempts[1:]) + ")", UNKNOWN_RANK_REMEDY)
    if construct and mismatch:
        raise ConversionError(
            f"data-dependent control flow at {construct}: the dynamo exporter cannot capture it and the "
            f"TorchScript exporter baked in one branch ({mismatch['why']})",
            "rewrite the branch with torch.cond(pred, true_fn, false_fn, (x,)), or torch.jit.script the "
            "module so the exporter keeps the If")
    raise ConversionError("no ONNX exporter produced a matching model: "
                          + "; ".join(f"{a['tool']}: {a['why']}" for a in result.attempts),
                          "run with --debug for the exporters' logs; an unsupported op may need another --opset "
                          "or a rewrite of that part of the model")


def _remove_outputs(out_path: Path) -> None:
    for stale in [out_path] + [p for p in out_path.parent.iterdir() if p.name.startswith(out_path.name + ".")]:
        stale.unlink(missing_ok=True)


def _is_user_tracer_warning(warning) -> bool:
    """A TracerWarning raised from the user's code (torch's own internals warn about shape checks)."""
    import torch

    is_tracer = "TracerWarning" in type(warning.message).__name__
    return is_tracer and not str(warning.filename).startswith(os.path.dirname(torch.__file__))


def _optimize(out_path: Path, options: ExportOptions, result: ConversionResult, check: Check, external: bool):
    """Simplify with onnxslim, keep the result only if it still matches."""
    try:
        import onnx
        import onnxslim
    except ImportError:
        result.notes.append("onnxslim is not installed: graph left as exported")
        return
    # Same file name in a sibling folder, so reports name the artifact the user will get.
    slim_path = out_path.parent / "slim" / out_path.name
    slim_path.parent.mkdir(exist_ok=True)
    try:
        with captured_output(echo=options.debug):
            slim = onnxslim.slim(str(out_path))
            onnx.save(slim, str(slim_path), save_as_external_data=external,
                      location=out_path.name + ".data" if external else None)
    except Exception as exc:  # noqa: BLE001 - optional step: never fails an export
        result.warnings.append(f"onnxslim failed ({brief(exception_chain(exc))}); graph left as exported")
        slim_path.unlink(missing_ok=True)
        return
    report = check(slim_path, options.samples)
    if acceptable(report, options):
        os.replace(slim_path, out_path)
        for side in slim_path.parent.iterdir():      # external data, when the model is that large
            os.replace(side, out_path.parent / side.name)
        result.parity = report
        result.tool += f" + onnxslim {onnxslim.__version__}"
    else:
        slim_path.unlink(missing_ok=True)
        result.warnings.append("onnxslim changed the results (" + report.summary() + "); kept the unoptimized graph")


def _example_args(model: LoadedModel, options: ExportOptions) -> tuple:
    import torch

    # torch.export specializes a dim whose example size is 1, so a dynamic batch needs 2.
    batch = 2 if options.dynamic_batch else None
    feeds = random_feeds(model.spec, samples=1, seed=1234, batch=batch)[0]
    return tuple(torch.from_numpy(feeds[t.name]) for t in model.spec.inputs)


def _weight_bytes(model: LoadedModel) -> int:
    handle = model.handle
    tensors = list(handle.parameters()) + list(handle.buffers()) if hasattr(handle, "parameters") else []
    return sum(t.numel() * t.element_size() for t in tensors)


def _record(result: ConversionResult, tool: str, ok: bool, why: str) -> None:
    result.attempts.append({"tool": tool, "ok": ok, "why": why})
