"""PyTorch -> TFLite directly with litert-torch (torch.export underneath, no TensorFlow needed).

The conversion runs in a child process (converters/child.py): litert-torch takes ~5 s to
import, prints progress, and can hang or crash natively. litert-torch keeps NCHW inputs
(it inserts the transposes itself), so no layout permutation is recorded; int64 inputs
become int32 in the TFLite signature, and the LiteRT runner casts feeds accordingly.
"""
from __future__ import annotations

from pathlib import Path

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
               "inputs": [t.to_dict() for t in model.spec.inputs]}
    info = run_job("converters.torch_to_tflite:job", payload, options.timeout, options.debug)
    result = ConversionResult(path=out_path, converter="torch_to_tflite", tool=info["tool"])
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
