"""Run conversion routes (chains of registry edges), verify every hop against the source,
and pick the route to keep: the first that passes, or with --route all the best one."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from deploykit import registry
from deploykit.remedies import FALLBACK_REMEDY, applicable_remedy, goes_via
from deploykit.artifact import Artifact
from deploykit.errors import (ConversionError, MissingDependency, ModelLoadError, Outcome, ParityError,
                              UnsupportedModelError, UsageError)
from deploykit.formats import Format
from deploykit.layout import Layout
from deploykit.model import LoadedModel

# Set by the test suite for tests not marked `slow`: a conversion there is a mislabelled test.
FORBID_ENV = "DEPLOYKIT_TEST_FORBID_CONVERSION"

# What a manifest keeps of each hop of the route it records.
RECORDED_HOP_KEYS = ("edge", "tool", "outcome", "attempts", "notes", "parity_vs_source", "artifact_sha256", "kept_float",
                     "static_checks")
SUFFIXES = {Format.ONNX: ".onnx", Format.ORT: ".ort", Format.TFLITE: ".tflite", Format.SAVED_MODEL: "_saved_model",
            Format.EXECUTORCH: ".pte", Format.COREAI: ".aimodel", Format.COREML: ".mlpackage"}


@dataclass
class RouteRun:
    route: list
    hops: list = field(default_factory=list)        # ConversionResult per edge
    layout: Layout = field(default_factory=Layout)  # final artifact vs source
    seconds: float = 0.0
    error: Optional[ConversionError] = None
    latency_ms: Optional[float] = None
    outcome: Outcome = Outcome.OK                  # of the hop that ended the route (OK when it passed)
    keep_unverified: bool = False                  # --keep-unverified: a route whose parity cannot tell stands
    alternatives: list = field(default_factory=list)  # the other routes the registry offers for this export

    @property
    def name(self) -> str:
        return " → ".join(e.name for e in self.route)

    @property
    def passed(self) -> bool:
        final = self.hops[-1].parity if self.hops else None
        return self.error is None and final is not None and (
            final.passed or (self.keep_unverified and final.uninformative_only))

    @property
    def unverified(self) -> bool:
        """Kept under --keep-unverified although its parity proves nothing."""
        return self.passed and not self.hops[-1].parity.passed

    @property
    def final(self):
        return self.hops[-1]

    def worst(self, metric: str, pick=max):
        if not self.passed:
            return None
        values = [getattr(o, metric) for o in self.final.parity.outputs if getattr(o, metric) is not None]
        return pick(values) if values else None

    @property
    def artifact(self) -> Artifact:
        """The route's final artifact (layout relative to the source, hash taken when it was made)."""
        return self.final.artifact

    def to_dict(self) -> dict:
        # A route kept unverified stands, but it did not pass: the table (printed, --json, the manifest) says so.
        return {"route": self.name, "passed": self.passed and not self.unverified,
                **({"unverified": True} if self.unverified else {}), "outcome": self.outcome.value,
                "seconds": round(self.seconds, 2), "error": self.error.message if self.error else None,
                "max_abs": self.worst("max_abs"), "cosine": self.worst("cosine", min),
                "latency_ms_1thread": self.latency_ms,
                "hops": self.hop_dicts()}

    def recorded_hops(self) -> list:
        """The route's hops as the manifest (and the export's result) record them."""
        return [{key: hop[key] for key in RECORDED_HOP_KEYS if key in hop} for hop in self.hop_dicts()]

    def hop_dicts(self) -> list:
        """Every edge of the route: the hops made (with their hash) and the one that failed, if any."""
        made = [_hop_dict(edge, hop) for edge, hop in zip(self.route, self.hops)]
        if self.error is not None and len(self.hops) < len(self.route):
            made.append({"edge": self.route[len(self.hops)].name, "outcome": self.outcome.value,
                         "error": self.error.message, "artifact_sha256": None})
        return made


def route_table(runs: list, chosen: RouteRun) -> list:
    """Every route tried, as the manifest's and --json's "routes" table (the kept one marked chosen)."""
    return [dict(run.to_dict(), chosen=run is chosen) for run in runs]


def _hop_dict(edge, hop) -> dict:
    artifact = hop.artifact
    return {"edge": edge.name, "tool": hop.tool, "outcome": Outcome.OK.value, "attempts": hop.attempts,
            "notes": hop.notes, "parity_vs_source": hop.parity.summary() if hop.parity else None,
            **({"kept_float": hop.kept_float} if hop.kept_float else {}),
            **({"static_checks": hop.static_checks} if hop.static_checks else {}),
            "artifact_sha256": artifact.sha256 if artifact is not None else None}


