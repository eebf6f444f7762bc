"""PyTorch -> ONNX: the dynamo exporter first, the TorchScript exporter only as a fallback.

The legacy (TorchScript) exporter traces: an ``if`` on tensor values is baked in for the
branch the example input took, silently. So its result is verified on more, and more
varied, inputs than usual, and a mismatch after a data-dependent failure of the dynamo
exporter is reported as that construct, with its source line and the remedy.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from converters.base import Check, ConversionResult, ExportOptions
from deploykit.errors import ConversionError
from deploykit.formats import Format
from deploykit.inputs import random_feeds
from deploykit.model import LoadedModel
from deploykit.quiet import captured_output

EXTERNAL_DATA_THRESHOLD = 1_900_000_000   # protobuf's 2 GiB limit, with headroom for the graph
FALLBACK_SAMPLES = 16
_DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "data-dependent", "Could not guard on data-dependent")
_CALL_SITE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)')


def convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult:
    import torch

    result = ConversionResult(path=out_path, converter="torch_to_onnx", tool="")
    external = _weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    example = _example_args(model, options)
    report = None
    if model.format == Format.TORCHSCRIPT:
        # torch.export cannot read a ScriptModule; the TorchScript exporter is its native path.
        dynamo_error = None
        result.notes.append("TorchScript source: exported with the TorchScript-based exporter")
    else:
        dynamo_error = _try_dynamo(torch, model, example, out_path, options, external, result)
    if dynamo_error is None and model.format != Format.TORCHSCRIPT:
        report = check(out_path, options.samples)
        _record(result, "dynamo", report.passed, report.summary())
        if report.passed:
            result.tool = f"torch.onnx.export(dynamo=True) torch {torch.__version__}"
    if report is None or not report.passed:
        report = _try_legacy(torch, model, example, out_path, options, result, check, dynamo_error)
    result.parity = report
    if options.optimize:
        _optimize(out_path, options, result, check, external)
    result.extra_files = [p for p in out_path.parent.iterdir() if p.name.startswith(out_path.name + ".")]
    return result


def _try_dynamo(torch, model, example, out_path, options, external, result):
    kwargs = dict(dynamo=True, external_data=external, input_names=model.spec.input_names,
                  output_names=model.spec.output_names, opset_version=options.opset)
    if options.dynamic_batch and "exported_program" not in model.details:
        batch = torch.export.Dim("batch", min=1)
        kwargs["dynamic_shapes"] = {t.name: {0: batch} for t in model.spec.inputs if t.shape}
    source = model.details.get("exported_program", model.handle)
    try:
        with captured_output(echo=options.debug), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(source, example, str(out_path), **kwargs)
        return None
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        text = _full_text(exc)
        _record(result, "dynamo", False, _brief(text))
        return text


def _try_legacy(torch, model, example, out_path, options, result, check, dynamo_error):
    names_in, names_out = model.spec.input_names, model.spec.output_names
    dynamic_axes = {n: {0: "batch"} for n in names_in + names_out} if options.dynamic_batch else None
    module = model.handle
    for stale in [out_path] + [p for p in out_path.parent.iterdir() if p.name.startswith(out_path.name + ".")]:
        stale.unlink(missing_ok=True)
    try:
        with captured_output(echo=options.debug), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(module, example, str(out_path), dynamo=False, input_names=names_in,
                              output_names=names_out, dynamic_axes=dynamic_axes,
                              opset_version=options.opset or 17)
    except Exception as exc:  # noqa: BLE001
        _record(result, "torchscript", False, _brief(_full_text(exc)))
        raise ConversionError("both ONNX exporters failed: " + "; ".join(a["why"] for a in result.attempts),
                              "run with --debug for the exporters' logs; unsupported ops may need a newer "
                              "--opset or a rewrite of that part of the model") from None
    baked = [w for w in caught if "TracerWarning" in type(w.message).__name__ or "trace might not" in str(w.message)]
    samples = max(options.samples, FALLBACK_SAMPLES)
    report = check(out_path, samples)
    _record(result, "torchscript", report.passed, report.summary())
    construct = _data_dependent_site(dynamo_error, baked)
    if not report.passed:
        if construct:
            raise ConversionError(
                f"data-dependent control flow at {construct}: the dynamo exporter cannot capture it and the "
                f"TorchScript exporter baked in one branch (wrong on samples {report.failing_samples})",
                "rewrite the branch with torch.cond(pred, true_fn, false_fn, (x,)), or torch.jit.script the "
                "module so the exporter keeps the If")
        raise ConversionError("the exported ONNX model does not match the source: " + report.summary(),
                              "run deploykit verify with --debug, and report the model if it is a converter bug")
    result.tool = f"torch.onnx.export(dynamo=False) torch {torch.__version__}"
    if dynamo_error:
        result.warnings.append("the dynamo exporter failed (" + _brief(dynamo_error) + "); used the TorchScript "
                               "exporter instead")
    if construct:
        result.warnings.append(f"data-dependent control flow at {construct}: parity holds on {samples} inputs of "
                               "varied sign and scale, but a branch no input took may differ")
    return report


def _optimize(out_path: Path, options: ExportOptions, result: ConversionResult, check: Check, external: bool):
    """Simplify with onnxslim, keep the result only if it still matches."""
    try:
        import onnx
        import onnxslim
    except ImportError:
        result.notes.append("onnxslim is not installed: graph left as exported")
        return
    slim_path = out_path.with_name(out_path.stem + ".slim.onnx")
    try:
        with captured_output(echo=options.debug):
            slim = onnxslim.slim(str(out_path))
            onnx.save(slim, str(slim_path), save_as_external_data=external,
                      location=out_path.name + ".data" if external else None)
    except Exception as exc:  # noqa: BLE001 - optional step: never fails an export
        result.warnings.append(f"onnxslim failed ({_brief(_full_text(exc))}); graph left as exported")
        slim_path.unlink(missing_ok=True)
        return
    report = check(slim_path, options.samples)
    if report.passed:
        os.replace(slim_path, out_path)
        result.parity = report
        result.tool += f" + onnxslim {onnxslim.__version__}"
    else:
        slim_path.unlink(missing_ok=True)
        result.warnings.append("onnxslim changed the results (" + report.summary() + "); kept the unoptimized graph")


def _example_args(model: LoadedModel, options: ExportOptions) -> tuple:
    import torch

    # torch.export specializes a dim whose example size is 1, so a dynamic batch needs 2.
    batch = 2 if options.dynamic_batch else None
    feeds = random_feeds(model.spec, samples=1, seed=1234, batch=batch)[0]
    return tuple(torch.from_numpy(feeds[t.name]) for t in model.spec.inputs)


def _weight_bytes(model: LoadedModel) -> int:
    handle = model.handle
    tensors = list(handle.parameters()) + list(handle.buffers()) if hasattr(handle, "parameters") else []
    return sum(t.numel() * t.element_size() for t in tensors)


def _data_dependent_site(dynamo_error, baked_warnings) -> str:
    if dynamo_error and any(marker in dynamo_error for marker in _DATA_DEPENDENT):
        match = _CALL_SITE.search(dynamo_error.split("The following call raised this error:")[-1])
        if match:
            return f"{os.path.basename(match.group(1))}:{match.group(2)} in {match.group(3)}: `{match.group(4).strip()}`"
        return "an `if`/loop on tensor values"
    for warning in baked_warnings:
        if "boolean" in str(warning.message) or "Python value" in str(warning.message):
            return f"{os.path.basename(warning.filename)}:{warning.lineno} (a tensor converted to a Python value)"
    return ""


def _record(result: ConversionResult, tool: str, ok: bool, why: str) -> None:
    result.attempts.append({"tool": tool, "ok": ok, "why": why})


def _full_text(exc: BaseException) -> str:
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _brief(text: str) -> str:
    for line in text.splitlines():
        if "GuardOnDataDependentSymNode" in line or "Error" in line.split(":")[0]:
            summary = line.strip()
            break
    else:
        summary = text.strip().splitlines()[0] if text.strip() else "unknown error"
    summary = re.sub(r"\x1b\[[0-9;]*m", "", summary)
    return summary[:240]
