"""Option objects of the public API. Each validates itself on construction, so a bad value from
Python raises the same UsageError (exit 2) as the same value on the command line."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from deploykit.child import check_timeout
from deploykit.contract import parse_normalize
from deploykit.errors import UsageError
from deploykit.layout import LAYOUT_CHOICES

DEVICES = ("cpu", "cuda", "auto")
QUANTIZE_MODES = ("fp16", "dynamic", "int8")
LLM_QUANTIZE_MODES = ("int4", "8da4w")     # causal LMs only (deploykit.llm): ONNX MatMulNBits, ExecuTorch 8da4w
IO_DTYPES = ("float", "int8")
ROUTES = ("first", "all")
# --quantize mode -> the tolerance preset its artifact is judged with against the float source
PRECISION_OF = {"fp16": "fp16", "dynamic": "int8", "int8": "int8", None: "fp32"}


def check_choice(value, choices: tuple, option: str) -> None:
    if value not in choices:
        raise UsageError(f"unknown {option} {value!r}", f"use {' or '.join(str(c) for c in choices)}")


def refuse_unknown_keys(data, names, what: str) -> None:
    """A dict form (a matrix cell's request, a file) with a key no option has is refused, naming the key: a typo
    must not silently become a default."""
    if not isinstance(data, dict):
        raise UsageError(f"{what} must be a mapping (got {type(data).__name__})", "give the dict that to_dict() wrote")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UsageError(f"unknown {what} key {unknown[0]!r}", f"use {', '.join(sorted(names))}")


class _DictForm:
    """to_dict()/from_dict() of a flat frozen option object: tuples travel as JSON lists and come back as tuples."""

    def to_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) if isinstance(getattr(self, f.name), tuple)
                else getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict):
        names = [f.name for f in fields(cls)]
        refuse_unknown_keys(data, names, cls.__name__)
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


@dataclass(frozen=True)
class VerifyOptions(_DictForm):
    """How artifacts are compared with their source (also used by export's checks)."""

    samples: int = 5
    seed: int = 0
    inputs_npz: Optional[str] = None
    precision: Optional[str] = None   # None: fp32, or a quantized source's or artifact's own precision
    atol: Optional[float] = None
    rtol: Optional[float] = None
    timeout: float = 600.0
    device: str = "cpu"        # where artifacts run: cpu, cuda (ORT CUDA EP) or auto
    xnnpack: bool = True       # LiteRT artifacts run with the XNNPACK delegate (LiteRT's default)
    runtimes: tuple = ()       # run artifacts on these (e.g. onnxruntime-web), each where it runs the format
    locate: bool = False       # also compare layer by layer and name the first diverging layer (deploykit.checking.locate)
    layout: str = "auto"       # verify: the manifest's layout, else read from the signatures; none | channels-last
    arm_cpu: Optional[str] = None   # the core of the emulated ARM runtimes (deploykit.emulation.cores; None: cortex-a76)

    def __post_init__(self) -> None:
        from deploykit.registry import RUNTIMES

        unknown = [name for name in self.runtimes if name not in {entry.name for entry in RUNTIMES}]
        if unknown:
            raise UsageError(f"unknown --runtime {unknown[0]!r}",
                             f"use one of {', '.join(entry.name for entry in RUNTIMES)}")
        if not isinstance(self.samples, int) or self.samples < 0 or (self.samples < 1 and not self.inputs_npz):
            raise UsageError(f"--samples must be at least 1 (got {self.samples!r})", "e.g. --samples 5")
        check_timeout(self.timeout)
        if self.arm_cpu is not None:     # an unknown core is refused now, not after minutes of converting
            from deploykit.emulation.cores import core

            object.__setattr__(self, "arm_cpu", core(str(self.arm_cpu)).name)
        check_choice(self.device, DEVICES, "--device")
        check_choice(self.layout, LAYOUT_CHOICES, "--layout")
        from deploykit.parity import tolerance_for      # here, not at import: numpy stays out of the CLI's start

        tolerance_for(self.precision or "fp32", self.atol, self.rtol)     # the parity engine's own checks


@dataclass(frozen=True)
class QuantizeOptions(_DictForm):
    """``--quantize``: the mode (or "all" to build every precision), calibration data and IO type."""

    mode: str                              # fp16 | dynamic | int8 | all
    calibration: Optional[str] = None      # .npz or image folder; None = random data, with a warning
    samples: int = 100
    normalize: str = "unit"                # images: unit, imagenet, symmetric or mean=..,std=.. (contract.py)
    io_dtype: str = "float"                # int8 TFLite: float or int8 inputs/outputs
    repair: bool = True                    # int8 ONNX failing its preset: search calibration, then float layers

    def __post_init__(self) -> None:
        check_choice(self.mode, QUANTIZE_MODES + LLM_QUANTIZE_MODES + ("all",), "--quantize")
        check_choice(self.io_dtype, IO_DTYPES, "--io-dtype")
        parse_normalize(self.normalize, "--calibration-normalize")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise UsageError(f"--calibration-samples must be at least 1 (got {self.samples!r})",
                             "e.g. --calibration-samples 100")
