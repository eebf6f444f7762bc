"""int8 that fails its preset, repaired by a bounded and logged search instead of given up.

The steps, each a fresh quantization judged by the export's own check (the one parity engine, against the
source, on the judging data):

1. the calibration methods: min-max (done), percentile, entropy;
1b. where the converter has a 16x8 quantizer (TFLite: int16 activations, int8 weights), the whole model in 16x8:
   attention's softmax, LayerNorm and residual sums keep 16-bit resolution while the weights stay 8-bit, so the file
   stays as small as int8 — tried before any layer is given up to float. When it passes, the rest of the budget
   looks for a faster mix (``_faster``: weighted layers int8, the ones located worst kept 16x8);
2. only the weighted layers quantized (Conv, Gemm, MatMul, Gather), the ops between them (Softmax, the
   attention mask's Add, LayerNorm) left in float — where a transformer's int8 usually breaks;
3. the layers where ``deploykit.checking.locate`` measures the error growing most kept in float, re-measured after
   each step: 1, 2, 4, … of them, then the fewest that pass (bisected), within MAX_ATTEMPTS quantizations — from
   the 16x8 model when it came closer than step 2's (the rest of the model stays 16x8), else from step 2's.

The converter supplies ``quantize(settings)``; the result records every attempt, and the layers kept in
float by their source names (``ConversionResult.kept_float``, in the manifest's route).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

from deploykit.conversion import Check, ConversionResult, ExportOptions
from deploykit.errors import ConversionError, Outcome

MAX_ATTEMPTS = 10
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")


@dataclass(frozen=True)
class Settings:
    method: str = "minmax"        # minmax | percentile | entropy
    op_types: tuple = ()          # op types quantized; () = every op the quantizer can
    float_nodes: tuple = ()       # the artifact's node names kept in float
    float_layers: tuple = ()      # the same layers in the source's names
    activations: str = "int8"     # int8 | int16 (TFLite's 16x8: int16 activations, int8 weights) | mixed
    wide_nodes: tuple = ()        # mixed: the weighted layers kept 16x8 (artifact names); the others are int8
    wide_layers: tuple = ()       # the same layers in the source's names

    def describe(self) -> str:
        parts = [self.method]
        if self.activations == "int16":
            parts.append("16x8 (int16 activations, int8 weights)")
        if self.activations == "mixed":
            parts.append(f"16x8 but the weighted layers int8, {len(self.wide_layers)} of them kept 16x8")
        if self.op_types:
            parts.append("weighted layers only")
        if self.float_layers:
            parts.append(f"{len(self.float_layers)} layer(s) float")
        return ", ".join(parts)


class _Search:
    """The attempts so far and the best one (highest worst-output cosine)."""

    def __init__(self, result: ConversionResult, check: Check, options: ExportOptions, quantize: Callable,
                 progress) -> None:
        self.result, self.check, self.options, self.quantize = result, check, options, quantize
        self.progress = progress
        self.count, self.best = 0, None

    def attempt(self, settings: Settings, locate: bool = False):
        """The check's report of one quantization, or a failed stand-in when the quantizer fails (ORT's entropy
        calibration refuses some activation ranges) or its model does not run (TFLite's int8 DIV aborts)."""
        from deploykit.errors import DeploykitError
        from deploykit.parity import ParityReport, tolerance_for

        self.count += 1
        try:
            self.quantize(settings)
            report = self.check(self.result.path, self.options.samples, locate=locate)
        except Exception as exc:  # noqa: BLE001 - quantizers raise many types; a crashing model is a failed attempt
            report = ParityReport("source", "int8", 0, tolerance_for("int8"))
            why = exc.message if isinstance(exc, DeploykitError) else f"{type(exc).__name__}: {str(exc)[:150]}"
            report.problems.append(f"the quantized model failed: {why}")
        cosine = min((o.cosine for o in report.outputs if o.cosine is not None), default=float("nan"))
        self.result.attempts.append({"tool": f"int8 repair: {settings.describe()}", "ok": report.passed,
                                     "why": report.summary()[:300]})
        if self.best is None or cosine > self.best[0]:
            self.best = (cosine, settings, report)
        self.progress.update(self.count, f"{settings.describe()}: {'passed' if report.passed else 'failed'}",
                             cosine=cosine)
        return report

    @property
    def exhausted(self) -> bool:
        return self.count >= MAX_ATTEMPTS


def repair(result: ConversionResult, check: Check, options: ExportOptions, quantize: Callable,
           failed: dict, methods: tuple = ("percentile", "entropy"), sixteen_by_eight: bool = False) -> None:
    """After the plain (min-max) int8 model failed its check (``failed``: that ParityReport as a dict), leave a
    passing int8 model at ``result.path`` with its repair recorded in ``result``, or raise ConversionError
    naming the best attempt. ``sixteen_by_eight``: the quantizer takes ``Settings(activations="int16")``."""
    from deploykit.progress import Progress

    with Progress(f"int8 repair (at most {MAX_ATTEMPTS} attempts)", total=None) as progress:
        _search(_Search(result, check, options, quantize, progress), failed, methods, sixteen_by_eight)


def _search(search: "_Search", failed: dict, methods: tuple, sixteen_by_eight: bool = False) -> None:
    cosines = [o["cosine"] for o in failed.get("outputs", []) if o.get("cosine") is not None]
    search.best = (min(cosines, default=float("-inf")), Settings(), None)
    for method in methods:     # () for a quantizer with one calibration method (TFLiteConverter)
        if search.attempt(Settings(method)).passed:
            return _kept(search, Settings(method))
    sixteen = _sixteen_by_eight(search) if sixteen_by_eight else None
    if sixteen is not None and sixteen[1].passed:
        return _kept(search, _faster(search) or sixteen[0])
    settings = replace(search.best[1], op_types=WEIGHTED_OPS, activations="int8", float_nodes=(), float_layers=())
    report = search.attempt(settings, locate=True)
    if report.passed:
        return _kept(search, settings)
    if sixteen is not None and sixteen[1].location and _cosine(sixteen[1]) > _cosine(report):
        settings, report = sixteen     # layers go float from the closer model: 16x8 beats int8 with ops in float
    passing = _float_layers(search, settings, report.location)
    if passing is None:
        _give_up(search)
    _kept(search, passing)


def _faster(search: _Search) -> Optional[Settings]:
    """A passing 16x8 model that runs faster, or None: 16x8 kernels are slow on CPUs (XNNPACK has none; LiteRT's
    reference int16 FULLY_CONNECTED took ~90 % of a 16x8 MiniLM's time), so the weighted layers go int8 and the
    layers the located error blames most stay 16x8 — the fewest that pass (doubling, bisected) in what is left
    of the budget."""
    base = Settings(activations="mixed")
    report = search.attempt(base, locate=True)
    if report.passed:
        return base
    faster = _float_layers(search, base, report.location, keep="wide")
    located = {row["artifact_op"] for row in _ranking(report.location)}
    if faster is not None and located <= set(faster.wide_nodes):
        return None     # every located weighted layer back in 16x8: the whole 16x8 model, not a faster one
    return faster


def _sixteen_by_eight(search: _Search) -> tuple:
    """The whole model in 16x8 (its report located when it fails): the settings and the report."""
    settings = Settings(activations="int16")
    return settings, search.attempt(settings, locate=True)


def _cosine(report) -> float:
    return min((o.cosine for o in report.outputs if o.cosine is not None), default=float("-inf"))


def _ranking(location: Optional[dict]) -> list:
    """Matched layers by their own share of the error (``growth``: what they add to what they receive), largest
    first."""
    rows = [r for r in (location or {}).get("rows", []) if r["artifact_op"] and r.get("growth") is not None]
    return sorted(rows, key=lambda row: -row["growth"])


def _float_layers(search: _Search, base: Settings, location: Optional[dict], keep: str = "float") -> Optional[Settings]:
    """The layers to keep in float (``keep="wide"``: in 16x8), chosen greedily: each step re-measures the model it
    has and doubles the set with the layers adding the most error now (1, 2, 4, …); once one passes, the fewest of
    them, in the order chosen, that still pass (bisected)."""
    def settings_for(rows: list) -> Settings:
        return replace(base, **{f"{keep}_nodes": tuple(r["artifact_op"] for r in rows),
                                f"{keep}_layers": tuple(r["layer"] for r in rows)})

    chosen, failed = [], 0
    while not search.exhausted:
        ranking = [r for r in _ranking(location) if r["artifact_op"] not in {c["artifact_op"] for c in chosen}]
        if not ranking:
            return None
        failed = len(chosen)
        chosen += ranking[:max(1, len(chosen))]
        report = search.attempt(settings_for(chosen), locate=True)
        if report.passed:
            break
        location = report.location or location     # a model that did not run: keep the last measurement
    else:
        return None
    passed = len(chosen)
    while passed - failed > 1 and not search.exhausted:
        middle = (failed + passed) // 2
        if search.attempt(settings_for(chosen[:middle])).passed:
            passed = middle
        else:
            failed = middle
    return settings_for(chosen[:passed])


def _kept(search: _Search, settings: Settings) -> None:
    """Leave the passing settings' model in place (the last attempt may have been a failing bisection step)."""
    last = search.result.attempts[-1]
    if not (last["ok"] and last["tool"] == f"int8 repair: {settings.describe()}"):
        search.quantize(settings)
    search.result.kept_float = list(settings.float_layers)
    search.result.repaired = True
    kept = (f"; kept {len(settings.float_layers)} layer(s) in float: {', '.join(settings.float_layers)}"
            if settings.float_layers else "")
    kept += (f"; kept {len(settings.wide_layers)} weighted layer(s) in 16x8: {', '.join(settings.wide_layers)}"
             if settings.wide_layers else "")
    search.result.notes.append(f"int8 repaired after {search.count + 1} quantization(s): {settings.describe()}{kept}")


def _give_up(search: _Search) -> None:
    cosine, settings, report = search.best
    if report is None:      # nothing beat the plain model
        raise ConversionError(f"int8 fails its preset after {search.count + 1} quantization(s) (best: the plain "
                              f"min-max model, cosine {cosine:.4f})", "give more representative --calibration "
                              "data, or use --quantize dynamic / fp16", outcome=Outcome.MISMATCH)
    raise ConversionError(f"int8 fails its preset after {search.count + 1} quantization(s); the best ({settings.describe()}) "
                          f"reaches cosine {cosine:.4f}: {report.summary()}",
                          "give more representative --calibration data, or use --quantize dynamic / fp16",
                          details={"parity": report.to_dict()}, outcome=Outcome.MISMATCH, report=report)
