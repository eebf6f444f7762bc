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

from deploykit import fsutil, manifest, registry, routing
from deploykit.checking import Checker
from deploykit.errors import UsageError
from deploykit.formats import Format
from deploykit.inputs import load_npz
from deploykit.model import LoadedModel, LoadOptions, load_model
from deploykit.parity import tolerance_for
from deploykit.spec import parse_input_arg



@dataclass(frozen=True)
class VerifyOptions:
    samples: int = 5
    seed: int = 0
    inputs_npz: Optional[str] = None
    precision: Optional[str] = None   # None: fp32, or a quantized artifact's own precision (manifest)
    atol: Optional[float] = None
    rtol: Optional[float] = None
    timeout: float = 600.0
    device: str = "cpu"        # where artifacts run: cpu, cuda (ORT CUDA EP) or auto
    xnnpack: bool = True       # LiteRT artifacts run with the XNNPACK delegate (LiteRT's default)


# --quantize mode -> the tolerance preset its artifact is judged with against the float source
PRECISION_OF = {"fp16": "fp16", "dynamic": "int8", "int8": "int8", None: "fp32"}


@dataclass(frozen=True)
class QuantizeOptions:
    mode: str                              # fp16 | dynamic | int8
    calibration: Optional[str] = None      # .npz or image folder; None = random data, with a warning
    samples: int = 100
    normalize: str = "unit"                # images: unit ([0, 1]) or imagenet (mean/std)
    io_dtype: str = "float"                # int8 TFLite: float or int8 inputs/outputs


@dataclass
class ExportResult:
    artifact: str
    manifest: str
    route: list
    parity: dict
    warnings: list = field(default_factory=list)
    seconds: float = 0.0
    routes: list = field(default_factory=list)    # every route tried: passed, error, metrics, latency

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))

    def to_dict(self) -> dict:
        return {"passed": self.passed, "artifact": self.artifact, "manifest": self.manifest, "route": self.route,
                "parity": self.parity, "warnings": self.warnings, "seconds": round(self.seconds, 3),
                "routes": self.routes}


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
           via: Optional[str] = None, route_all: bool = False, keep_layout: bool = False,
           quantize: Optional[QuantizeOptions] = None, debug: bool = False) -> ExportResult:
    """Convert ``source`` to ``to``, verify it against the source, write artifact + manifest.

    Routes (chains of converter edges) are tried in the registry's order and the first whose
    artifact matches the source is kept; ``via`` restricts them to those through a format or
    tool; ``route_all`` builds and verifies every route and keeps the fastest that matches.
    Raises ConversionError (exit 4) when no route gives an artifact that matches.
    """
    from converters.base import ExportOptions

    started = time.perf_counter()
    dst = registry.target_format(to)
    _check_samples(verify)
    model = load_model(source, load or LoadOptions())
    mode = quantize.mode if quantize else None
    routes = routing.select_routes(model.format, dst, via, mode, quantize.io_dtype if quantize else "float")
    out = fsutil.prepare_output(default_output(source, dst, output), force, directory=dst == Format.SAVED_MODEL)
    if Path(source).exists() and out.resolve() == Path(source).resolve():
        raise UsageError(f"the output {out} is the source itself", "choose another -o")
    fsutil.prepare_output(manifest.manifest_path(out), force)
    checker = _checker(model, verify)
    options = ExportOptions(opset=opset, dynamic_batch=dynamic_batch, optimize=optimize, samples=verify.samples,
                            timeout=verify.timeout, debug=debug, keep_layout=keep_layout, quantize=mode,
                            io_dtype=quantize.io_dtype if quantize else "float")
    calibration, calibration_info = _calibration(model, quantize)
    final_tolerance = tolerance_for(PRECISION_OF[mode], verify.atol, verify.rtol) if mode else None
    final_feeds = _judging_feeds(model, quantize, calibration, calibration_info, verify)
    with fsutil.staging_dir(out.parent) as stage:
        runs = []
        for index, route in enumerate(routes):
            folder = stage / f"route{index}"
            folder.mkdir()
            runs.append(routing.run_route(route, model, folder / out.name, options, checker,
                                          calibration[0] if calibration else None, final_tolerance, final_feeds))
            if runs[-1].passed and not route_all:
                break
        if route_all:
            _measure_latency(runs, checker, verify.timeout)
        chosen = routing.choose(runs, route_all)
        final = chosen.final
        moves = [(f, out.parent / f.name) for f in final.extra_files] + [(final.path, out)]
        fsutil.publish(moves)
    data = _write_manifest(out, dst, model, chosen, runs, [m[1] for m in moves[:-1]], mode, calibration_info)
    warnings = [w for hop in chosen.hops for w in hop.warnings] + calibration_info.get("warnings", [])
    return ExportResult(str(out), str(manifest.manifest_path(out)), data["route"], data["parity"], warnings,
                        time.perf_counter() - started, data["routes"])


