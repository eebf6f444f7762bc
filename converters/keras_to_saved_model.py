"""Keras -> SavedModel with Keras 3's model.export (a serving_default signature)."""
from __future__ import annotations

from pathlib import Path

from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.errors import ConversionError
from deploykit.model import LoadedModel
from deploykit.quiet import captured_output
from deploykit.text import one_line


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    import keras

    result = ConversionResult(path=out_path, converter="keras_to_saved_model", tool=f"keras {keras.__version__} "
                              "model.export")
    try:
        with captured_output(echo=options.debug):
            model.handle.export(str(out_path), verbose=False)
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"model.export failed: {one_line(str(exc))}",
                              "check that the model is a Keras 3 model with static input signatures") from None
    return accept(result, check, options, "keras_export", "model.export", "run deploykit verify --debug on the artifact")
