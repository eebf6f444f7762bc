"""PyTorch -> ExecuTorch (.pte): torch.export, lowered to the XNNPACK delegate, the rest on portable kernels.

The conversion runs in a child process (deploykit.child, stage "convert"): exir takes ~8 s to
import, prints warnings by the dozen, and lowering can crash natively. TorchScript archives go
through torch's TorchScript -> ExportedProgram converter (the ONNX edge's fallback path), since
torch.export cannot read them.

What XNNPACK does not take stays on ExecuTorch's portable kernels, which are much slower and may be
missing from a runtime build: the route's notes count the ops inside the delegate and name every
op left outside it (read back from the written program, as any .pte is described).

Quantization (`--quantize int8|dynamic`) is PT2E with ExecuTorch's XNNPACKQuantizer (symmetric,
per-channel int8 weights): int8 observes the calibration feeds, dynamic quantizes activations at
run time (XNNPACK's dynamic int8 covers linear layers). Inputs and outputs stay float either way:
the quantize/dequantize steps are inside the program.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from deploykit.child import CONVERT, pack_samples, run_child, unpack_samples
from deploykit.constructs import data_dependence_named, refuse_fused_fastpath
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept, with_source_names
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.model import LoadedModel, LoadOptions, child_load_options

EXAMPLE_SEED = 1234
REMEDY = "run with --debug for exir's log; try --to onnx or --to tflite, or report the model to ExecuTorch"


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    if options.dynamic_batch:
        raise ConversionError("the ExecuTorch route exports a fixed batch (XNNPACK's dynamic shapes need upper "
                              "bounds deploykit does not ask for)", "export a fixed batch, or use --to onnx")
    load = child_load_options(model)
    request = {"source": model.path, "format": model.format.value, "load": load.to_dict(), "out": str(out_path), "quantize": options.quantize}
    arrays = pack_samples(options.calibration_feeds(model)) if options.quantize == "int8" else None
    info = run_child("converters.torch_to_executorch:job", request, arrays=arrays, stage=CONVERT,
                     what="ExecuTorch (exir)", timeout=options.timeout, debug=options.debug,
                     abort=getattr(model, "failure", None)).info
    result = ConversionResult(path=out_path, converter="torch_to_executorch", tool=info["tool"],
                              description=info["artifact"])
    result.notes.append(info["coverage"])
    if info["portable_ops"]:
        why = "; ".join(f"{op}: {reason}" for op, reason in info["left_out"].items())
        result.warnings.append(f"{sum(info['portable_ops'].values())} op(s) stayed outside the XNNPACK delegate, on "
                               f"ExecuTorch's portable kernels (slower) — {why}")
    if options.quantize:
        result.notes.append(f"quantized with ExecuTorch's XNNPACKQuantizer (PT2E, per-channel): {options.quantize}"
                            + (", calibrated" if options.quantize == "int8" else ", activations at run time"))
    accept(result, check, options, "executorch", "ExecuTorch", REMEDY)
    return result


def job(request: dict, arrays: dict) -> dict:
    """Child side: load the source again, export, quantize if asked, lower, write the .pte, describe it."""
    import torch
    from executorch.version import __version__ as et_version

    from deploykit.inputs import random_feeds
    from deploykit.model import describe_file, load_model
    from deploykit.spec import ModelSpec

    model = load_model(request["source"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    inputs = model.spec.inputs
    feeds = random_feeds(ModelSpec(inputs), samples=1, seed=EXAMPLE_SEED)[0]
    example = tuple(torch.from_numpy(feeds[t.name]) for t in inputs)
    with data_dependence_named("ExecuTorch's exporter"):
        program = _exported(model, example)
        if request.get("quantize"):
            calibration = [tuple(torch.from_numpy(f[t.name]) for t in inputs) for f in unpack_samples(arrays)]
            program = _quantized(program, example, request["quantize"], calibration)
        delegated, left_out = _lower_and_write(program, request["out"])
    artifact = with_source_names(describe_file(request["out"]), model.spec)
    placement = artifact["details"]["delegation"]
    return {"tool": f"executorch {et_version} to_edge_transform_and_lower + XnnpackPartitioner "
                    f"(torch {torch.__version__})",
            "artifact": artifact, "portable_ops": placement["portable_ops"], "left_out": left_out,
            "coverage": _coverage(delegated, placement)}


def _exported(model: LoadedModel, example: tuple):
    """The source as an ExportedProgram: as saved, converted from TorchScript, or exported now."""
    import torch

    if "exported_program" in model.details:
        return model.details["exported_program"]
    if model.format == Format.TORCHSCRIPT:
        from torch._export.converter import TS2EPConverter   # private; the ONNX edge's fallback uses it too

        refuse_fused_fastpath(model.handle, "torch's TorchScript converter (hence ExecuTorch)")
        return TS2EPConverter(model.handle, example).convert()
    return torch.export.export(model.handle.eval(), example)


def _quantized(program, example: tuple, mode: str, calibration: list):
    """PT2E with ExecuTorch's XNNPACKQuantizer: annotate, observe (int8) or not (dynamic), convert, re-export."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = mode == "dynamic"
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                is_dynamic=dynamic))
    prepared = prepare_pt2e(program.module(), quantizer)
    for sample in ([example] if dynamic else calibration):
        prepared(*sample)
    return torch.export.export(convert_pt2e(prepared), example)


def _lower_and_write(program, out: str) -> tuple:
    """Lower to XNNPACK (what it takes) and write the program.

    Returns (how many ops went into delegates, {op left outside: why}). The partitioner says why it
    rejects a node through debug logging (exir's WhyNoPartition); an op it has no config for is simply
    not claimed."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with _partitioner_reasons() as reasons:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module
    delegated = sum(1 for _name, lowered in graph.named_children() if hasattr(lowered, "original_module")
                    for node in lowered.original_module.graph.nodes if node.op == "call_function")
    left = {}
    for node in graph.graph.nodes:
        name = getattr(node.target, "__name__", str(node.target))
        if node.op == "call_function" and name not in ("getitem", "executorch_call_delegate"):
            left.setdefault(name, reasons.get(node.name, "XNNPACK has no support for this op"))
    with open(out, "wb") as handle:
        handle.write(edge.to_executorch().buffer)
    return delegated, left


@contextlib.contextmanager
def _partitioner_reasons():
    """{node name: the XNNPACK partitioner's reason for leaving it out}, captured from its debug log."""
    import logging

    reasons: dict = {}

    class Capture(logging.Handler):
        def emit(self, record):
            message = record.msg
            if hasattr(message, "reason") and getattr(message, "node", None) is not None:
                reasons.setdefault(message.node.name, str(message.reason))

    logger, handler = logging.getLogger("executorch.backends.xnnpack"), Capture(logging.DEBUG)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield reasons
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _coverage(delegated: int, placement: dict) -> str:
    """'XNNPACK took 66 ops (1 delegate call); 0 on portable kernels' — the route table's delegation line."""
    calls = sum(placement["delegate_calls"].values())
    portable = placement["portable_ops"]
    left = (f"{sum(portable.values())} on portable kernels: " + ", ".join(f"{op} ×{n}" for op, n in portable.items())
            if portable else "fully delegated, 0 ops on portable kernels")
    return f"XNNPACK took {delegated} ops ({calls} delegate call{'s' * (calls != 1)}); {left}"
