"""ONNX -> ORT format (ONNX Runtime Mobile's ``.ort``) with ONNX Runtime's own converter, in a child process.

``onnxruntime.tools.convert_onnx_models_to_ort`` optimises the graph in an InferenceSession and saves it as the ORT
flatbuffer, then lists the operators (and, with type reduction, the types) a reduced ONNX Runtime build must
include. It runs on a copy of the ONNX file in a scratch folder: it writes beside its input (the runtime style's
second, temporary conversion too), and the user's folder may be read-only. Building a session on an untrusted
graph is native code, hence the child. The optimisation level is pinned to the tool's default ("all"): its
environment variable would otherwise change the graph and the names it writes.

The config is published beside the artifact as ``<artifact stem>.required_operators_and_types.config`` — the name
the tool itself gives it for one model — through the export's one mechanism for side files (``extra_files``:
staged, published atomically with the artifact, removed on failure).
"""
from __future__ import annotations

from pathlib import Path

from deploykit.child import CONVERT, run_child
from deploykit.conversion import Check, ConversionResult, ExportOptions, accept
from deploykit.formats import ort_operators_config
from deploykit.model import LoadedModel

TOOL = "onnxruntime.tools.convert_onnx_models_to_ort"
NCHWC_DOMAIN = "com.microsoft.nchwc"     # the x86-only layout kernels of ONNX Runtime's NCHWc transformer
REMEDY = ("the ONNX model must load in ONNX Runtime first (an op it has no kernel for has none in the .ort "
          "either); --debug shows the tool's log")


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    """Write ``out_path`` (.ort) and its required-operators config beside it, then check it against the source."""
    payload = {"onnx": model.path, "out": str(out_path), "style": options.ort_style,
               "platform": options.ort_platform, "debug": options.debug}
    info = run_child("converters.onnx_to_ort:job", payload, stage=CONVERT, what=TOOL, timeout=options.timeout,
                     debug=options.debug).info
    result = ConversionResult(path=out_path, converter="onnx_to_ort", tool=info["tool"], notes=info["notes"],
                              warnings=info["warnings"], extra_files=[ort_operators_config(out_path)])
    return accept(result, check, options, "ort_tools", "ONNX Runtime's ORT-format converter", REMEDY)


def job(payload: dict, arrays: dict) -> dict:
    """Child side: convert a scratch copy of the ONNX file, move the .ort to ``out`` and its config beside it."""
    import os
    import shutil
    import tempfile

    import onnxruntime

    os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = "all"
    out = Path(payload["out"])
    with tempfile.TemporaryDirectory(prefix="deploykit-ort-") as scratch:
        source = _scratch_copy(payload["onnx"], Path(scratch) / "model.onnx")
        written = Path(scratch) / "ort"
        _run_tool(source, written, payload)
        models, configs = sorted(written.glob("*.ort")), sorted(written.glob("*.config"))
        if len(models) != 1 or len(configs) != 1:
            from deploykit.errors import ConversionError

            raise ConversionError(f"{TOOL} wrote {len(models)} .ort and {len(configs)} .config files where one "
                                  "of each was expected", "report this with the onnxruntime version")
        shutil.move(str(models[0]), out)
        entries = [line for line in configs[0].read_text().splitlines() if line and not line.startswith("#")]
    version = onnxruntime.__version__
    config = ort_operators_config(out)
    config.write_text(_config_header(out.name, version, payload) + "".join(f"{line}\n" for line in entries))
    return {"tool": f"onnxruntime {version} convert_onnx_models_to_ort ({payload['style']} style, "
                    f"{payload['platform']}, type-reduced operator config)",
            "notes": _notes(config.name, entries, payload["style"]), "warnings": _warnings(entries)}


def _scratch_copy(path: str, copy: Path) -> Path:
    """The ONNX file as one file in the scratch folder (weights kept in a side file are read in)."""
    import shutil

    import onnx

    from deploykit.errors import ConversionError

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


