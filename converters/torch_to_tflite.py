"""PyTorch -> TFLite directly with litert-torch (torch.export underneath, no TensorFlow needed).

The conversion runs in a child process (deploykit.child, stage "convert"): litert-torch takes
~5 s to import, prints progress, and can hang or crash natively. The child also describes the
.tflite file it wrote, so the parent does not read it again. litert-torch keeps NCHW inputs
(it inserts the transposes itself), so no layout permutation is recorded; int64 inputs become
int32 in the TFLite signature, and the LiteRT runner casts feeds accordingly.

Quantization (`--quantize int8|dynamic`) uses litert-torch's PT2E quantizer: the program is
annotated (symmetric, per-channel int8 weights), observed on the calibration feeds, and
converted with the quantization kept in the graph. Static PT2E quantizes the graph's inputs
and outputs too, so this edge serves `--quantize int8` only with `--io-dtype int8`; float
inputs go through the TFLiteConverter route instead (routing filters it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deploykit.child import CONVERT, run_child
from deploykit.constructs import data_dependence_named
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.model import LoadedModel, LoadOptions, child_load_options

EXAMPLE_SEED = 1234


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    if options.dynamic_batch:
        raise ConversionError("the litert-torch route does not make dynamic batch sizes",
                              "use --via onnx with --dynamic-batch, or export a fixed batch")
    # The child loads the source itself, the way the user asked for it: it need not wait for the parent's load.
    load = child_load_options(model)
    request = {"source": model.path, "format": model.format.value, "load": load.to_dict(), "out": str(out_path), "quantize": options.quantize}
    arrays = _stacked(options.calibration_feeds(model), model.spec.input_names) if options.quantize == "int8" else None
    info = run_child("converters.torch_to_tflite:job", request, arrays=arrays, stage=CONVERT, what="litert-torch",
                     timeout=options.timeout, debug=options.debug, abort=getattr(model, "failure", None)).info
    result = ConversionResult(path=out_path, converter="torch_to_tflite", tool=info["tool"],
                              description=info["artifact"])
    if options.quantize:
        result.notes.append(f"quantized with litert-torch PT2E: {options.quantize}"
                            + (", int8 inputs/outputs" if options.quantize == "int8" else ""))
    accept(result, check, options, "litert", "litert-torch", "try --via onnx, or report the model to litert-torch")
    if any(t.dtype == "int64" for t in model.spec.inputs):
        result.notes.append("int64 inputs are int32 in the TFLite signature (litert-torch)")
    return result


def job(request: dict, arrays: dict) -> dict:
    """Child side: load the source again, convert, write the .tflite file, describe it."""
    import os

    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    import litert_torch
    import torch

    from deploykit.inputs import random_feeds
    from deploykit.model import describe_file, load_model
    from deploykit.spec import ModelSpec

    model = load_model(request["source"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    inputs = model.spec.inputs
    feeds = random_feeds(ModelSpec(inputs), samples=1, seed=EXAMPLE_SEED)[0]
    example = tuple(torch.from_numpy(feeds[t.name]) for t in inputs)
    module = model.details["exported_program"].module() if "exported_program" in model.details else model.handle
    with data_dependence_named("litert-torch"):
        if request.get("quantize"):
            _convert_quantized(module, example, request["quantize"], arrays, [t.name for t in inputs], request["out"])
        else:
            litert_torch.convert(module, example).export(request["out"])
    version = getattr(litert_torch, "__version__", "")
    return {"tool": f"litert-torch {version} (torch {torch.__version__})".replace("  ", " "),
            "artifact": describe_file(request["out"])}


def _stacked(feeds: list, names: list) -> dict:
    """Calibration feeds for the child, stacked per input: [samples, *shape]."""
    return {name: np.stack([feed[name] for feed in feeds]) for name in names}


def _convert_quantized(module, example: tuple, mode: str, calibration: dict, names: list, out: str) -> None:
    """PT2E: annotate, observe the calibration feeds (static) or one example (dynamic), convert."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = mode == "dynamic"
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                            is_dynamic=dynamic))
    prepared = prepare_pt2e(torch.export.export(module, example).module(), quantizer)
    if dynamic:
        prepared(*example)
    else:
        for index in range(len(calibration[names[0]])):
            prepared(*(torch.from_numpy(calibration[name][index]) for name in names))
    converted = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(out)
