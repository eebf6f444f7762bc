"""Run a source and its artifacts on the same inputs and compare them with the parity engine."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from deploykit import parity, registry, remedies
from deploykit.artifact import Artifact
from deploykit.checking import arm
from deploykit.child import reused_child
from deploykit.errors import DeploykitError, UsageError
from deploykit.inputs import load_npz, random_feeds
from deploykit.layout import Layout, axis_order, inverse, shown
from deploykit.model import LoadedModel, LoadOptions, load_model
from deploykit.checking.judging import artifact_tolerance, int8_feeds, quantized_file_tolerance, trusted_manifest
from deploykit.options import VerifyOptions
from deploykit.parity import Tolerance, tolerance_for
from deploykit.runner import RunnerOptions
from deploykit.source_precision import source_precision


class ReferenceRunner:
    """Runs the source once per distinct input and remembers the outputs.

    A framework source (torch) runs in this process, where it is already loaded;
    a file source (ONNX) runs in a child process like any artifact.
    """

    def __init__(self, model: LoadedModel, timeout: float, device: str = "cpu"):
        self.model, self.timeout, self.device = model, timeout, device
        self._runner, self._cache, self._artifact = None, {}, None

    def outputs_for(self, keyed: list) -> list:
        """Outputs for each (key, feeds); the ones not seen before run together (one child for a file source)."""
        missing = [(key, feeds) for key, feeds in dict(keyed).items() if key not in self._cache]
        if missing:
            for (key, _feeds), outputs in zip(missing, self._run([feeds for _key, feeds in missing])):
                self._cache[key] = outputs
        return [self._cache[key] for key, _feeds in keyed]

    def seen_outputs(self) -> list:
        """The source's outputs on every feed it has run so far (in the order first seen)."""
        return list(self._cache.values())

    def _run(self, feeds_list: list) -> list:
        if self.model.handle is None:
            self._artifact = self._artifact or Artifact.of(self.model, layout=Layout())
            return self._artifact.run(feeds_list, RunnerOptions(device=self.device), timeout=self.timeout).outputs
        if self._runner is None:
            entry = registry.runtime_for(self.model.format)
            self._runner = registry.resolve(entry.target)(self.model)
            self._runner.open()
        return self._runner.run_many(feeds_list)