def _measure_latency(runs: list, checker: Checker, timeout: float) -> None:
    """Median 1-thread latency of each passing route's artifact (for --route all)."""
    from deploykit.isolation import run_isolated

    for run in runs:
        if run.passed:
            feeds = [feeds for _key, feeds in checker.feeds(1)][:1]
            feeds = [checker.feeds_for(run.final.path, feeds[0], run.layout)]
            _outputs, info = run_isolated(str(run.final.path), feeds, threads=1, timeout=timeout, time_iterations=30)
            run.latency_ms = info.get("latency_ms_median")


def _write_manifest(out: Path, dst: Format, model: LoadedModel, chosen, runs: list, extra_files: list,
                    mode: Optional[str] = None, calibration_info: Optional[dict] = None) -> dict:
    artifact = load_model(str(out))
    final = chosen.final
    route_info = [{"edge": hop["edge"], "tool": hop["tool"], "attempts": hop["attempts"], "notes": hop["notes"],
                   "parity_vs_source": hop["parity_vs_source"]} for hop in chosen.to_dict()["hops"]]
    data = manifest.build(out, dst.value, model, route_info, _artifact_signature(model, artifact, chosen.layout),
                          chosen.layout, final.parity.to_dict() if final.parity else None,
                          [w for hop in chosen.hops for w in hop.warnings], extra_files,
                          _libraries_used(chosen.route, " ".join(h.tool for h in chosen.hops)))
    data["routes"] = [dict(r.to_dict(), chosen=r is chosen) for r in runs]
    data["precision"] = mode or "fp32"
    if mode:
        data["calibration"] = calibration_info
        data["warnings"] = data["warnings"] + (calibration_info or {}).get("warnings", [])
    fsutil.write_text_atomic(manifest.manifest_path(out), manifest.dumps(data))
    return data


def _artifact_signature(source: LoadedModel, artifact: LoadedModel, layout: dict) -> dict:
    """The artifact's signature, with the source's layout labels carried over by position
    (and permuted where the route recorded a permutation: NCHW becomes NHWC, say)."""
    signature = artifact.spec.to_dict()
    for kind, tensors in (("inputs", source.spec.inputs), ("outputs", source.spec.outputs)):
        perms = layout.get(kind) or {}
        for entry, src in zip(signature[kind], tensors):
            label, perm = src.layout, perms.get(entry["name"])
            if entry["layout"] is None and label:
                entry["layout"] = _permuted_label(label, perm, kind) if perm else label
    return signature


def _permuted_label(label: str, perm: list, kind: str) -> str:
    if len(perm) != len(label):
        return label
    if kind == "inputs":                      # artifact axis j holds source axis perm[j]
        return "".join(label[i] for i in perm)
    letters = [""] * len(perm)                # source axis i is artifact axis perm[i]
    for i, axis in enumerate(perm):
        letters[axis] = label[i]
    return "".join(letters)


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
    reports, previous = [], None
    for artifact in loaded:
        # Each artifact's manifest records its layout relative to the source it was exported from.
        stored = manifest.read(artifact.path) or {}
        layout = stored.get("layout") or {}
        tolerance = _artifact_tolerance(stored, options)
        references, outputs = checker.run_both(artifact, options.samples, layout=layout,
                                               feeds=_int8_feeds(model, stored, options))
        reports.append(checker.compare(references, outputs, model.label, artifact.label, layout, tolerance))
        if previous is not None:
            hop_report = checker.compare(previous[1], outputs, previous[0].label, artifact.label)
            hop_report.notes.append("hop: both sides in the source's layout")
            reports.append(hop_report)
        previous = (artifact, outputs)
    return VerifyResult(model.label, reports, time.perf_counter() - started)


def _artifact_tolerance(stored: dict, options: VerifyOptions):
    """Without --precision, a quantized artifact is judged with its precision's preset (from its manifest)."""
    if options.precision is not None or stored.get("precision") in (None, "fp32"):
        return None
    return tolerance_for(PRECISION_OF.get(stored["precision"], "fp32"), options.atol, options.rtol)


def _checker(model: LoadedModel, options: VerifyOptions) -> Checker:
    tolerance = tolerance_for(options.precision or "fp32", options.atol, options.rtol)
    user_feeds = load_npz(options.inputs_npz, model.spec) if options.inputs_npz else None
    checker = Checker(model, tolerance, options.seed, user_feeds, options.timeout, options.device)
    checker.runtime_options = {"xnnpack": options.xnnpack}
    return checker


def _check_samples(options: VerifyOptions) -> None:
    if options.samples < 1 and not options.inputs_npz:
        raise UsageError(f"--samples must be at least 1 (got {options.samples})", "e.g. --samples 5")


def default_output(source: str, dst: Format, output: Optional[str] = None) -> str:
    if output:
        return output
    name = source.rpartition(":")[2] if ":" in source and not Path(source).exists() else Path(source).stem
    return name + routing.SUFFIXES[dst]


