"""Keras -> SavedModel with Keras 3's model.export (a serving_default signature).

model.export needs the live Keras model: it runs in the command's reused child, where the source is loaded
(the CLI process never deserializes a Keras file).
"""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from deploykit.child import CONVERT, run_child
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.model import LoadedModel, LoadOptions
from deploykit.quiet import captured_output
from deploykit.text import one_line


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    result = ConversionResult(path=out_path, converter="keras_to_saved_model", tool=f"keras {version('keras')} "
                              "model.export")
    request = {"source": model.path, "format": model.format.value, "out": str(out_path),
               "load": (model.load or LoadOptions()).to_dict(), "debug": options.debug}
    run_child("converters.keras_to_saved_model:job", request, stage=CONVERT, what="model.export",
              timeout=options.timeout, debug=options.debug, reuse=True)
    return accept(result, check, options, "keras_export", "model.export", "run deploykit verify --debug on the artifact")


def job(request: dict, arrays: dict) -> dict:
    """Child side: the loaded Keras model exported as a SavedModel folder."""
    from deploykit.model import load_model

    model = load_model(request["source"], LoadOptions.from_dict(request["load"]), Format(request["format"]))
    try:
        with captured_output(echo=request["debug"]):
            model.handle.export(request["out"], verbose=False)
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"model.export failed: {one_line(str(exc))}",
                              "check that the model is a Keras 3 model with static input signatures") from None
    return {}