class Checker:
    """Compares candidates against the source on seeded random inputs plus the user's data."""

    def __init__(self, source: LoadedModel, tolerance: Tolerance, seed: int = 0,
                 user_feeds: Optional[list] = None, timeout: float = 600.0, device: str = "cpu"):
        self.source, self.tolerance, self.seed = source, tolerance, seed
        self.user_feeds = list(user_feeds or [])
        self.reference = ReferenceRunner(source, timeout, device)
        self.timeout, self.device = timeout, device
        self.runtime_options: dict = {}     # e.g. {"xnnpack": False} for LiteRT
        self.runtimes: tuple = ()           # --runtime: candidates run there when it runs their format
        self.arm_cpu = ""                   # --arm-cpu: the core of the emulated ARM runtimes ("": cortex-a76)
        self.last_runtime, self.last_cpu = "", ""
        self.locate_failures = False        # export --locate: a check that fails also locates its first bad layer
        self.precision_note = ""            # why the default preset is not fp32 (a quantized source), for reports

    def aliases(self, candidate: Optional[LoadedModel] = None) -> dict:
        """{tensor name: [other names of that tensor]}: what the loaders recorded (a TFLite signature name's
        flatbuffer tensor name), so that a converter's tensor names pair with the signature's by name."""
        found: dict = {}
        for model in (self.source, candidate):
            for name, tensor in ((getattr(model, "details", None) or {}).get("tensor_names") or {}).items():
                found.setdefault(name, []).append(tensor)
        return found

    def feeds(self, samples: int, batch: Optional[int] = None) -> list:
        generated = random_feeds(self.source.spec, samples, self.seed, batch)
        keyed = [(("random", i, batch), f) for i, f in enumerate(generated)]
        return keyed + [(("user", i), f) for i, f in enumerate(self.user_feeds)]

    def check(self, candidate: Union[str, Path, Artifact], samples: int, batch: Optional[int] = None,
              layout: Optional[Layout] = None, tolerance: Optional[parity.Tolerance] = None,
              feeds: Optional[tuple] = None, locate: bool = False,
              runtime: Optional[str] = None) -> parity.ParityReport:
        """Run the candidate (in a child) and the source on the same feeds and compare.

        ``layout`` is the candidate's recorded permutation relative to the source (a Layout, keyed by the
        candidate's names; a converter's dict form is taken too); ``runtime`` (None: the format's own) runs it,
        an emulated ARM one on ``arm_cpu``; a failure is located on that runtime.
        """
        layout = Layout.of(layout)
        if not isinstance(candidate, Artifact):
            candidate = Artifact.open(candidate, layout=layout)
        options = self.options_for(runtime, (tolerance or self.tolerance).preset)
        references, outputs = self.run_both(candidate, samples, batch, layout, feeds, runtime, options)
        label = f"{candidate.label} on {runtime}" if runtime else candidate.label
        report = self.compare(references, outputs, self.source.label, label, layout, tolerance, candidate)
        if arm.fp16_note(options, runtime, self.last_runtime):
            report.notes.append(arm.fp16_note(options, runtime, self.last_runtime))
        if feeds:
            report.compared_on = (len(feeds[1]), feeds[0])
            report.notes.append(f"compared on {len(feeds[1])} {feeds[0]} sample(s)")
        if (locate or self.locate_failures) and not report.passed and batch is None:
            report.location = self.locate(candidate.with_layout(layout), samples, feeds, tolerance, runtime,
                                          options).to_dict()
        return report

    def compare(self, references: list, outputs: list, reference_label: str, candidate_label: str,
                layout: Optional[Layout] = None, tolerance: Optional[parity.Tolerance] = None,
                candidate: Optional[LoadedModel] = None) -> parity.ParityReport:
        """Compare outputs that are already in the source's layout (paired by name, with the tensor names the
        source's and the ``candidate``'s loaders recorded)."""
        report = parity.compare(references, outputs, tolerance or self.tolerance, reference_label, candidate_label,
                                aliases=self.aliases(candidate))
        if self.precision_note and (tolerance is None or tolerance.preset == self.tolerance.preset):
            report.notes.append(self.precision_note)
        if self.last_runtime:
            report.notes.append(f"{candidate_label} ran on {self.last_runtime}")
        if self.user_feeds:
            count = len(references) - len(self.user_feeds)
            report.notes.append(f"{count} random + {len(self.user_feeds)} user sample(s)")
        if layout is not None and layout.permutes:
            report.notes.append(f"layout permutations applied: {layout.to_dict()}")
        return report

    def run_both(self, candidate: Artifact, samples: int, batch: Optional[int] = None,
                 layout: Optional[Layout] = None, feeds: Optional[tuple] = None, runtime: Optional[str] = None,
                 options: Optional[RunnerOptions] = None) -> tuple:
        """Source outputs and candidate outputs (permuted back to the source's layout) on the same feeds.

        ``feeds`` = (label, [feed, ...]) replaces the seeded random samples (a quantized artifact is
        judged on the distribution it was calibrated for, not on 3-sigma inputs it clips); ``options`` (default:
        ``runner_options``) are the candidate's runner options (``options_for``).
        """
        keyed = self._keyed(samples, batch, feeds)
        references = self._reference_outputs(keyed)
        layout = layout or Layout()
        feeds_for_candidate = [self.feeds_for(candidate, feeds, layout) for _key, feeds in keyed]
        result = candidate.run(feeds_for_candidate, options or self.runner_options, runtime=runtime,
                               timeout=self.timeout)
        self.last_runtime, self.last_cpu = result.ran_on, result.cpu
        return references, [parity.permute(o, layout.output_perms) for o in result.outputs]

    def input_layout(self, candidate: Artifact, mode: str = "auto") -> tuple:
        """(the candidate's input layout, what was inferred): its recorded one (manifest; None: nothing inferred), or
        — for a file deploykit did not write, or with --layout none|channels-last — the axis order of each input read
        from the two signatures (``deploykit.layout.axis_order``), with one phrase per tensor that needed one."""
        if mode == "auto" and candidate.manifest and "layout" in candidate.manifest:
            return candidate.layout, None
        source = {t.name: t for t in self.source.spec.inputs}
        origin_of = self._rename({name: name for name in source}, candidate)   # candidate name -> source name
        perms, parts = {}, []
        for tensor in candidate.spec.inputs:
            origin = source.get(origin_of.get(tensor.name, ""))
            if origin is not None:
                perms[tensor.name] = _inferred(parts, "input", tensor.name, tuple(origin.shape), tuple(tensor.shape),
                                               mode)
        return Layout(perms, {}), parts

    def output_layout(self, references: list, outputs: list, layout: Layout, mode: str, parts: list) -> tuple:
        """(layout with output perms, outputs in the source's order, the note): each output's axis order read from
        the shapes the two sides produced on the first sample (paired by name, else by their sizes in any order)."""
        perms = {}
        if references and outputs:
            first_ref, first_out = references[0], outputs[0]
            sizes = ({n: tuple(sorted(np.shape(v))) for n, v in first_ref.items()},
                     {n: tuple(sorted(np.shape(v))) for n, v in first_out.items()})
            for ref_name, out_name in parity.pair_names(list(first_ref), list(first_out), sizes, self.aliases())[0]:
                perm = _inferred(parts, "output", out_name, np.shape(first_ref[ref_name]), np.shape(first_out[out_name]),
                                 mode)
                perms[out_name] = inverse(perm)
        how = ("layout inferred from the two signatures (no manifest records it; --layout overrides)"
               if mode == "auto" else f"layout set by --layout {mode}")
        note = f"{how}: " + "; ".join(parts) if parts else ""
        return Layout(layout.input_perms, perms), [parity.permute(o, perms) for o in outputs], note

    def _keyed(self, samples: int, batch: Optional[int], feeds: Optional[tuple]) -> list:
        return [((feeds[0], i), f) for i, f in enumerate(feeds[1])] if feeds else self.feeds(samples, batch)

    def locate(self, candidate: Artifact, samples: int, feeds: Optional[tuple] = None,
               tolerance: Optional[parity.Tolerance] = None, runtime: Optional[str] = None,
               options: Optional[RunnerOptions] = None):
        """The layer-by-layer comparison (``deploykit.checking.locate``) on the feeds ``run_both`` uses: one more run of
        the source and of the candidate, with every layer's output kept — on ``runtime`` (an emulated ARM one captures
        under emulation: an fp16 divergence is found on the core that produces it)."""
        from deploykit.checking.locate import locate

        options = options or self.runner_options
        source_feeds = [f for _key, f in self._keyed(samples, None, feeds)]
        candidate_feeds = [self.feeds_for(candidate, f, candidate.layout) for f in source_feeds]
        location = locate(self._capture_source,
                          lambda fs: candidate.capture(fs, options, runtime=runtime, timeout=self.timeout),
                          (source_feeds, candidate_feeds), tolerance or self.tolerance,
                          (self.source.label, f"{candidate.label} on {runtime}" if runtime else candidate.label))
        if arm.emulated_entry(runtime):
            location.notes.append(arm.captured_note(runtime, options.arm_cpu))
        return location

    def _capture_source(self, feeds_list: list) -> tuple:
        """The source's graph and layer outputs: a framework model here, a file in a child like any artifact."""
        from deploykit.errors import UnsupportedModelError

        if self.source.handle is None:
            return Artifact.of(self.source, layout=Layout()).capture(feeds_list, RunnerOptions(), timeout=self.timeout)
        runner = registry.resolve(registry.runtime_for(self.source.format).target)(self.source)
        if not hasattr(runner, "capture"):
            raise UnsupportedModelError(f"--locate cannot follow a {self.source.format.value} source layer by layer",
                                        "locate from the PyTorch model (.pt2, module) or from an ONNX/TFLite file")
        return runner.capture(feeds_list)

    def _reference_outputs(self, keyed: list) -> list:
        """The source's outputs; a source that fails on the feeds is the user's inputs' problem, not the candidate's
        (a file source runs in a child, whose failure would otherwise read as "the converted model does not run")."""
        from deploykit.errors import ParityError

        try:
            return self.reference.outputs_for(keyed)
        except ParityError as exc:
            raise UsageError(f"the source {self.source.label} fails on the inputs deploykit feeds it: {exc.message}",
                             "give the values it expects: a range with --input NAME:SHAPE:DTYPE:LOW..HIGH (e.g. a "
                             "sample rate), or real data with --inputs data.npz") from None

    def uninformative_reason(self) -> str:
        """Why the source's outputs on the feeds checked so far prove nothing ("" when they can): an output that is
        ~0, constant, or the same for every sample (a random-init network's collapse)."""
        outputs = self.reference.seen_outputs()
        if len(outputs) < 2:
            return ""
        reasons = []
        for name, first in outputs[0].items():
            # Only samples shaped like the first (a --dynamic-batch check runs other batch sizes).
            why = parity.degenerate_reason([o[name] for o in outputs if name in o and o[name].shape == first.shape])
            if why:
                reasons.append(f"{name}: {why}")
        return "; ".join(reasons) if len(reasons) == len(outputs[0]) else ""

    def runtimes_for(self, candidate: Artifact) -> list:
        """Every --runtime that runs the candidate's format, in order ([None]: the format's default runtime)."""
        names = [name for name in self.runtimes
                 if any(e.name == name and candidate.format in e.formats for e in registry.RUNTIMES)]
        return names or [None]

    @property
    def runner_options(self) -> RunnerOptions:
        return RunnerOptions(device=self.device, **self.runtime_options)

    def options_for(self, runtime: Optional[str], preset: str) -> RunnerOptions:
        """The runner options of a run on ``runtime`` of an artifact judged with ``preset`` (``arm.run_options``)."""
        return arm.run_options(self.runner_options, runtime, self.arm_cpu, preset, self.runtimes)

    def feeds_for(self, candidate: LoadedModel, feeds: dict, layout: Optional[Layout] = None) -> dict:
        """Source-layout feeds renamed (by position, if the names differ) and permuted for the candidate."""
        return parity.permute(self._rename(feeds, candidate), layout.input_perms if layout else None)

    def _rename(self, feeds: dict, candidate: LoadedModel) -> dict:
        """Feed a candidate whose input names differ (another exporter's): by name, by normalised name, else by
        position (``parity.pair_names``)."""
        names = candidate.spec.input_names
        if set(names) == set(feeds):
            return feeds
        # An input the user fixed (--input sr::int64=16000) may have been specialised away (onnx_prep): not fed.
        counterparts = [t.name for t in self.source.spec.counterparts(candidate.spec.inputs) if t.name in feeds]
        if len(counterparts) == len(names):
            feeds = {name: feeds[name] for name in counterparts}
        if set(names) == set(feeds):
            return feeds
        if len(names) != len(feeds):
            raise UsageError(f"{candidate.label} takes {len(names)} input(s) ({', '.join(names)}) but the source "
                             f"takes {len(feeds)} ({', '.join(feeds)})", "compare models with the same inputs")
        pairs, _how, _left = parity.pair_names(list(feeds), list(names), aliases=self.aliases(candidate))
        return {cand: feeds[ref] for ref, cand in pairs}


