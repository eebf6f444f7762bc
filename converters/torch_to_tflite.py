"""PyTorch -> TFLite directly with litert-torch (torch.export underneath, no TensorFlow needed).

The conversion runs in a child process (converters/child.py): litert-torch takes ~5 s to
import, prints progress, and can hang or crash natively. litert-torch keeps NCHW inputs
(it inserts the transposes itself), so no layout permutation is recorded; int64 inputs
become int32 in the TFLite signature, and the LiteRT runner casts feeds accordingly.

Quantization (`--quantize int8|dynamic`) uses litert-torch's PT2E quantizer: the program is
annotated (symmetric, per-channel int8 weights), observed on the calibration feeds, and
converted with the quantization kept in the graph. Static PT2E quantizes the graph's inputs
and outputs too, so this edge serves `--quantize int8` only with `--io-dtype int8`; float
inputs go through the TFLiteConverter route instead (routing filters it).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from converters.base import Check, ConversionResult, ExportOptions, accept
from converters.child import run_job
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.model import LoadedModel

EXAMPLE_SEED = 1234


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    if options.dynamic_batch:
        raise ConversionError("the litert-torch route does not make dynamic batch sizes",
                              "use --via onnx with --dynamic-batch, or export a fixed batch")
    payload = {"source": model.path, "weights": model.weights, "out": str(out_path),
               "trust_pickle": model.format == Format.TORCH_PICKLE,
               "inputs": [t.to_dict() for t in model.spec.inputs], "quantize": options.quantize}
    with tempfile.TemporaryDirectory(prefix="deploykit-calib-") as tmp:
        if options.quantize == "int8":
            payload["calibration"] = str(Path(tmp) / "calibration.npz")
            _save_feeds(options.calibration_feeds(model), model.spec.input_names, payload["calibration"])
        info = run_job("converters.torch_to_tflite:job", payload, options.timeout, options.debug)
    result = ConversionResult(path=out_path, converter="torch_to_tflite", tool=info["tool"])
    if options.quantize:
        result.notes.append(f"quantized with litert-torch PT2E: {options.quantize}"
                            + (", int8 inputs/outputs" if options.quantize == "int8" else ""))
    accept(result, check, options, "litert", "litert-torch", "try --via onnx, or report the model to litert-torch")
    if any(t.dtype == "int64" for t in model.spec.inputs):
        result.notes.append("int64 inputs are int32 in the TFLite signature (litert-torch)")
    return result


def job(payload: dict) -> dict:
    """Child side: load the source again, convert, write the .tflite file."""
    import os

    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    import litert_torch
    import torch

    from deploykit.inputs import random_feeds
    from deploykit.model import LoadOptions, load_model
    from deploykit.spec import ModelSpec, TensorSpec

    specs = tuple(TensorSpec.from_dict(t) for t in payload["inputs"])
    model = load_model(payload["source"], LoadOptions(weights=payload["weights"], trust_pickle=payload["trust_pickle"],
                                                      input_specs=specs))
    feeds = random_feeds(ModelSpec(specs), samples=1, seed=EXAMPLE_SEED)[0]
    example = tuple(torch.from_numpy(feeds[t.name]) for t in specs)
    module = model.details["exported_program"].module() if "exported_program" in model.details else model.handle
    try:
        if payload.get("quantize"):
            _convert_quantized(module, example, payload)
        else:
            litert_torch.convert(module, example).export(payload["out"])
    except Exception as exc:  # noqa: BLE001 - name the construct when torch.export is what failed
        from converters.torch_to_onnx import _full_text, data_dependent_site

        site = data_dependent_site(_full_text(exc))
        if site:
            raise ConversionError(f"data-dependent control flow at {site}: torch.export (inside litert-torch) "
                                  "cannot capture it", "rewrite the branch with torch.cond(pred, true_fn, false_fn, "
                                  "(x,)) so that both branches are exported") from None
        raise
    version = getattr(litert_torch, "__version__", "")
    return {"tool": f"litert-torch {version} (torch {torch.__version__})".replace("  ", " ")}


def _save_feeds(feeds: list, names: tuple, path: str) -> None:
    """Calibration feeds for the child, stacked per input: [samples, *shape]."""
    np.savez(path, **{name: np.stack([feed[name] for feed in feeds]) for name in names})


def _convert_quantized(module, example: tuple, payload: dict) -> None:
    """PT2E: annotate, observe the calibration feeds (static) or one example (dynamic), convert."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = payload["quantize"] == "dynamic"
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                            is_dynamic=dynamic))
    prepared = prepare_pt2e(torch.export.export(module, example).module(), quantizer)
    if dynamic:
        prepared(*example)
    else:
        with np.load(payload["calibration"]) as data:
            names = [t["name"] for t in payload["inputs"]]
            for index in range(len(data[names[0]])):
                prepared(*(torch.from_numpy(data[name][index]) for name in names))
    converted = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(payload["out"])
