"""`export`: load → plan routes → convert hop by hop (each hop checked) → choose → publish → manifest.

The artifact of every hop is an :class:`~deploykit.artifact.Artifact` object handed along:
described once, hashed when it is made, run through the child harness by its own ``run``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from deploykit import contract as contracts
from deploykit import fsutil, manifest, registry
from deploykit.artifact import Artifact
from deploykit.exporting import arm_judging, routing
from deploykit.checking.checker import Checker, make_checker
from deploykit.child import reused_child
from deploykit.conversion import ExportOptions
from deploykit.errors import UsageError
from deploykit.request import ExportRequest
from deploykit.progress import Progress
from deploykit.formats import DIRECTORY_FORMATS, TORCH_FORMATS, Format, detect
from deploykit.harness import DEFAULT_TIMING
from deploykit.layout import Layout
from deploykit.model import LoadedModel, PendingModel, load_model
from deploykit.options import PRECISION_OF, QuantizeOptions, VerifyOptions
from deploykit.parity import ParityReport, looser_preset, tolerance_for
from deploykit.runner import RunnerOptions

HELD_OUT_LIMIT = 64   # enough for agreement percentages with a resolution of ~1.5 %


@dataclass
class ExportResult:
    """What an export made: the published artifact and manifest, the route kept (a RouteRun: its hops, layout and
    final parity report) and every route tried. Dicts (the --json document) are made by ``to_dict`` only."""

    artifact: str
    manifest: str
    chosen: routing.RouteRun
    runs: list = field(default_factory=list)      # every RouteRun tried, the chosen one among them
    warnings: list = field(default_factory=list)
    seconds: float = 0.0
    opened: Optional[Artifact] = None             # the published Artifact object (runs itself; not in JSON)
    judged_on: Optional[dict] = None              # the ARM core that judged it too, or why x86 alone did

    @property
    def parity(self) -> ParityReport:
        """The artifact's check against the source."""
        return self.chosen.final.parity

    @property
    def unverified(self) -> bool:
        """Kept with --keep-unverified: its parity proves nothing."""
        return self.chosen.unverified

    @property
    def passed(self) -> bool:
        """The artifact matches its source (False for one kept unverified)."""
        return self.parity.passed

    @property
    def route(self) -> list:
        """The kept route's hops as the manifest records them (edge, tool, outcome, attempts, notes, ...)."""
        return self.chosen.recorded_hops()

    def to_dict(self) -> dict:
        parity = dict(self.parity.to_dict(), **({"judged_on": self.judged_on} if self.judged_on else {}))
        return {"passed": self.passed, "unverified": self.unverified, "artifact": self.artifact,
                "manifest": self.manifest, "route": self.route, "parity": parity,
                "warnings": self.warnings, "seconds": round(self.seconds, 3),
                "routes": routing.route_table(self.runs, self.chosen)}


def default_output(source: str, dst: Format, output: Optional[str] = None) -> str:
    """``output``, else <source name>.<target suffix> in the current directory."""
    if output:
        return output
    name = source.rpartition(":")[2] if ":" in source and not Path(source).exists() else Path(source).stem
    return name + routing.SUFFIXES[dst]


def export_model(request: ExportRequest) -> ExportResult:
    """Convert, verify every hop against the source, publish the artifact and its manifest atomically.

    Nothing is left behind on failure: no staged file, and no output folder this export created. A PyTorch or
    Keras source is loaded once, in the reused child (``deploykit.child``), also when the API is called directly."""
    with fsutil.parents_removed_on_failure(default_output(request.source, request.target, request.output)), \
            reused_child():
        return _export(request)


@dataclass
class _Judging:
    """How the final hop is judged: int8 calibration feeds, the precision's tolerance, the feeds it is judged on."""

    calibration: Optional[tuple] = None       # (fitted feeds, held-out feeds), source layout
    info: dict = field(default_factory=dict)  # what the manifest says about the calibration
    tolerance: object = None
    feeds: Optional[tuple] = None

    @classmethod
    def of(cls, model: LoadedModel, request: ExportRequest, source_preset: str = "fp32") -> "_Judging":
        quantize, verify, mode = request.quantize, request.verify, request.mode
        calibration, info = _calibration(model, quantize)
        return cls(calibration, info, _mode_tolerance(mode, verify, source_preset) if mode else None,
                   _judging_feeds(model, quantize, calibration, info, verify))


def _mode_tolerance(mode: str, verify: VerifyOptions, source_preset: str):
    """The --quantize mode's preset, or the source's own when that is looser: an int8-weight source exported with
    --quantize fp16 is no closer to the source than int8 rounding allows (without --precision: the source's preset
    comes from make_checker, which follows --precision)."""
    preset = PRECISION_OF[mode]
    if not verify.precision:
        preset = looser_preset(preset, source_preset).split("+")[0]
    return tolerance_for(preset, verify.atol, verify.rtol)