def make_checker(model: LoadedModel, options: VerifyOptions) -> Checker:
    """The checker of ``model`` for these verify options (tolerance preset, seed, --inputs, device). Without
    --precision, a quantized source (int8 weights, QDQ, fp16 weights) is judged with its own precision's preset."""
    precision, why = (options.precision, "") if options.precision else source_precision(model)
    tolerance = tolerance_for(precision, options.atol, options.rtol)
    user_feeds = load_npz(options.inputs_npz, model.spec) if options.inputs_npz else None
    checker = Checker(model, tolerance, options.seed, user_feeds, options.timeout, options.device)
    checker.precision_note = f"{why} (--precision overrides)" if why else ""
    checker.runtime_options = {"xnnpack": options.xnnpack}
    checker.runtimes = arm.with_native_counterparts(tuple(options.runtimes))
    checker.arm_cpu = options.arm_cpu or ""
    checker.locate_failures = options.locate
    return checker


@dataclass
class VerifyResult:
    source: str
    reports: list           # ParityReport per artifact vs source, then hop vs previous hop
    seconds: float = 0.0
    locations: list = field(default_factory=list)   # LocateReport per artifact (--locate)
    report: Optional[dict] = None                    # the files of --report (locate.html)
    arm_cpus: list = field(default_factory=list)     # per report: the emulated ARM core that ran it ("" on x86)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    def add(self, report: parity.ParityReport, arm_cpu: str = "") -> None:
        self.reports.append(report)
        self.arm_cpus.append(arm_cpu)

    def to_dict(self) -> dict:
        cpus = self.arm_cpus + [""] * (len(self.reports) - len(self.arm_cpus))
        data = {"passed": self.passed, "source": self.source, "seconds": round(self.seconds, 3),
                "comparisons": [dict(r.to_dict(), **({"arm_cpu": cpu} if cpu else {}))
                                for r, cpu in zip(self.reports, cpus)]}
        if self.locations:
            data["locate"] = [location.to_dict() for location in self.locations]
        if self.report:
            data["report"] = self.report
        return data