def _run_tool(source: Path, written: Path, payload: dict) -> None:
    """ONNX Runtime's converter with type reduction; its failure is one ConversionError naming it."""
    _stand_in_for_torch_helpers()
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from deploykit.errors import ConversionError
    from deploykit.quiet import captured_output
    from deploykit.text import one_line

    style = OptimizationStyle.Runtime if payload["style"] == "runtime" else OptimizationStyle.Fixed
    try:
        with captured_output(echo=payload["debug"]):     # it prints progress and ORT logs a warning per session
            convert_onnx_models_to_ort(source, output_dir=written, optimization_styles=[style],
                                       target_platform=payload["platform"], enable_type_reduction=True,
                                       allow_conversion_failures=False)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own Fail/InvalidGraph/NotImplemented types
        detail = one_line(str(exc)).replace(str(source), Path(payload["onnx"]).name)    # not the scratch copy
        raise ConversionError(f"{TOOL} could not convert the model: {detail[:300]}", REMEDY) from None


def _stand_in_for_torch_helpers() -> None:
    """onnxruntime/tools/__init__.py imports its PyTorch export helpers, hence torch, whenever torch is installed:
    3 s and hundreds of MB in this child (8 s of a 10 s conversion on a busy host) for a helper the converter never
    calls. In this child of its own, an empty stand-in takes that module's place; the real one is left alone where
    it was imported already."""
    import sys
    import types

    name = "onnxruntime.tools.pytorch_export_helpers"
    if name not in sys.modules and "onnxruntime.tools" not in sys.modules:
        stand_in = types.ModuleType(name, "deploykit: stands in for ONNX Runtime's PyTorch helpers (unused here)")
        stand_in.infer_input_info = None
        sys.modules[name] = stand_in


def _config_header(name: str, version: str, payload: dict) -> str:
    """The config's comment lines: what it is for, and how it was made (the tool's own name scratch paths)."""
    # saved runtime optimisations are replayed by extended minimal builds (and full ones) only
    minimal = "--minimal_build extended" if payload["style"] == "runtime" else "--minimal_build"
    return (f"# Operators and types {name} needs in a reduced ONNX Runtime build: build.sh {minimal} "
            f"--include_ops_by_config <this file> --enable_reduced_operator_type_support\n"
            f"# Written by deploykit with onnxruntime {version} convert_onnx_models_to_ort: optimization style "
            f"{payload['style']}, target platform {payload['platform']}, type reduction on\n")


def _notes(config: str, entries: list, style: str) -> list:
    """What the manifest says of the config and, for the runtime style, of what the app must switch on."""
    count = sum(len(_operators(line)) for line in entries)
    notes = [f"{config}: {count} operator(s) in {len(entries)} domain/opset line(s), with the types ONNX Runtime "
             "records for them (a reduced build's --include_ops_by_config)"]
    if style == "runtime":
        notes.append("runtime style: the saved optimisations apply only in an extended minimal (or full) build whose "
                     "app sets session.enable_saved_runtime_optimizations=1 (this check set it)")
    return notes


def _operators(line: str) -> list:
    """The operator names of one config line ``domain;opset;Op1{types},Op2,...`` (types are JSON: commas inside
    braces belong to them)."""
    names, depth, current = [], 0, ""
    for char in line.split(";", 2)[-1] + ",":
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            names.append(current.split("{", 1)[0])
            current = ""
        else:
            current += char
    return [name for name in names if name]


def _warnings(entries: list) -> list:
    """The x86-only NCHWc kernels --ort-platform amd64 lets in: such a file does not run on a phone."""
    nchwc = [op for line in entries if line.startswith(NCHWC_DOMAIN + ";") for op in _operators(line)]
    if not nchwc:
        return []
    return [f"the .ort uses x86-only NCHWc kernels ({NCHWC_DOMAIN}: {', '.join(nchwc)}), which --ort-platform "
            "amd64 allows: it runs on x86-64 only; export with --ort-platform arm for phones"]
