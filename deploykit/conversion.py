"""The converter contract: what every edge (``converters/<src>_to_<dst>.py``) takes and returns.

An edge registered in ``deploykit.registry.EDGES`` provides

    convert(model: LoadedModel, out_path: Path, options: ExportOptions, check: Check) -> ConversionResult

It writes its artifact at ``out_path`` (side files beside it), verifies it with ``check`` (the
export's one parity engine against the *source*, run through the child harness) — usually via
:func:`accept` — and raises ConversionError with a remedy when it cannot. A converter that
can hang, crash or flood the terminal runs its tool through ``deploykit.child.run_child``
with ``stage=CONVERT``; it may return the description of the file its child wrote, so the
artifact is not read again. ``model.handle`` is None here: a converter that needs the source's live
object (torch.onnx, TFLiteConverter) runs that part as a ``reuse=True`` job, in the reused child that
holds the source (``deploykit.child``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from deploykit.errors import (ConversionError, DeploykitError, MissingDependency, ModelLoadError, Outcome,
                              ParityError, UnsupportedModelError)
from deploykit.layout import Layout
from deploykit.parity import ParityReport, tolerance_for, unverifiable
from deploykit.request import ORT_PLATFORMS, ORT_STYLES

# check(candidate: Path | Artifact, samples, batch=None, layout=None, locate=False) -> ParityReport against the
# source; the export API provides it so that an edge can verify its own intermediate results (exporter
# fallbacks, graph optimizations, an int8 repair) with the one parity engine. ``locate=True`` adds the layer
# table of deploykit.checking.locate to a report that fails (``report.location``).
Check = Callable[..., ParityReport]


@dataclass(frozen=True)
class ExportOptions:
    """What every converter is told (one frozen object, not a keyword argument per option)."""

    opset: Optional[int] = None
    dynamic_batch: bool = False
    optimize: bool = True
    samples: int = 5
    timeout: float = 600.0
    debug: bool = False
    keep_layout: bool = False      # ask converters that change layouts (onnx2tf) to keep the source's inputs
    quantize: Optional[str] = None  # fp16 | dynamic | int8, applied by the route's last edge
    io_dtype: str = "float"         # int8 TFLite: float or int8 inputs/outputs
    # Calibration feeds for the edge's input model (renamed and permuted by the routing).
    calibration_feeds: Optional[Callable] = None
    keep_unverified: bool = False   # accept an artifact whose parity cannot tell (a reference that ignores its input)
    repair: bool = True             # int8 that fails its preset: search calibration and float layers (onnx_quantize)
    ort_style: str = ORT_STYLES[0]       # --to ort: fixed | runtime optimisation (onnx_to_ort)
    ort_platform: str = ORT_PLATFORMS[0]  # --to ort: arm | amd64

    @classmethod
    def from_request(cls, request) -> "ExportOptions":
        """What the converters of an export (a deploykit.request.ExportRequest) are told: derived here only."""
        quantize = request.quantize
        return cls(opset=request.opset, dynamic_batch=request.dynamic_batch, optimize=request.optimize,
                   samples=request.verify.samples, timeout=request.verify.timeout, debug=request.debug,
                   keep_layout=request.keep_layout, keep_unverified=request.keep_unverified,
                   ort_style=request.ort_settings["style"], ort_platform=request.ort_settings["platform"],
                   **({"quantize": quantize.mode, "io_dtype": quantize.io_dtype, "repair": quantize.repair}
                      if quantize else {}))


def acceptable(report: ParityReport, options: ExportOptions) -> bool:
    """A check's report lets the hop stand: it passed, or (with --keep-unverified) nothing differed but the
    reference could not tell, or no runtime here could run the artifact — it is kept and marked unverified."""
    return report.passed or (options.keep_unverified and report.uninformative_only)


@dataclass
class ConversionResult:
    """One hop's outcome: the file, the tool that wrote it, the check that accepted it, its layout."""

    path: Path
    converter: str
    tool: str                                        # which exporter produced the file
    parity: Optional[ParityReport] = None            # the check that accepted it
    extra_files: list = field(default_factory=list)  # side files (external data)
    input_perms: dict = field(default_factory=dict)  # this hop's Layout: artifact axes -> source axes
    output_perms: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    attempts: list = field(default_factory=list)     # [{"tool":..., "ok":..., "why":...}]
    kept_float: list = field(default_factory=list)   # layers an int8 repair left in float (source names)
    repaired: bool = False                           # an int8 repair replaced the first, failing model
    artifact: object = None                          # the Artifact of the file (set by a converter that opened it,
                                                     # else by accept); accept reuses it rather than reading again
    description: Optional[dict] = None               # a converter child's description of the file it wrote
    static_checks: Optional[dict] = None             # what a file no runtime here can run was checked for instead

    @property
    def layout(self) -> Layout:
        """This hop's layout relative to its input model (its input_perms and output_perms)."""
        return Layout(self.input_perms, self.output_perms)