def select_routes(src: Format, dst: Format, via: Optional[str], quantize: Optional[str] = None,
                  io_dtype: str = "float") -> list:
    """Available routes from src to dst, preferred first; ``via`` keeps those through a format or tool.

    With ``quantize`` the route must end in an edge that applies it: ONNX Runtime's quantizer after
    any route to ONNX; for TFLite, litert-torch's PT2E quantizer (PyTorch programs) or TensorFlow's
    TFLiteConverter (PyTorch sources reach it via ONNX and onnx2tf's SavedModel).
    """
    if quantize:
        routes = _quantized_routes(src, dst, quantize, io_dtype)
    elif src == dst:
        raise UsageError(f"the model is already {dst.value}", "give another --to, or use `deploykit verify` on it")
    else:
        routes = registry.plan(src, dst)
    if not routes:
        raise UsageError(f"no conversion from {src.value} to {dst.value} is available",
                         "see the README's support table, or `deploykit doctor` for the routes this install has")
    if via:
        routes = [r for r in routes if goes_via(r, via)]
        if not routes:
            tags = sorted({e.tag for r in registry.plan(src, dst) for e in r} |
                          {e.dst.value for r in registry.plan(src, dst) for e in r[:-1]})
            raise UsageError(f"no route from {src.value} to {dst.value} goes via {via!r}",
                             f"use --via one of {', '.join(tags)}")
    usable = [r for r in routes if all(e.available for e in r)]
    if not usable:
        missing = tuple(p for e in routes[0] for p in e.requires)
        registry.require(missing, f"needed for {' → '.join(e.name for e in routes[0])}")
    return usable


def offered_routes(src: Format, dst: Format, quantize: Optional[str] = None, io_dtype: str = "float") -> list:
    """Every route the registry offers from ``src`` to ``dst`` for this --quantize, installed or not (what a
    remedy may suggest)."""
    try:
        return _quantized_routes(src, dst, quantize, io_dtype) if quantize else [] if src == dst else \
            registry.plan(src, dst)
    except UsageError:
        return []


def _quantized_routes(src: Format, dst: Format, quantize: str, io_dtype: str) -> list:
    if quantize not in registry.QUANTIZE_MODES:
        raise UsageError(f"unknown --quantize {quantize!r}", f"use {', '.join(registry.QUANTIZE_MODES)} or all")
    if dst == Format.ONNX:
        step = next(e for e in registry.EDGES if e.name == "onnx_quantize")
        if src == Format.ONNX:
            return [[step]]
        float_routes = registry.plan(src, dst)
        shortest = min((len(r) for r in float_routes), default=0)
        return [r + [step] for r in float_routes if len(r) == shortest]
    if dst in (Format.TFLITE, Format.EXECUTORCH, Format.COREAI, Format.COREML):
        # An edge whose int8 makes int8 inputs/outputs cannot serve --io-dtype float.
        routes = [r for r in registry.plan(src, dst, max_hops=3) if quantize in r[-1].quantizes
                  and (quantize != "int8" or not r[-1].int8_io or io_dtype == "int8")]
        modes = quantize_modes(dst)
        if not routes and quantize not in modes:
            raise UsageError(f"--quantize {quantize} is not available for --to {dst.value}",
                             f"use --quantize {' or '.join(modes)}")
        return routes
    raise UsageError(f"--quantize applies to --to onnx, tflite, executorch, coreai or coreml, not {dst.value}",
                     "drop --quantize")


def quantize_modes(dst: Format) -> tuple:
    """The --quantize modes some edge into ``dst`` applies, in registry order."""
    return tuple(m for m in registry.QUANTIZE_MODES if any(m in e.quantizes for e in registry.EDGES if e.dst == dst))