@dataclass
class _Run:
    """One artifact on one runtime, as verify ran it (what --locate and the next hop need)."""

    artifact: Artifact
    runtime: Optional[str]
    label: str
    report: parity.ParityReport
    outputs: list
    feeds: Optional[tuple]
    options: RunnerOptions


def verify_artifacts(source: str, artifacts: list, load: LoadOptions, options: VerifyOptions) -> VerifyResult:
    """Compare every artifact against the source, and each against the previous one, on the same inputs. A PyTorch
    or Keras source is loaded once, in the reused child (``deploykit.child``), also when the API is called directly."""
    if not artifacts:
        raise UsageError("no artifact to verify", "give the source and at least one artifact, or a bundle folder alone")
    arm.check_arm_cpu(options.arm_cpu, options.runtimes)
    with reused_child():
        return _verify_artifacts(source, artifacts, load, options)


def _verify_artifacts(source: str, artifacts: list, load: LoadOptions, options: VerifyOptions) -> VerifyResult:
    started = time.perf_counter()
    model = load_model(source, load)
    checker = make_checker(model, options)
    opened = [Artifact.open(a, load=LoadOptions(timeout=options.timeout)) for a in artifacts]
    runs = [(artifact, runtime) for artifact in opened for runtime in checker.runtimes_for(artifact)]
    _check_runtimes_used(options.runtimes, runs)
    result, done, source_hash = VerifyResult(model.label, []), [], {}
    for artifact, runtime in runs:
        done.append(_verify_run(checker, model, artifact, runtime, options, source_hash))
        result.add(done[-1].report, checker.last_cpu)
        if len(done) > 1:
            result.add(*_hop(checker, done[-2], done[-1]))
    if options.locate:
        result.locations = _locate_each(checker, done, options.samples)
    result.seconds = time.perf_counter() - started
    return result