def bench(models: Sequence[str], options=None, *, load: Optional[LoadOptions] = None, report_dir: Optional[str] = None,
          force: bool = False, echo=None) -> dict:
    """Benchmark each model on each runtime that runs it (one child process per case).

    With ``report_dir`` also write the research-vs-production report; when the first model is a
    framework source and others follow, their parity against it fills the report's parity table.
    """
    from deploykit.bench import BenchOptions, bench as run_bench

    if not models:
        raise UsageError("no model to benchmark", "give one or more model files")
    options = options or BenchOptions()
    if report_dir:   # fail before minutes of measuring, not after
        registry.require(("matplotlib",), "needed to draw the report's plots")
    load_payload = None
    if load and (load.weights or load.input_specs):
        load_payload = {"weights": load.weights, "trust_pickle": load.trust_pickle,
                        "inputs": [t.to_dict() for t in load.input_specs]}
    result = run_bench(list(models), options, load_payload, echo)
    if report_dir:
        parity = _parity_for_report(list(models), load)
        result["report"] = _write_report(result, report_dir, parity, force)
    return result


def _parity_for_report(models: list, load: Optional[LoadOptions]):
    from deploykit.formats import detect

    if len(models) < 2 or detect(models[0]).framework not in ("torch", "tensorflow"):
        return None
    return verify(models[0], models[1:], load=load).to_dict()


def _write_report(result: dict, report_dir: str, parity, force: bool) -> dict:
    from deploykit.report import build_report

    return build_report(result, report_dir, parity=parity, force=force)


def _calibration(model: LoadedModel, quantize: Optional[QuantizeOptions]) -> tuple:
    """Calibration feeds (source layout) for int8, and what the manifest says about them."""
    if not quantize or quantize.mode != "int8":
        return None, {}
    from deploykit.calibration import calibration_feeds

    if quantize.io_dtype not in ("float", "int8"):
        raise UsageError(f"unknown --io-dtype {quantize.io_dtype!r}", "use float or int8")
    feeds, held_out, warning = calibration_feeds(model.spec, quantize.calibration, quantize.samples,
                                                 quantize.normalize)
    info = {"source": quantize.calibration or "random", "samples": len(feeds), "normalize": quantize.normalize,
            "held_out": len(held_out)}
    if warning:
        info["warnings"] = [warning]
    return (feeds, held_out), info


HELD_OUT_LIMIT = 64   # enough for agreement percentages with a resolution of ~1.5 %


def _judging_feeds(model: LoadedModel, quantize: Optional[QuantizeOptions], calibration, info: dict,
                   verify: VerifyOptions) -> Optional[tuple]:
    """What a quantized artifact is compared on (None: the usual seeded samples, plus --inputs).

    fp16 and dynamic fit nothing to data, but data given with --calibration is the user's data:
    task-level agreement is measured on it rather than on random inputs."""
    if not quantize or not quantize.mode:
        return None
    if quantize.mode == "int8":
        return _in_distribution_feeds(model, calibration, info, verify)
    if quantize.calibration and not verify.inputs_npz:
        from deploykit.calibration import calibration_feeds

        feeds, _rest, _warning = calibration_feeds(model.spec, quantize.calibration, HELD_OUT_LIMIT,
                                                   quantize.normalize)
        return ("--calibration", feeds)
    return None


def _in_distribution_feeds(model: LoadedModel, calibration: tuple, info: dict, verify: VerifyOptions) -> tuple:
    """What an int8 artifact is judged on: the user's --inputs, else the calibration data held out beyond
    --calibration-samples (up to HELD_OUT_LIMIT), else the last calibration samples, else fresh samples of the
    random calibration's own distribution (int8 clips what calibration never saw)."""
    from deploykit.inputs import load_npz, random_feeds

    fitted, held_out = calibration
    if verify.inputs_npz:
        return ("user", load_npz(verify.inputs_npz, model.spec))
    if held_out:
        return ("held-out calibration", held_out[:HELD_OUT_LIMIT])
    if info.get("source") != "random":
        return ("calibration (none held out: give more than --calibration-samples)", fitted[-verify.samples:])
    fresh = [random_feeds(model.spec, 1, seed=500 + 4 * i)[0] for i in range(verify.samples)]   # normal kind only
    return ("fresh random (the calibration's distribution)", fresh)


def _int8_feeds(model: LoadedModel, stored: dict, options: VerifyOptions) -> Optional[tuple]:
    """An int8 artifact is verified on normal and uniform samples (plus --inputs), not the 3-sigma and
    negated ones that exercise float branches: int8 clips what its calibration never saw."""
    if stored.get("precision") != "int8" or options.precision is not None:
        return None
    from deploykit.inputs import load_npz, random_feeds

    pool = random_feeds(model.spec, 4 * options.samples, options.seed)
    feeds = [f for i, f in enumerate(pool) if i % 4 in (0, 1)][:options.samples]
    if options.inputs_npz:
        feeds += load_npz(options.inputs_npz, model.spec)
    return ("normal/uniform (int8)", feeds)
