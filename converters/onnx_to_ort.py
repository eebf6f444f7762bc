"""ONNX -> ORT format (ONNX Runtime Mobile's ``.ort``) with ONNX Runtime's own converter, in a child process.

``onnxruntime.tools.convert_onnx_models_to_ort`` optimises the graph in an InferenceSession and saves it as the ORT
flatbuffer, then lists the operators (and, with type reduction, the types) a reduced ONNX Runtime build must
include. deploykit calls it in one place, ``deploykit.transforms.ort_format.convert`` (the bundle's bill of
materials uses it too), which runs it on a copy in a scratch folder: it writes beside its input, and the user's
folder may be read-only. Building a session on an untrusted graph is native code, hence the child. The optimisation
level is pinned to the tool's default ("all"): its environment variable would otherwise change the graph.

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
from deploykit.transforms.ort_format import parse_config

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
    """Child side: convert (a one-file copy of) the ONNX file, move the .ort to ``out`` and its config beside it."""
    import os
    import shutil
    import tempfile

    import onnxruntime

    from deploykit.quiet import captured_output
    from deploykit.transforms.ort_format import convert as ort_convert

    os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = "all"
    out = Path(payload["out"])
    with tempfile.TemporaryDirectory(prefix="deploykit-ort-") as scratch:
        with captured_output(echo=payload["debug"]):     # it prints progress and ORT logs a warning per session
            written, config_text = ort_convert(payload["onnx"], Path(scratch), payload["style"], payload["platform"])
        shutil.move(str(written), out)
    entries = [line for line in config_text.splitlines() if line and not line.startswith("#")]
    version = onnxruntime.__version__
    config = ort_operators_config(out)
    config.write_text(_config_header(out.name, version, payload) + "".join(f"{line}\n" for line in entries))
    return {"tool": f"onnxruntime {version} convert_onnx_models_to_ort ({payload['style']} style, "
                    f"{payload['platform']}, type-reduced operator config)",
            "notes": _notes(config.name, entries, payload["style"]), "warnings": _warnings(entries)}


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
    count = len(parse_config("\n".join(entries)))
    notes = [f"{config}: {count} operator(s) in {len(entries)} domain/opset line(s), with the types ONNX Runtime "
             "records for them (a reduced build's --include_ops_by_config)"]
    if style == "runtime":
        notes.append("runtime style: the saved optimisations apply only in an extended minimal (or full) build whose "
                     "app sets session.enable_saved_runtime_optimizations=1 (this check set it)")
    return notes


def _warnings(entries: list) -> list:
    """The x86-only NCHWc kernels --ort-platform amd64 lets in: such a file does not run on a phone."""
    nchwc = [row["op"] for row in parse_config("\n".join(entries)) if row["domain"] == NCHWC_DOMAIN]
    if not nchwc:
        return []
    return [f"the .ort uses x86-only NCHWc kernels ({NCHWC_DOMAIN}: {', '.join(nchwc)}), which --ort-platform "
            "amd64 allows: it runs on x86-64 only; export with --ort-platform arm for phones"]