def accept(result: ConversionResult, check: Check, options: ExportOptions, tag: str, what: str, remedy: str,
           layout: Optional[Layout] = None) -> ConversionResult:
    """Check a converter's artifact against the source and record the attempt.

    Raises ConversionError with the hop's outcome when the artifact does not load
    (ARTIFACT_LOAD_FAILED), does not run (ARTIFACT_RUN_FAILED) or does not match (MISMATCH);
    returns the result with its parity and checked artifact otherwise.
    """
    from deploykit.artifact import Artifact

    layout = Layout.of(layout)
    try:
        artifact = result.artifact.with_layout(layout) if result.artifact is not None else \
            Artifact.open(result.path, layout=layout, description=result.description)
        report = check(artifact, options.samples, layout=layout)
    except (ConversionError, MissingDependency):
        raise
    except (ModelLoadError, UnsupportedModelError) as exc:
        raise ConversionError(f"{what} wrote a model that does not load: {exc.message}", remedy,
                              outcome=Outcome.ARTIFACT_LOAD_FAILED) from None
    except DeploykitError as exc:
        outcome = exc.outcome or (Outcome.ARTIFACT_RUN_FAILED if isinstance(exc, ParityError) else None)
        raise ConversionError(f"{what} wrote a model that does not run: {exc.message}", remedy,
                              outcome=outcome or Outcome.ARTIFACT_RUN_FAILED) from None
    result.attempts.append({"tool": tag, "ok": report.passed, "why": report.summary()})
    result.parity, result.artifact = report, artifact
    if not acceptable(report, options):
        raise ConversionError(f"the {what} model does not match the source: {report.summary()}", remedy,
                              details={"parity": report.to_dict()}, outcome=Outcome.MISMATCH, report=report)
    return result


def keep_unverifiable(result: ConversionResult, options: ExportOptions, tag: str, what: str, reason: str,
                      alternative: str, reference: str) -> ConversionResult:
    """A hop whose artifact no runtime on this host can run (``reason``: the runtime's own) cannot be proven against
    the source (``reference``: its label).

    Its parity report says so — every output "unverifiable", no sample compared, never a pass — and, as for a
    reference that cannot tell, the hop stands only with --keep-unverified (the export then exits 6, its manifest
    says ``"verified": false`` and why). Without it: ConversionError (exit 4, nothing published) naming the reason,
    the flag and ``alternative`` (a target that runs here). A converter calls this only when the registry's
    runtime for its format is unavailable; where it is available, ``accept`` verifies the artifact as usual.
    """
    from deploykit.artifact import Artifact

    artifact = result.artifact or Artifact.open(result.path, description=result.description)
    report = unverifiable(reference, artifact.label, [t.name for t in artifact.spec.outputs], reason,
                          tolerance_for("fp16" if options.quantize == "fp16" else "fp32"))
    result.attempts.append({"tool": tag, "ok": False, "why": report.summary()})
    result.parity, result.artifact = report, artifact
    if not options.keep_unverified:
        # A missing runtime, not a wrong result (the outcome the route table shows); exit 4 all the same: export
        # promises a verified artifact, and this one cannot be, whatever is installed here.
        raise ConversionError(f"the {what} cannot be verified here: {reason}",
                              f"add --keep-unverified to keep it, marked unverified (exit 6), or {alternative}",
                              outcome=Outcome.MISSING_DEPENDENCY, report=report)
    return result


def with_source_names(description: dict, source) -> dict:
    """A converter child's description of its artifact, with the source's tensor names by position (the artifact
    keeps none or other ones; the manifest records the source's, which ``named_as_recorded`` reads back)."""
    for kind, tensors in (("inputs", source.inputs), ("outputs", source.outputs)):
        entries = description["spec"][kind]
        if len(entries) == len(tensors):
            for entry, tensor in zip(entries, tensors):
                entry["name"] = tensor.name
    return description