def _verify_run(checker: Checker, model: LoadedModel, artifact: Artifact, runtime: Optional[str],
                options: VerifyOptions, source_hash: dict) -> _Run:
    """Run one artifact on one runtime (None: its format's own) against the source, and judge it."""
    # Each artifact's manifest records its layout relative to the source it was exported from.
    stored, why = trusted_manifest(artifact, model, source_hash)
    label = f"{artifact.label} on {runtime}" if runtime else artifact.label
    layout, layout_notes = checker.input_layout(artifact, options.layout)
    tolerance, precision_why = artifact_tolerance(stored, options), ""
    if tolerance is None and options.precision is None:
        tolerance, precision_why = quantized_file_tolerance(artifact, checker.tolerance, options)
    # The preset is known before the run: an fp16 artifact computes in fp16 on a core that can (arm.run_options).
    run_options = checker.options_for(runtime, (tolerance or checker.tolerance).preset)
    feeds = int8_feeds(model, stored, options)
    try:
        references, outputs = checker.run_both(artifact, options.samples, layout=layout, feeds=feeds, runtime=runtime,
                                               options=run_options)
    except DeploykitError as exc:      # a runtime's remedy may name routes: only those this source has
        exc.remedy = remedies.for_formats(exc.remedy, model.format, artifact.format)
        raise
    layout_note = ""
    if layout_notes is not None:       # no recorded layout: the outputs' order is read from what they hold
        layout, outputs, layout_note = checker.output_layout(references, outputs, layout, options.layout, layout_notes)
    report = checker.compare(references, outputs, model.label, label, layout, tolerance, artifact)
    fp16_why = arm.fp16_note(run_options, runtime, checker.last_runtime)
    report.notes.extend(note for note in (precision_why, layout_note, why, fp16_why) if note)
    report.notes.extend(_contract_notes(artifact))
    return _Run(artifact, runtime, label, report, outputs, feeds, run_options)