def _export(request: ExportRequest) -> ExportResult:
    started = time.perf_counter()
    model, routes, out = _prepare(request)
    on_arm = arm_judging.plan(request.target, request.mode, request.verify.arm_cpu)   # refused before converting
    checker = make_checker(model, request.verify)
    if not isinstance(model, PendingModel):
        checker.feeds(1)    # a dim only the user can fix fails now, named in the source's layout — not after converting
    judging = _Judging.of(model, request, checker.tolerance.preset)
    route_all = request.route == "all"
    with fsutil.staging_dir(out.parent) as stage:
        runs = _run_routes(request, model, routes, checker, stage, out.name, judging)
        if isinstance(model, PendingModel):
            model.result()        # a source that does not load is the error to report, not the routes
        if route_all:
            _measure_latency(runs, checker, request.verify.timeout)
        chosen = routing.choose(runs, route_all)
        judged_on = _judge_on_arm(chosen, checker, judging, request, on_arm)       # an ARM failure publishes nothing
        contract = _contract(chosen.artifact, model, request.contract, judging.info)   # before anything is published
        final = chosen.final
        moves = [(f, out.parent / f.name) for f in final.extra_files] + [(final.path, out)]
        fsutil.publish(moves, force=request.force)
    artifact = chosen.artifact.moved_to(out)
    _write_manifest(artifact, model, chosen, runs, [m[1] for m in moves[:-1]], request, judging.info, contract,
                    judged_on)
    warnings = [w for hop in chosen.hops for w in hop.warnings] + judging.info.get("warnings", [])
    if chosen.unverified:
        summary = chosen.final.parity.summary()
        warnings.append(f"UNVERIFIED (kept with --keep-unverified): {summary.removeprefix('UNVERIFIED: ')}")
    return ExportResult(str(out), str(manifest.manifest_path(out)), chosen, runs, warnings,
                        time.perf_counter() - started, artifact, judged_on)


def _judge_on_arm(chosen, checker: Checker, judging: "_Judging", request: ExportRequest, on_arm: tuple):
    """The kept artifact judged on the ARM runtime of its format too (``arm_judging``): the manifest's
    ``judged_on``, or why x86 alone judged an fp16 artifact (None when no ARM judgment was due)."""
    runtime, cpu, why = on_arm
    if chosen.final.parity is not None and chosen.final.parity.unverifiable:
        return None       # never run anywhere here: no core judged it, not even x86
    if runtime:
        judged = arm_judging.judge(checker, chosen, judging.tolerance, judging.feeds, request.verify.samples,
                                   runtime, cpu, request.keep_unverified)
    elif why:
        judged = arm_judging.x86_only(request.target, chosen.final.parity, why)
    else:
        return None
    chosen.final.parity.notes.append(arm_judging.note(judged))     # what the printed report says of it
    return judged


def _prepare(request: ExportRequest) -> tuple:
    """(source model, routes to try, output path): everything refused before any conversion starts."""
    source, dst, verify = request.source, request.target, request.verify
    # A file source is read (and validated) first; a PyTorch one loads in the background after the cheap checks.
    fmt = detect(source)
    model = None if fmt in TORCH_FORMATS else load_model(source, request.load, fmt)     # detected once, here
    if model is not None and verify.inputs_npz:     # the user's data pins what --input left dynamic
        from deploykit.inputs import shapes_from_npz

        model.spec = shapes_from_npz(model.spec, verify.inputs_npz)
    routes = routing.select_routes(fmt, dst, request.via, request.mode, ExportOptions.from_request(request).io_dtype)
    out = Path(default_output(source, dst, request.output)).absolute()
    if Path(source).exists() and fsutil.overlaps(out, source):
        raise UsageError(f"the output {out} is, holds or lies inside the source {source}", "choose another -o")
    fsutil.prepare_output(out, request.force, directory=dst in DIRECTORY_FORMATS)
    fsutil.prepare_output(manifest.manifest_path(out), request.force)
    model = model or PendingModel(source, request.load, fmt)
    if request.contract:      # labels that do not fit, or --normalize without an image input: say so before converting
        _contract(model, model, request.contract, {})
    return model, routes, out


def _run_routes(request: ExportRequest, model, routes: list, checker: Checker, stage: Path, name: str,
                judging: _Judging) -> list:
    """Run the routes in order (each in a folder of the staging folder): until one passes, or all with --route all."""
    options, route_all = ExportOptions.from_request(request), request.route == "all"
    runs = []
    with Progress(f"--route all: {len(routes)} routes", len(routes), enabled=route_all) as progress:
        for index, route in enumerate(routes):
            folder = stage / f"route{index}"
            folder.mkdir()
            runs.append(routing.run_route(route, model, folder / name, options, checker,
                                          judging.calibration[0] if judging.calibration else None, judging.tolerance,
                                          judging.feeds))
            verdict = "kept unverified" if runs[-1].unverified else "passed" if runs[-1].passed else "failed"
            progress.update(index + 1, f"{runs[-1].name} {verdict}")
            if runs[-1].passed and not route_all:
                break
            _refuse_uninformative(runs[-1], checker, request.keep_unverified)
    return runs


