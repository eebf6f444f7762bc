"""One export request: the source, the target, the output and every option of `export`, in one frozen object.

    request = ExportRequest("model.pt2", to="tflite", output="model.tflite", quantize=QuantizeOptions("int8"))
    deploykit.export(request)                      # the same as deploykit.export("model.pt2", to="tflite", ...)
    ExportRequest.from_dict(request.to_dict()) == request

The CLI builds one from its flags, ``deploykit.export(...)`` from its keyword arguments, a matrix cell from its
spec (and ships it to the cell's child process as ``to_dict()``). Each default lives here once, as a field's
default, and every check runs in ``__post_init__``: a bad value is the same UsageError (exit 2) from all of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Optional

from deploykit import registry
from deploykit.causal_lm import LLMOptions
from deploykit.contract import ContractChoices
from deploykit.errors import UsageError
from deploykit.formats import Format
from deploykit.model import LoadOptions
from deploykit.options import ROUTES, QuantizeOptions, VerifyOptions, check_choice, refuse_unknown_keys

OPSETS = (7, 23)       # the ONNX opsets the exporters write
# --to ort: ONNX Runtime's optimisation styles and target platforms; the first of each is the default (fixed: the
# graph is optimised once, when converted; arm: phones — amd64 lets x86-only NCHWc kernels in).
ORT_STYLES = ("fixed", "runtime")
ORT_PLATFORMS = ("arm", "amd64")
_LOAD_KEYS = ("weights", "trust_pickle", "inputs", "timeout")          # LoadOptions.to_dict()
_CONTRACT_KEYS = ("labels_file", "labels", "normalize", "task")


@dataclass(frozen=True)
class ExportRequest:
    """Everything `export` is asked for: convert ``source`` to ``to``, write ``output``, with these options."""

    source: str                          # a model file or folder, or package.module:factory
    to: str = "onnx"                     # onnx, ort, tflite, saved_model, executorch, coreai or coreml
    output: Optional[str] = None         # None: <source name>.<target suffix> in the current directory
    force: bool = False
    load: Optional[LoadOptions] = None   # None: LoadOptions with the verify timeout (set on construction)
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    opset: Optional[int] = None
    dynamic_batch: bool = False
    optimize: bool = True
    via: Optional[str] = None
    route: str = "first"                 # first, or all: build and verify every route, keep the best
    keep_layout: bool = False
    quantize: Optional[QuantizeOptions] = None
    report: Optional[str] = None         # with --quantize all: the folder for precisions.html
    debug: bool = False
    contract: Optional[ContractChoices] = None     # --labels / --normalize / --task, recorded in the manifest
    keep_unverified: bool = False        # keep an artifact whose parity cannot tell, marked unverified (exit 6)
    llm: Optional[LLMOptions] = None     # a causal-LM source: context, prompts, greedy tokens (None: defaults)
    ort_style: Optional[str] = None      # --to ort: fixed or runtime (None: ORT_STYLES[0])
    ort_platform: Optional[str] = None   # --to ort: arm or amd64 (None: ORT_PLATFORMS[0])

    def __post_init__(self) -> None:
        for name in ("source", "output", "report"):     # a pathlib.Path is as good as its text
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if self.load is None:       # a source loads within the time its checks may take
            object.__setattr__(self, "load", LoadOptions(timeout=self.verify.timeout))
        self.target          # noqa: B018 - an unknown --to is refused first, as the command line does
        check_choice(self.route, ROUTES, "--route")
        if self.opset is not None and not OPSETS[0] <= self.opset <= OPSETS[1]:
            raise UsageError(f"--opset {self.opset} is outside the opsets the exporters write "
                             f"({OPSETS[0]}..{OPSETS[1]})",
                             "e.g. --opset 17, or leave it out for the exporter's default")
        self._check_ort()
        if self.report and not self.all_precisions:
            raise UsageError("--report on export needs --quantize all",
                             "add --quantize all, or use `deploykit bench SOURCE ARTIFACT --report DIR`")

    def _check_ort(self) -> None:
        """--ort-style / --ort-platform: one of their choices, and only for --to ort."""
        for value, choices, flag in ((self.ort_style, ORT_STYLES, "--ort-style"),
                                     (self.ort_platform, ORT_PLATFORMS, "--ort-platform")):
            if value is None:
                continue
            check_choice(value, choices, flag)
            if self.target != Format.ORT:
                raise UsageError(f"{flag} is only for --to ort (this export is --to {self.to})",
                                 f"drop {flag}, or export --to ort")

    @property
    def ort_settings(self) -> dict:
        """How a --to ort export optimises: {"style": fixed|runtime, "platform": arm|amd64}, defaults filled in."""
        return {"style": self.ort_style or ORT_STYLES[0], "platform": self.ort_platform or ORT_PLATFORMS[0]}

    @property
    def target(self) -> Format:
        """The target format ``to`` names."""
        return registry.target_format(self.to)

    @property
    def mode(self) -> Optional[str]:
        """The --quantize mode (fp16, dynamic, int8, all), or None for a float export."""
        return self.quantize.mode if self.quantize else None

    @property
    def all_precisions(self) -> bool:
        """``--quantize all``: one artifact per precision and their comparison table."""
        return self.mode == "all"

    def to_dict(self) -> dict:
        """The request as JSON-able data (nested options as their own dicts)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(load=self.load.to_dict(), verify=self.verify.to_dict(),
                    quantize=self.quantize.to_dict() if self.quantize else None,
                    contract=_contract_dict(self.contract) if self.contract else None,
                    llm=dict(vars(self.llm)) if self.llm else None)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ExportRequest":
        """The request ``to_dict`` wrote; an unknown key (here or in a nested option) is a UsageError naming it."""
        refuse_unknown_keys(data, [f.name for f in fields(cls)], "export request")
        if "source" not in data:
            raise UsageError("the export request has no 'source'", "give the model to export as source")
        values = dict(data)
        if values.get("load") is not None:
            refuse_unknown_keys(values["load"], _LOAD_KEYS, "LoadOptions")
            values["load"] = LoadOptions.from_dict(values["load"])
        if values.get("verify") is not None:
            values["verify"] = VerifyOptions.from_dict(values["verify"])
        if values.get("quantize") is not None:
            values["quantize"] = QuantizeOptions.from_dict(values["quantize"])
        if values.get("contract") is not None:
            values["contract"] = _contract_from(values["contract"])
        if values.get("llm") is not None:
            refuse_unknown_keys(values["llm"], list(LLMOptions.__dataclass_fields__), "LLMOptions")
            values["llm"] = LLMOptions(**values["llm"])
        return cls(**values)