def _hop(checker: Checker, previous: _Run, current: _Run) -> tuple:
    """(the report of ``current`` against ``previous``, the ARM core in it): an x86/ARM pair of one artifact is
    judged with the artifact's own preset and says so; any other pair is a hop of the chain."""
    pair = side = None
    if previous.artifact is current.artifact:
        pair = arm.side_by_side(previous.runtime, current.runtime)
    if pair is None:
        report = checker.compare(previous.outputs, current.outputs, previous.label, current.label)
        report.notes.append("hop: both sides in the source's layout")
        return report, ""
    side = current if current.runtime == pair[1] else previous
    report = checker.compare(previous.outputs, current.outputs, previous.label, current.label,
                             tolerance=current.report.tolerance)
    report.notes.append(arm.side_by_side_note(pair[0], pair[1], side.options.arm_cpu))
    return report, side.options.arm_cpu or ""


def _locate_each(checker: Checker, done: list, samples: int) -> list:
    """--locate, once per artifact: on the first runtime where it failed, else on its emulated ARM runtime (the
    phone's core), else on the first it ran on."""
    locations = []
    for artifact in {id(run.artifact): run.artifact for run in done}.values():     # each once, in order
        mine = [run for run in done if run.artifact is artifact]
        chosen = next((run for run in mine if not run.report.passed), None) \
            or next((run for run in mine if arm.emulated_entry(run.runtime)), mine[0])
        location = checker.locate(artifact, samples, chosen.feeds, chosen.report.tolerance, chosen.runtime,
                                  chosen.options)
        chosen.report.notes.append(f"locate: {location.summary()}")
        locations.append(location)
    return locations


def _inferred(parts: list, kind: str, name: str, source_shape: tuple, artifact_shape: tuple, mode: str):
    """The perm ``axis_order`` finds for one tensor (artifact axis j holds source axis perm[j]); what it found is
    added to ``parts`` when it is not the source's own order or could not be read."""
    order = axis_order(tuple(source_shape), tuple(artifact_shape), mode)
    if order.perm or order.note:
        named = CHANNEL_NAMES.get(tuple(order.perm), order.note) if order.perm else order.note
        parts.append(f"{kind} {name} {shown(source_shape)}→{shown(artifact_shape)} {named}"
                     if order.perm else f"{kind} {name} {shown(artifact_shape)}: {named}")
    return order.perm


# how a channels-last perm reads in the report
CHANNEL_NAMES = {(0, 2, 1): "NCW→NWC", (0, 2, 3, 1): "NCHW→NHWC", (0, 2, 3, 4, 1): "NCDHW→NDHWC"}


def _check_runtimes_used(named: tuple, runs: list) -> None:
    used = {runtime for _artifact, runtime in runs}
    for name in named:
        if name not in used:
            formats = ", ".join(sorted(f.value for e in registry.RUNTIMES if e.name == name for f in e.formats))
            raise UsageError(f"--runtime {name} runs {formats} models, and none of the artifacts is one",
                             "give an artifact of that format, or drop --runtime " + name)


def _contract_notes(artifact: Artifact) -> list:
    """What the deploykit contract an artifact carries says (verify shows it beside the parity it checks)."""
    from deploykit.contract import summary
    from deploykit.tflite_metadata import carried_contract

    carried = carried_contract(str(artifact.path), artifact.format) if Path(str(artifact.path)).is_file() else None
    return [f"carries a deploykit contract: {'; '.join(summary(carried)[:3])}"] if carried else []