UNINFORMATIVE_REMEDY = ("give trained weights (random-init networks collapse to ~0), realistic inputs with --inputs, "
                        "or an output before its softmax; or --keep-unverified to keep the artifact, marked unverified "
                        "(exit 6)")


def _refuse_uninformative(run, checker: Checker, keep_unverified: bool) -> None:
    """A route that failed because the source's output ignores its input: no other route can do better, and
    "conversion failed" would be the wrong cause. Say what was seen and stop."""
    why = "" if run.passed or keep_unverified else checker.uninformative_reason()
    if why:
        raise UsageError(f"the source's output does not depend on its input, so no export can be verified: {why}",
                         UNINFORMATIVE_REMEDY)


def measure_latency(artifact, feeds: dict, timeout: float) -> Optional[float]:
    """1-thread p50 latency of an artifact with the one timing loop (the same semantics as `bench`)."""
    result = artifact.run([feeds], RunnerOptions(threads=1), timeout=timeout, timing=DEFAULT_TIMING)
    return (result.latency_ms or {}).get("p50")


def _measure_latency(runs: list, checker: Checker, timeout: float) -> None:
    """1-thread latency of each passing route's artifact (for --route all)."""
    for run in runs:
        if run.passed and not run.final.parity.unverifiable:      # an artifact no runtime here runs has no time
            source_feeds = checker.feeds(1)[0][1]
            run.latency_ms = measure_latency(run.artifact, checker.feeds_for(run.artifact, source_feeds, run.layout),
                                             timeout)


def _contract(artifact, model: LoadedModel, choices: Optional[contracts.ContractChoices], calibration_info: dict) -> dict:
    """The artifact's contract as far as export knows it (`package` adds what golden outputs tell)."""
    choices = choices or contracts.ContractChoices()
    calibrated = (calibration_info or {}).get("normalize") if (calibration_info or {}).get("source") not in \
        (None, "random") else None
    return contracts.build(contracts.with_source_ranges(artifact.spec, model.spec), task=choices.task,
                           labels=list(choices.labels) if choices.labels else None, normalize=choices.normalize,
                           calibration_normalize=calibrated)


def _write_manifest(artifact, model: LoadedModel, chosen, runs: list, extra_files: list, request: ExportRequest,
                    calibration_info: dict, contract: Optional[dict], judged_on: Optional[dict] = None) -> dict:
    final, mode = chosen.final, request.mode
    data = manifest.build(Path(artifact.path), artifact.format.value, model, chosen.recorded_hops(),
                          _artifact_signature(model, artifact, chosen.layout), chosen.layout.to_dict(),
                          final.parity.to_dict() if final.parity else None,
                          [w for hop in chosen.hops for w in hop.warnings], extra_files,
                          _libraries_used(chosen.route, " ".join(h.tool for h in chosen.hops)),
                          artifact_sha256=artifact.sha256)
    data["routes"] = routing.route_table(runs, chosen)
    if judged_on and data["parity"] is not None:     # the core that judged it (or why x86 alone did)
        data["parity"]["judged_on"] = judged_on
    data["precision"] = mode or "fp32"
    data["verified"] = not chosen.unverified     # False: kept with --keep-unverified, its parity proves nothing
    if chosen.unverified:
        data["unverified_reason"] = final.parity.summary()
    data["contract"] = contract
    if artifact.format == Format.ORT:      # --ort-style / --ort-platform: what the app's runtime must match
        data["ort"] = request.ort_settings
    if request.contract:
        data["contract_choices"] = request.contract.to_dict()
    if mode:
        data["calibration"] = calibration_info
        data["warnings"] = data["warnings"] + (calibration_info or {}).get("warnings", [])
    fsutil.write_text_atomic(manifest.manifest_path(artifact.path), manifest.dumps(data))
    return data


def _artifact_signature(source: LoadedModel, artifact: LoadedModel, layout: Layout) -> dict:
    """The artifact's signature, with the source's layout labels carried over by position
    (and permuted where the route recorded a permutation: NCHW becomes NHWC, say)."""
    signature = artifact.spec.to_dict()
    inputs = source.spec.counterparts(artifact.spec.inputs)       # without fixed inputs the artifact dropped
    for kind, tensors, perms in (("inputs", inputs, layout.input_perms),
                                 ("outputs", source.spec.outputs, layout.output_perms)):
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


def _calibration(model: LoadedModel, quantize: Optional[QuantizeOptions]) -> tuple:
    """Calibration feeds (source layout) for int8, and what the manifest says about them."""
    if not quantize or quantize.mode != "int8":
        return None, {}
    from deploykit.exporting.calibration import calibration_feeds

    feeds, held_out, warning = calibration_feeds(model.spec, quantize.calibration, quantize.samples,
                                                 quantize.normalize)
    info = {"source": quantize.calibration or "random", "samples": len(feeds), "normalize": quantize.normalize,
            "held_out": len(held_out)}
    if warning:
        info["warnings"] = [warning]
    return (feeds, held_out), info


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
        from deploykit.exporting.calibration import calibration_feeds

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