def _contract_dict(choices: ContractChoices) -> dict:
    """ContractChoices in full (its own to_dict is the manifest's record, which leaves out the labels file)."""
    return {"labels_file": choices.labels_file, "labels": list(choices.labels) if choices.labels else None,
            "normalize": choices.normalize, "task": choices.task}


def _contract_from(data: dict) -> ContractChoices:
    refuse_unknown_keys(data, _CONTRACT_KEYS, "ContractChoices")
    labels = data.get("labels")
    # The labels travel with the request: a child (a matrix cell on another node) need not read the file again.
    return ContractChoices(data.get("labels_file"), data.get("normalize"), data.get("task"),
                           labels=tuple(labels) if labels else None)


def export_defaults() -> SimpleNamespace:
    """Every ExportRequest default by field name (``export_defaults().route == "first"``): what the API's keyword
    arguments and the CLI's flags default to, read from the one place they are declared."""
    return SimpleNamespace(**{f.name: option_default(ExportRequest, f.name) for f in fields(ExportRequest)})


def option_default(cls, name: str):
    """The default of one field of an option dataclass (QuantizeOptions, VerifyOptions, ...), for a CLI flag."""
    found = cls.__dataclass_fields__[name]
    return found.default_factory() if callable(found.default_factory) else found.default
