"""PyTorch -> Apple Core AI (.aimodel): torch.export, decomposed with coreai-torch's table, lowered by its
TorchConverter and saved as an asset folder (metadata.json + one bytecode program per entry point).

The conversion runs in a child process (deploykit.child, stage "convert"): coreai-torch imports
torch and Apple's MLIR bindings and prints a line per program. TorchScript archives go through
torch's TorchScript -> ExportedProgram converter, as for ExecuTorch. Tensor names: the asset is
given the source's input and output names, so a Core AI app calls ``main`` with the names the
research model used.

``--quantize fp16`` stores the weights in float16 and computes in float16, with float32 inputs and
outputs (the casts are inside the program), which is how an app keeps feeding float32 buffers.
Core AI's weight compression (int8/int4 palettes and linear quantization) sits behind private
modules of coreai-torch 0.4.3 (``coreai_torch._compression``), so no int8 route is offered yet.
"""
from __future__ import annotations

import re
from pathlib import Path

from deploykit.child import CONVERT, run_child
from deploykit.constructs import data_dependence_named, refuse_fused_fastpath
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept, with_source_names
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.model import LoadedModel, LoadOptions, child_load_options
from deploykit.text import one_line

EXAMPLE_SEED = 1234
ENTRY_POINT = "main"
REMEDY = ("run with --debug for coreai-torch's own log; try --to onnx or --to tflite, or report the model to "
          "coreai-torch")


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    load = child_load_options(model)
    request = {"source": model.path, "format": model.format.value, "load": load.to_dict(), "out": str(out_path),
               "fp16": options.quantize == "fp16", "dynamic_batch": options.dynamic_batch}
    info = run_child("converters.torch_to_coreai:job", request, stage=CONVERT, what="Core AI (coreai-torch)",
                     timeout=options.timeout, debug=options.debug, abort=getattr(model, "failure", None)).info
    result = ConversionResult(path=out_path, converter="torch_to_coreai", tool=info["tool"],
                              description=info["artifact"])
    result.notes.append(info["ops_note"])
    if options.quantize == "fp16":
        result.notes.append("fp16: weights stored and computed in float16, inputs and outputs float32 "
                            "(casts inside the program)")
    accept(result, check, options, "coreai-torch", "Core AI", REMEDY)
    return result


def job(request: dict, arrays: dict) -> dict:
    """Child side: load the source again, export it, lower it with coreai-torch, save the asset, describe it."""
    import torch
    import coreai_torch

    from deploykit.inputs import random_feeds
    from deploykit.model import describe_file, load_model
    from deploykit.spec import ModelSpec

    model = load_model(request["source"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    inputs, outputs = model.spec.inputs, model.spec.outputs
    feeds = random_feeds(ModelSpec(inputs), samples=1, seed=EXAMPLE_SEED)[0]
    example = tuple(torch.from_numpy(feeds[t.name]) for t in inputs)
    names_in, names_out = [t.name for t in inputs], [t.name for t in outputs]    # Core AI takes any name as given
    with data_dependence_named("coreai-torch's exporter"):
        program = _exported(model, example, request["fp16"], request["dynamic_batch"])
        try:
            program = program.run_decompositions(coreai_torch.get_decomp_table())
            converter = coreai_torch.TorchConverter()
            converter.add_exported_program(program, input_names=names_in,
                                           output_names=names_out if len(names_out) == _output_count(program)
                                           else None, entrypoint_name=ENTRY_POINT)
            converter.to_coreai().save_asset(Path(request["out"]))
        except (ValueError, RuntimeError, NotImplementedError, TypeError, AssertionError) as exc:
            raise _conversion_error(exc) from None
    artifact = with_source_names(describe_file(request["out"]), model.spec)
    return {"tool": f"coreai-torch {coreai_torch.__version__} TorchConverter (torch {torch.__version__})",
            "artifact": artifact, "ops_note": _ops_note(artifact["details"])}


def _output_count(program) -> int:
    return len(program.graph_signature.user_outputs)


def _exported(model: LoadedModel, example: tuple, fp16: bool, dynamic_batch: bool):
    """The source as an ExportedProgram: as saved (a .pt2 keeps the shapes it was exported with), converted from
    TorchScript, or exported now (with a batch Dim for --dynamic-batch); with fp16, the module in half precision
    between float32 casts, exported again."""
    import torch

    saved = model.details.get("exported_program")
    if saved is not None and not fp16:
        return saved
    if saved is None and model.format == Format.TORCHSCRIPT:
        from torch._export.converter import TS2EPConverter   # private; the ONNX and ExecuTorch edges use it too

        refuse_fused_fastpath(model.handle, "torch's TorchScript converter (hence Core AI)")
        # Its program leaves every dim but the first symbolic: exported again below, the shapes are the example's
        # (or a batch Dim with --dynamic-batch), as for any module.
        module = TS2EPConverter(model.handle, example).convert().module()
    else:
        module = saved.module() if saved is not None else model.handle.eval()
    shapes = None
    if dynamic_batch and saved is None:
        batch = torch.export.Dim("batch", min=1)
        shapes = tuple({0: batch} if t.dim() else None for t in example)
    try:
        return torch.export.export(_HalfPrecision(module) if fp16 else module, example, dynamic_shapes=shapes)
    except torch._dynamo.exc.UserError as exc:      # noqa: SLF001 - torch.export's own "constraints violated"
        if shapes is None:
            raise
        raise ConversionError(f"the model fixes its batch size inside (torch.export: {one_line(str(exc), 120)})",
                              "drop --dynamic-batch") from None


def _half_precision_class():
    import torch

    class HalfPrecision(torch.nn.Module):
        """float32 in, the wrapped module in float16, float32 out."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner.half()

        def forward(self, *args):
            cast = tuple(a.half() if a.is_floating_point() else a for a in args)
            out = self.inner(*cast)
            if isinstance(out, (tuple, list)):
                return type(out)(o.float() if o.is_floating_point() else o for o in out)
            return out.float() if out.is_floating_point() else out

    return HalfPrecision


def _HalfPrecision(module):      # noqa: N802 - a class made on first use (torch is imported in the child only)
    return _half_precision_class()(module)


def _conversion_error(exc: Exception) -> Exception:
    """coreai-torch's own reason, one line: the unsupported ATen op it names, or what it says (a ConversionError:
    raised in the child, it comes back as the same class and ends this route, not the export)."""
    text = str(exc)
    ops = re.search(r"unsupported ATen ops?: ([\w., ]+?)(?:\.\s|\. Use|$)", text)
    if ops:
        return ConversionError(f"Core AI cannot convert the model: coreai-torch has no lowering for "
                                     f"{ops.group(1).strip()}", "rewrite that part of the model with supported "
                                     "ops, or use --to onnx / --to tflite / --to executorch")
    return ConversionError(f"coreai-torch could not convert the model: {type(exc).__name__}: "
                           f"{one_line(text, 300)}", REMEDY)


def _ops_note(details: dict) -> str:
    """'Core AI program: 41 ops (constant ×15, reshape ×3, …); compute float32' — the route's note."""
    ops = details.get("ops") or {}
    top = ", ".join(f"{op} ×{n}" for op, n in list(ops.items())[:6])
    more = f", … {len(ops) - 6} more kinds" if len(ops) > 6 else ""
    computes = ", ".join(details.get("compute_types") or []) or "unknown"
    return f"Core AI program: {sum(ops.values())} ops ({top}{more}); compute types {computes}"