def run_route(route: list, model: LoadedModel, out: Path, options, checker, calibration: Optional[list] = None,
              final_tolerance=None, final_feeds: Optional[tuple] = None) -> RouteRun:
    """Convert hop by hop; each intermediate and the final artifact is checked against the source.

    Each hop's artifact is an object handed to the next hop (never re-read from its path), with
    its layout relative to the source and its sha256 taken when it was made.
    """
    if os.environ.get(FORBID_ENV) and any(edge.target.startswith("converters.") for edge in route):
        getattr(model, "result", lambda: None)()     # a source that does not load fails as itself first
        raise AssertionError("this test converts a model: mark it `slow` (the quick loop never converts)")
    run, current, started = RouteRun(route, keep_unverified=options.keep_unverified), model, time.perf_counter()
    run.alternatives = [r for r in offered_routes(model.format, route[-1].dst, options.quantize, options.io_dtype)
                        if r != route]
    previous_layout = Layout()
    try:
        for index, edge in enumerate(route):
            last = index == len(route) - 1
            path = out if last else out.with_name(f"{out.stem}.hop{index}{SUFFIXES[edge.dst]}")

            tolerance, given = (final_tolerance, final_feeds) if last else (None, None)

            def check(candidate, samples, batch=None, layout=None, locate=False, _prev=previous_layout,
                      _tol=tolerance, _feeds=given):
                return checker.check(candidate, samples, batch, layout=_prev.then(Layout.of(layout)), tolerance=_tol,
                                     feeds=_feeds, locate=locate)

            def calibrate(edge_input, _prev=previous_layout):
                return [checker.feeds_for(edge_input, feeds, _prev) for feeds in calibration or []]

            hop_options = replace(options, quantize=options.quantize if last else None, calibration_feeds=calibrate)
            result = registry.resolve(edge.target)(current, path, hop_options, check)
            previous_layout = previous_layout.then(result.layout)
            result.artifact = _hop_artifact(result, previous_layout)
            run.hops.append(result)
            current = result.artifact
        run.layout = previous_layout
        if options.dynamic_batch:
            _check_dynamic_batch(run, checker)
    except MissingDependency as exc:
        run.error, run.outcome = ConversionError(exc.message, exc.remedy), Outcome.MISSING_DEPENDENCY
    except ConversionError as exc:
        run.error, run.outcome = exc, exc.outcome or Outcome.CONVERT_FAILED
    except (ModelLoadError, ParityError, UnsupportedModelError) as exc:
        # An artifact that does not load or run is a failed conversion, not bad user input.
        loads = isinstance(exc, (ModelLoadError, UnsupportedModelError))
        run.error = ConversionError(f"{run.name}: the converted model does not {'load' if loads else 'run'}: "
                                    f"{exc.message}", exc.remedy)
        run.outcome = exc.outcome or (Outcome.ARTIFACT_LOAD_FAILED if loads else Outcome.ARTIFACT_RUN_FAILED)
    if run.error is not None:
        run.error.remedy = applicable_remedy(run.error.remedy, run.alternatives, [route])
    run.seconds = time.perf_counter() - started
    return run


def _hop_artifact(result, layout: Layout) -> Artifact:
    """The hop's file as an Artifact: the one its check ran when that is still the file, else read once now
    (onnxslim replaces the checked file by a simplified one)."""
    checked = result.artifact
    if checked is not None and Path(checked.path) == Path(result.path):
        return checked.with_layout(layout)
    return Artifact.open(result.path, layout=layout)


def _check_dynamic_batch(run: RouteRun, checker) -> None:
    if run.final.parity is not None and run.final.parity.unverifiable:     # nothing here runs it, at any batch
        run.final.notes.append("not run at batch 3 either (dynamic batch): no runtime here runs it")
        return
    report = checker.check(run.artifact, 2, batch=3, layout=run.layout)
    if not report.passed:
        raise ConversionError("the artifact does not run correctly at batch 3 with --dynamic-batch: "
                              + report.summary(), "the model fixes its batch size inside; drop --dynamic-batch")
    run.final.notes.append("verified at batch 3 as well (dynamic batch)")


def choose(runs: list, route_all: bool) -> RouteRun:
    """The first passing run, or with --route all the passing run with the lowest latency."""
    passing = [r for r in runs if r.passed]
    if not passing:
        messages = "; ".join(f"{r.name}: {r.error.message if r.error else 'parity failed'}" for r in runs)
        if len(runs) == 1 and runs[0].error:
            raise runs[0].error
        # The preferred route's remedy is the one that matters (it names the construct, say), less the routes
        # that failed here too.
        first = next((r.error for r in runs if r.error), None)
        tried = [r.route for r in runs]
        untried = [r for r in runs[0].alternatives if r not in tried]
        raise ConversionError(f"every route failed: {messages}",
                              applicable_remedy(first.remedy, untried, tried) if first else FALLBACK_REMEDY,
                              details=first.details if first else None, report=first.report if first else None)
    if not route_all:
        return passing[0]
    # Parity first (by order of magnitude of the worst error, so noise does not decide), then latency.
    return min(passing, key=lambda r: (math.floor(math.log10(max(r.worst("max_abs") or 0.0, 1e-12))),
                                       r.latency_ms if r.latency_ms is not None else float("inf")))
