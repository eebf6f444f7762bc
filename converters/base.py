"""What every converter edge takes and returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from deploykit.errors import ConversionError, DeploykitError
from deploykit.parity import ParityReport

# check(candidate_path, samples, batch) -> ParityReport against the source; the export API
# provides it so that an edge can verify its own intermediate results (exporter fallbacks,
# graph optimizations) with the one parity engine.
Check = Callable[..., ParityReport]


@dataclass(frozen=True)
class ExportOptions:
    opset: Optional[int] = None
    dynamic_batch: bool = False
    optimize: bool = True
    samples: int = 5
    timeout: float = 900.0
    debug: bool = False
    keep_layout: bool = False      # ask converters that change layouts (onnx2tf) to keep the source's inputs
    quantize: Optional[str] = None  # fp16 | dynamic | int8, applied by the route's last edge
    io_dtype: str = "float"         # int8 TFLite: float or int8 inputs/outputs
    # Calibration feeds for the edge's input model (renamed and permuted by the routing).
    calibration_feeds: Optional[Callable] = None


@dataclass
class ConversionResult:
    path: Path
    converter: str
    tool: str                                        # which exporter produced the file
    parity: Optional[ParityReport] = None            # the check that accepted it
    extra_files: list = field(default_factory=list)  # side files (external data)
    input_perms: dict = field(default_factory=dict)  # layout: artifact axes -> source axes
    output_perms: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    attempts: list = field(default_factory=list)     # [{"tool":..., "ok":..., "why":...}]


def accept(result: ConversionResult, check: Check, options: ExportOptions, tag: str, what: str, remedy: str,
           layout: Optional[dict] = None) -> ConversionResult:
    """Check a converter's artifact against the source and record the attempt.

    Raises ConversionError when the artifact does not run (a converter can "succeed" and write
    ops the runtime refuses) or does not match; returns the result with its parity otherwise.
    """
    try:
        report = check(result.path, options.samples, layout=layout)
    except ConversionError:
        raise
    except DeploykitError as exc:
        raise ConversionError(f"{what} wrote a model that does not run: {exc.message}", remedy) from None
    result.attempts.append({"tool": tag, "ok": report.passed, "why": report.summary()})
    result.parity = report
    if not report.passed:
        raise ConversionError(f"the {what} model does not match the source: {report.summary()}", remedy,
                              details={"parity": report.to_dict()})
    return result
