"""ONNX Runtime Mobile's .ort form and its reduced-build operator config, written by ORT's own converter
(``onnxruntime.tools.convert_onnx_models_to_ort``): the one place deploykit calls it — the ``--to ort`` edge and the
ONNX bundle's bill of materials both go through ``convert``."""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

from deploykit.errors import ConversionError

STYLES = ("fixed", "runtime")
PLATFORMS = ("arm", "amd64")


def skip_torch_helpers() -> None:
    """``onnxruntime/tools/__init__.py`` imports its PyTorch export helpers — hence torch, 3–5 s and hundreds of MB
    — whenever torch is installed, for helpers the converter, the ORT-format reader and the mobile checker never
    call. Called in a child of deploykit's own before the first ``onnxruntime.tools`` import, an empty stand-in
    takes that module's place; where onnxruntime.tools is imported already nothing changes."""
    import sys
    import types

    name = "onnxruntime.tools.pytorch_export_helpers"
    if name not in sys.modules and "onnxruntime.tools" not in sys.modules:
        stand_in = types.ModuleType(name, "deploykit: stands in for ONNX Runtime's PyTorch helpers (unused here)")
        stand_in.infer_input_info = None
        sys.modules[name] = stand_in


def convert(onnx_path: str, folder: Path, style: str = "fixed", platform: str = "arm") -> tuple:
    """(the .ort file, its required_operators_and_types.config text) for ``onnx_path``, written under ``folder``.
    The config's comment lines (which name ORT's temporary paths) are replaced by one naming the settings."""
    skip_torch_helpers()
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    optimization = OptimizationStyle.Fixed if style == "fixed" else OptimizationStyle.Runtime
    with tempfile.TemporaryDirectory(prefix="deploykit-ort-") as tmp:
        source = _one_file_copy(onnx_path, Path(tmp) / "model.onnx")   # ORT writes next to its input
        out = Path(tmp) / "out"
        chatter = io.StringIO()
        config_log = logging.getLogger("ort_format_model.utils")     # "Created config in <tmp path>" at INFO
        level = config_log.level
        config_log.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(chatter):
                convert_onnx_models_to_ort(source, out, [optimization], target_platform=platform,
                                           enable_type_reduction=True)
        except Exception as exc:  # noqa: BLE001 - ORT raises RuntimeError/Fail/ValueError by cause
            detail = (str(exc).splitlines() or [type(exc).__name__])[0].replace(str(source), Path(onnx_path).name)
            raise ConversionError(f"ONNX Runtime's convert_onnx_models_to_ort failed: {detail[:200]}",
                                  "run with --debug for its log; the model must load in ONNX Runtime first") from None
        finally:
            config_log.setLevel(level)
        ort_files = sorted(out.glob("*.ort"))
        configs = sorted(out.glob("*.config"))
        if len(ort_files) != 1 or len(configs) != 1:
            raise ConversionError("ONNX Runtime's convert_onnx_models_to_ort wrote no .ort and config "
                                  f"({', '.join(p.name for p in out.iterdir()) or 'nothing'})",
                                  "run with --debug for its log")
        target = Path(folder) / "model.ort"
        shutil.move(str(ort_files[0]), target)
        lines = [line for line in configs[0].read_text().splitlines() if line and not line.startswith("#")]
    header = f"# required operators and types (onnxruntime reduced build; optimization {style}, platform {platform})"
    return target, "\n".join([header, *lines]) + "\n"


def _one_file_copy(path: str, copy: Path) -> Path:
    """``path`` copied to ``copy``, with the weights read in when they sit in a side file (a copy of the .onnx
    alone would lose them; the export and the bundle's BOM both convert such models)."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        shutil.copyfile(path, copy)
        return copy
    try:
        onnx.save(onnx.load(path), str(copy))
    except ValueError as exc:       # protobuf's 2 GB: an ORT-format flatbuffer cannot hold more either
        raise ConversionError(f"the model is too large for one file ({exc})",
                              "ORT-format files hold at most 2 GB: deploy the .onnx with its weights file") from None
    return copy


def operators(onnx_path: str, platform: str = "arm") -> dict:
    """The ONNX Runtime part of a bill of materials: the config a reduced build takes, and its parsed rows."""
    import importlib.metadata

    with tempfile.TemporaryDirectory(prefix="deploykit-ort-bom-") as tmp:
        _ort, config = convert(onnx_path, Path(tmp), "fixed", platform)
    return {"runtime": "onnxruntime", "format": "onnx",
            "tool": f"onnxruntime {importlib.metadata.version('onnxruntime')} convert_onnx_models_to_ort "
                    f"(--enable_type_reduction, fixed, {platform})",
            "required_operators_config": config, "operators": parse_config(config)}


def ort_file_operators(ort_path: str) -> dict:
    """The bill of materials of an .ort file itself: ORT's own reader of the format
    (``ort_format_model.utils.create_config_from_models``, type-reduced)."""
    import importlib.metadata

    skip_torch_helpers()
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    with tempfile.TemporaryDirectory(prefix="deploykit-ort-bom-") as tmp:
        target = Path(tmp) / "required_operators_and_types.config"
        try:
            create_config_from_models([Path(ort_path)], target, enable_type_reduction=True)
        except Exception as exc:  # noqa: BLE001 - its flatbuffer reader raises what the damage makes it raise
            from deploykit.errors import ModelLoadError

            raise ModelLoadError(f"{Path(ort_path).name}: ONNX Runtime's ORT-format reader failed "
                                 f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})",
                                 "convert it again with deploykit export --to ort") from None
        lines = [line for line in target.read_text().splitlines() if line and not line.startswith("#")]
    config = "\n".join(["# required operators and types (onnxruntime reduced build; read from the .ort file)",
                        *lines]) + "\n"
    return {"runtime": "onnxruntime", "format": "ort",
            "tool": f"onnxruntime {importlib.metadata.version('onnxruntime')} ort_format_model "
                    "create_config_from_models (type-reduced)",
            "required_operators_config": config, "operators": parse_config(config)}


def parse_config(text: str) -> list:
    """[{"domain", "opset", "op", "types"}] of a required_operators(_and_types).config text."""
    import json

    found = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        domain, opset, ops = line.split(";", 2)
        for op, types in _split_ops(ops):
            found.append({"domain": domain, "opset": int(opset), "op": op, "types": json.loads(types) if types else {}})
    return found


def _split_ops(text: str) -> list:
    """'Conv{"inputs": {...}},Relu' -> [("Conv", '{"inputs": {...}}'), ("Relu", "")] (commas inside braces kept)."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text + ","):
        depth += char == "{"
        depth -= char == "}"
        if char == "," and depth == 0:
            item = text[start:i].strip()
            if item:
                brace = item.find("{")
                items.append((item, "") if brace < 0 else (item[:brace], item[brace:]))
            start = i + 1
    return items
