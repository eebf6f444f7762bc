"""The Python API. The CLI is a thin layer over these functions.

    from deploykit import api
    result = api.export("model.pt2", to="onnx", output="model.onnx")
    report = api.verify("model.pt2", ["model.onnx"])
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from deploykit import fsutil, manifest, registry
from deploykit.checking import Checker
from deploykit.errors import ConversionError, UsageError
from deploykit.formats import Format
from deploykit.inputs import load_npz
from deploykit.model import LoadedModel, LoadOptions, load_model
from deploykit.parity import tolerance_for
from deploykit.spec import parse_input_arg

_SUFFIXES = {Format.ONNX: ".onnx", Format.TFLITE: ".tflite", Format.SAVED_MODEL: ""}


@dataclass(frozen=True)
class VerifyOptions:
    samples: int = 5
    seed: int = 0
    inputs_npz: Optional[str] = None
    precision: str = "fp32"
    atol: Optional[float] = None
    rtol: Optional[float] = None
    timeout: float = 600.0
    device: str = "cpu"        # where artifacts run: cpu, cuda (ORT CUDA EP) or auto


@dataclass
class ExportResult:
    artifact: str
    manifest: str
    route: list
    parity: dict
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))

    def to_dict(self) -> dict:
        return {"passed": self.passed, "artifact": self.artifact, "manifest": self.manifest, "route": self.route,
                "parity": self.parity, "warnings": self.warnings, "seconds": round(self.seconds, 3)}


@dataclass
class VerifyResult:
    source: str
    reports: list           # ParityReport per artifact vs source, then hop vs previous hop
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "source": self.source, "seconds": round(self.seconds, 3),
                "comparisons": [r.to_dict() for r in self.reports]}


def load_options(inputs: Sequence[str] = (), weights: Optional[str] = None, trust_pickle: bool = False) -> LoadOptions:
    specs = []
    for text in inputs:
        try:
            specs.append(parse_input_arg(text))
        except ValueError as exc:
            raise UsageError(str(exc), "fix the --input value") from None
    if weights and not Path(weights).exists():
        raise UsageError(f"{weights}: no such weights file", "check the --weights path")
    return LoadOptions(weights=weights, trust_pickle=trust_pickle, input_specs=tuple(specs))


def export(source: str, to: str = "onnx", output: Optional[str] = None, *, force: bool = False,
           load: Optional[LoadOptions] = None, verify: VerifyOptions = VerifyOptions(),
           opset: Optional[int] = None, dynamic_batch: bool = False, optimize: bool = True,
           debug: bool = False) -> ExportResult:
    """Convert ``source`` to ``to``, verify it against the source, write artifact + manifest.

    Raises ConversionError (exit 4) when no route gives an artifact that matches.
    """
    from converters.base import ExportOptions

    started = time.perf_counter()
    dst = registry.target_format(to)
    _check_samples(verify)
    model = load_model(source, load or LoadOptions())
    routes = _available_routes(model.format, dst)
    out = fsutil.prepare_output(_default_output(source, dst, output), force)
    if Path(source).exists() and out.resolve() == Path(source).resolve():
        raise UsageError(f"the output {out} is the source itself", "choose another -o")
    fsutil.prepare_output(manifest.manifest_path(out), force)
    checker = _checker(model, verify)
    options = ExportOptions(opset=opset, dynamic_batch=dynamic_batch, optimize=optimize, samples=verify.samples,
                            timeout=verify.timeout, debug=debug)
    failures = []
    for route in routes:
        with fsutil.staging_dir(out.parent) as stage:
            try:
                result = _run_route(route, model, stage / out.name, options, checker)
            except ConversionError as exc:
                failures.append(exc)
                continue
            moves = [(f, out.parent / f.name) for f in result.extra_files] + [(result.path, out)]
            fsutil.publish(moves)
            data = _write_manifest(out, dst, model, route, result, [m[1] for m in moves[:-1]])
            return ExportResult(str(out), str(manifest.manifest_path(out)), data["route"], data["parity"],
                                list(result.warnings), time.perf_counter() - started)
    if len(failures) == 1:
        raise failures[0]
    raise ConversionError("every route failed: " + "; ".join(f.message for f in failures),
                          failures[-1].remedy)


def _run_route(route: list, model: LoadedModel, out: Path, options, checker: Checker):
    if len(route) != 1:
        raise ConversionError(f"multi-hop route {' → '.join(e.name for e in route)} is not supported yet",
                              "export to an intermediate format first")
    edge = route[0]
    convert = registry.resolve(edge.target)
    result = convert(model, out, options, lambda path, samples, batch=None: checker.check(path, samples, batch))
    if options.dynamic_batch:
        report = checker.check(result.path, 2, batch=3)
        if not report.passed:
            raise ConversionError("the artifact does not run correctly at batch 3 with --dynamic-batch: "
                                  + report.summary(), "the model fixes its batch size inside; drop --dynamic-batch")
        result.notes.append("verified at batch 3 as well (dynamic batch)")
    return result


def _write_manifest(out: Path, dst: Format, model: LoadedModel, route: list, result, extra_files: list) -> dict:
    artifact = load_model(str(out))
    route_info = [{"edge": e.name, "tool": result.tool, "attempts": result.attempts, "notes": result.notes}
                  for e in route]
    layout = {"inputs": result.input_perms, "outputs": result.output_perms}
    data = manifest.build(out, dst.value, model, route_info, _artifact_signature(model, artifact, layout),
                          layout, result.parity.to_dict() if result.parity else None, result.warnings, extra_files,
                          _libraries_used(route, result.tool))
    fsutil.write_text_atomic(manifest.manifest_path(out), manifest.dumps(data))
    return data


def _artifact_signature(source: LoadedModel, artifact: LoadedModel, layout: dict) -> dict:
    """The artifact's signature; where no permutation was recorded, it keeps the source's layout labels."""
    signature = artifact.spec.to_dict()
    for kind, tensors in (("inputs", source.spec.inputs), ("outputs", source.spec.outputs)):
        labels = {t.name: t.layout for t in tensors}
        for entry in signature[kind]:
            if entry["layout"] is None and not layout.get(kind, {}).get(entry["name"]):
                entry["layout"] = labels.get(entry["name"])
    return signature


def _libraries_used(route: list, tool: str) -> tuple:
    names = ["deploykit", "numpy", "onnxruntime"]
    for edge in route:
        names += [registry.PACKAGES.get(p, (p, ""))[0] for p in edge.requires]
    if "onnxslim" in tool:
        names.append("onnxslim")
    return tuple(dict.fromkeys(names))


def verify(source: str, artifacts: Sequence[str], *, load: Optional[LoadOptions] = None,
           options: VerifyOptions = VerifyOptions()) -> VerifyResult:
    """Compare every artifact against the source, and each against the previous one, on the same inputs."""
    started = time.perf_counter()
    if not artifacts:
        raise UsageError("no artifact to verify", "give the source and at least one artifact")
    _check_samples(options)
    model = load_model(source, load or LoadOptions())
    checker = _checker(model, options)
    loaded = [load_model(a) for a in artifacts]
    reports = []
    for artifact in loaded:
        layout = (manifest.read(artifact.path) or {}).get("layout") or {}
        reports.append(checker.check(artifact.path, options.samples, candidate=artifact, layout=layout))
    for previous, current in zip(loaded, loaded[1:]):
        hop = Checker(previous, checker.tolerance, options.seed, checker.user_feeds, options.timeout, options.device)
        reports.append(hop.check(current.path, options.samples, candidate=current))
    return VerifyResult(model.label, reports, time.perf_counter() - started)


def _checker(model: LoadedModel, options: VerifyOptions) -> Checker:
    tolerance = tolerance_for(options.precision, options.atol, options.rtol)
    user_feeds = load_npz(options.inputs_npz, model.spec) if options.inputs_npz else None
    return Checker(model, tolerance, options.seed, user_feeds, options.timeout, options.device)


def _check_samples(options: VerifyOptions) -> None:
    if options.samples < 1 and not options.inputs_npz:
        raise UsageError(f"--samples must be at least 1 (got {options.samples})", "e.g. --samples 5")


def _available_routes(src: Format, dst: Format) -> list:
    routes = registry.plan(src, dst)
    if not routes:
        raise UsageError(f"no conversion from {src.value} to {dst.value} is available yet",
                         "see `deploykit doctor` for the routes this install supports")
    usable = [r for r in routes if all(e.available for e in r)]
    if not usable:
        missing = registry.missing_packages(tuple(p for e in routes[0] for p in e.requires))
        registry.require(tuple(missing), f"needed for {' → '.join(e.name for e in routes[0])}")
    return usable


def _default_output(source: str, dst: Format, output: Optional[str]) -> str:
    if output:
        return output
    name = source.rpartition(":")[2] if ":" in source and not Path(source).exists() else Path(source).stem
    return name + _SUFFIXES[dst]
