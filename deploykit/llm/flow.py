"""export and verify for causal LMs: convert the source into a cached decoder, prove it with the generation oracle,
publish it with its manifest and tokenizer.

The API routes here when the source is a Hugging Face causal-LM folder or a GGUF file (``formats.LLM_FORMATS``).
The source runs once per command in the reused child (``deploykit.llm.jobs.source_reference``); each artifact runs
in a child of its own on its runtime (``artifact_run``); ``deploykit.llm.oracle`` judges.

The default prompts (``data/prompts.txt``) are general English and code openings; the default perplexity text
(``data/perplexity.txt``) joins four public-domain passages: Dickens, *A Tale of Two Cities* (1859); the Preamble
of the U.S. Constitution (1787); Lincoln's Second Inaugural Address (1865); Melville, *Moby-Dick* (1851).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from deploykit import causal_lm, child, fsutil, manifest, registry
from deploykit.causal_lm import DecoderContract, LLMOptions
from deploykit.errors import ConversionError, ModelLoadError, UsageError
from deploykit.exporting.routing import FORBID_ENV
from deploykit.formats import Format, detect
from deploykit.llm import oracle

DATA = Path(__file__).with_name("data")
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 4000
MAX_TEXT_BYTES = 1 << 20
SUFFIXES = {Format.ONNX: ".onnx", Format.TFLITE: ".tflite", Format.EXECUTORCH: ".pte"}


def read_prompts(path: Optional[str]) -> list:
    """The prompts, one per non-empty line (default: the bundled set)."""
    text = read_text(path or DATA / "prompts.txt", "--prompts", MAX_TEXT_BYTES)
    prompts = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not prompts:
        raise UsageError(f"{path}: no prompt in the file", "write one prompt per line")
    if len(prompts) > MAX_PROMPTS or any(len(p) > MAX_PROMPT_CHARS for p in prompts):
        raise UsageError(f"{path}: more than {MAX_PROMPTS} prompts or a prompt over {MAX_PROMPT_CHARS} characters",
                         "give fewer, shorter prompts")
    return prompts


def read_text(path, option: str, limit: int) -> str:
    p = fsutil.require_regular_file(path, f"{option} file", f"check the {option} path")
    if p.stat().st_size > limit:
        raise UsageError(f"{p} is larger than {limit >> 10} KiB", f"give a smaller {option} file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{p} is not UTF-8 text", f"give a UTF-8 {option} file") from None


def is_causal_lm(path: str) -> bool:
    """Whether ``path`` is a causal-LM source (a Hugging Face folder or a GGUF file), by the same content rules as
    ``formats.detect`` but without calling it: an export reads its source's format once, in its own pipeline."""
    try:
        return causal_lm.is_hf_folder(path) or causal_lm.is_gguf(path)
    except (OSError, ValueError):      # an unreadable path is reported by the normal flow
        return False


def reference(source: str, options: LLMOptions, prompts: list, context: int,
              perplexity: bool = True) -> child.ChildResult:
    """The source's side of the oracle, in the command's reused child (the model loads once per command);
    ``context``: the shortest context of the artifacts it is compared with (perplexity windows fit in it);
    ``perplexity=False`` skips the text's NLL (a bundle's golden data needs only tokens and logits)."""
    registry.require(("torch", "transformers", "tokenizers"), "running a causal LM source")
    text = read_text(options.text or DATA / "perplexity.txt", "--text", MAX_TEXT_BYTES) if perplexity else ""
    request = {"source": str(source), "prompts": prompts, "tokens": options.tokens, "text": text,
               "max_context": context}
    return child.run_child("deploykit.llm.jobs:source_reference", request, stage=child.LOAD, what=str(source),
                           timeout=options.timeout, reuse=True)


def judge_artifact(source: str, artifact: str, contract: DecoderContract, ref: child.ChildResult,
                   options: LLMOptions, prompts: list, runtime: Optional[str] = None) -> oracle.OracleReport:
    """Run ``artifact`` through its runtime's cache and judge it against ``ref`` (the source's side)."""
    fmt = detect(artifact)
    entry = registry.runtime_for(fmt, runtime or options.runtime)
    if not entry.decoder:
        raise UsageError(f"the {entry.name} runtime cannot drive a cached decoder",
                         f"runtimes that can: {', '.join(e.name for e in registry.RUNTIMES if e.decoder)}")
    problem = registry.runtime_problem(entry, f"running {Path(artifact).name}")
    if problem:
        raise problem
    _check_fits(contract, ref, options.tokens, artifact)
    request = {"artifact": str(artifact), "runtime": entry.name, "contract": contract.to_dict(),
               "prompt_ids": ref.info["prompt_ids"], "windows": ref.info["windows"], "tokens": options.tokens,
               "threads": options.threads}
    greedy = {k: v for k, v in ref.arrays.items() if k.startswith("greedy_")}
    got = child.run_child("deploykit.llm.jobs:artifact_run", request, arrays=greedy, stage=child.RUN,
                          what=Path(artifact).name, timeout=options.timeout)
    decode = _decoder(ref.info["tokenizer_json"])
    report = oracle.judge(ref.arrays, got.arrays, prompts=prompts, prompt_ids=ref.info["prompt_ids"],
                          judge_=oracle.judge_for(contract.quantization), decode=decode,
                          names=(str(source), str(artifact), entry.name), tokens=options.tokens)
    report.notes.append("entry points: " + ", ".join(f"{k} {'any length' if v is None else f'{v} token(s)'}"
                                                       for k, v in got.info.get("entries", {}).items()))
    return report


def _decoder(tokenizer_json: str):
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    return lambda ids: tokenizer.decode([int(t) for t in ids], skip_special_tokens=False)


def _check_fits(contract: DecoderContract, ref: child.ChildResult, tokens: int, artifact: str) -> None:
    info = ref.info
    vocab = ref.arrays["prefill_0"].shape[-1]
    if contract.vocab != vocab or contract.family != info["family"]:
        raise UsageError(f"{Path(artifact).name} is a {contract.family} decoder over {contract.vocab} tokens but the "
                         f"source is a {info['family']} model over {vocab}",
                         "verify the artifact against the model it was exported from")
    longest = max(len(ids) for ids in info["prompt_ids"])
    if longest + tokens > contract.max_context:
        raise UsageError(f"a prompt of {longest} tokens plus --tokens {tokens} needs {longest + tokens} positions, but "
                         f"{Path(artifact).name} was exported with a context of {contract.max_context}",
                         f"shorten the prompts, lower --tokens, or re-export with --max-context {longest + tokens}")


def contract_for_artifact(artifact: str) -> DecoderContract:
    """The contract recorded in the artifact's manifest; an artifact without one is no cached decoder we know."""
    contract = causal_lm.contract_of(manifest.read(artifact))
    if contract is None:
        raise ModelLoadError(f"{artifact} has no deploykit manifest saying it is a cached decoder (no causal_lm "
                             f"section in {manifest.manifest_path(artifact).name})",
                             "export it with deploykit export SOURCE --to onnx|tflite|executorch and keep the "
                             ".deploykit.json beside it")
    return contract


@dataclass
class LLMVerifyResult:
    reports: list

    @property
    def passed(self) -> bool:
        return bool(self.reports) and all(r.passed for r in self.reports)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "kind": "causal_lm", "reports": [r.to_dict() for r in self.reports]}


def verify(source: str, artifacts, options: LLMOptions) -> LLMVerifyResult:
    """Judge every artifact against the source with the generation oracle (one report each)."""
    if not artifacts:
        raise UsageError("no artifact to verify", "give the exported artifact(s) after the source")
    prompts = read_prompts(options.prompts)
    contracts = [(str(a), contract_for_artifact(str(a))) for a in artifacts]
    ref = reference(source, options, prompts, min(c.max_context for _a, c in contracts))
    return LLMVerifyResult([judge_artifact(source, a, c, ref, options, prompts) for a, c in contracts])


@dataclass
class LLMExportResult:
    artifact: str
    contract: DecoderContract
    report: oracle.OracleReport
    notes: list
    published: bool

    @property
    def passed(self) -> bool:
        return self.report.passed

    def to_dict(self) -> dict:
        return {"passed": self.passed, "kind": "causal_lm", "artifact": self.artifact if self.published else None,
                "contract": self.contract.to_dict(), "notes": self.notes, "report": self.report.to_dict()}


def export(source: str, to: str, output: Optional[str], *, options: LLMOptions, quantize: Optional[str] = None,
           force: bool = False, debug: bool = False, fault: str = "") -> LLMExportResult:
    """Convert a causal LM into a cached decoder for ``to``, judge it with the oracle on its runtime, and publish it
    (artifact, ``.deploykit.json`` manifest, ``.tokenizer.json``) only when it passes. ``fault`` plants a defect
    (``deploykit.transforms.cached_decoder.FAULTS``) for the oracle's own tests; no command reaches it."""
    fmt = detect(source)
    info = causal_lm.read_source(source)
    dst = registry.target_format(to)
    edge = next((e for e in registry.EDGES if fmt in e.src and e.dst == dst), None)
    if edge is None:
        targets = sorted(k for k, v in registry.TARGETS.items() if v in SUFFIXES)
        raise UsageError(f"deploykit exports causal LMs to {', '.join(targets)}, not {to}", "choose one of those with --to")
    mode = quantize or "fp32"
    if mode != "fp32" and mode not in edge.quantizes:
        raise UsageError(f"--quantize {mode} is not offered for a causal LM to {to}",
                         f"use {' or '.join(edge.quantizes)} (or leave --quantize out for fp32)")
    options = replace(options, max_context=causal_lm.context_for(options.max_context, info))
    options = replace(options, prefill_len=min(options.prefill_len, options.max_context))
    causal_lm.check_context(options.max_context, options.prefill_len, info)
    registry.require(edge.requires, f"exporting a causal LM to {to}")
    out = fsutil.prepare_output(output or _default_output(source, dst, mode), force)
    prompts = read_prompts(options.prompts)
    with fsutil.parents_removed_on_failure(out), fsutil.staging_dir(out.parent) as stage:
        staged = stage / out.name
        request = {"source": str(source), "output": str(staged), "max_context": options.max_context,
                   "prefill_len": options.prefill_len, "quantize": mode, "fault": fault}
        if os.environ.get(FORBID_ENV):
            raise AssertionError("this test converts a model: mark it `slow` (the quick loop never converts)")
        ref = reference(source, options, prompts, options.max_context)
        made = child.run_child(edge.target, request, stage=child.CONVERT, what=edge.name, timeout=options.timeout,
                               debug=debug)
        contract = DecoderContract.from_dict(made.info["contract"])
        report = judge_artifact(source, str(staged), contract, ref, options, prompts)
        result = LLMExportResult(str(out), contract, report, list(made.info.get("notes", [])), False)
        if not report.passed:
            return result
        _publish(source, fmt, edge, staged, out, contract, report, result.notes, ref, made, force)
        result.published = True
        return result


def _default_output(source: str, dst: Format, mode: str) -> Path:
    p = Path(source)
    stem = p.name if p.is_dir() else p.stem
    return p.parent / f"{stem}{'' if mode == 'fp32' else '.' + mode}{SUFFIXES[dst]}"


def _publish(source, fmt, edge, staged: Path, out: Path, contract, report, notes, ref, made, force: bool) -> None:
    tokenizer = staged.with_name(staged.name + causal_lm.TOKENIZER_SUFFIX)
    fsutil.write_text_atomic(tokenizer, ref.info["tokenizer_json"])
    extra = [staged.with_name(name) for name in made.info.get("files", [])]
    for path in extra:
        if not fsutil.plain_relative(path.name) or not path.is_file():
            raise ConversionError(f"the converter named a side file {path.name!r} it did not write",
                                  "run with --debug and report it")
    record = {
        "schema_version": manifest.SCHEMA_VERSION, "kind": "causal_lm",
        "artifact": {**manifest.file_entry(staged), "format": edge.dst.value,
                     "extra_files": [manifest.file_entry(f) for f in [tokenizer, *extra]]},
        "source": {"path": str(Path(source).absolute()), "format": fmt.value, "sha256": fsutil.sha256_of(source)},
        "route": [{"edge": edge.name, "tool": edge.tag}], "signature": {}, "layout": {},
        "precision": contract.quantization, "causal_lm": contract.to_dict(),
        "parity": {"passed": report.passed, "summary": report.summary(), "stages": report.stages,
                   "perplexity": report.perplexity, "runtime": report.runtime, "tokens": report.tokens},
        "warnings": notes, "versions": manifest.library_versions(registry.tracked_distributions()),
    }
    side = staged.with_name(manifest.manifest_path(staged).name)
    fsutil.write_text_atomic(side, manifest.dumps(record))
    moves = [(f, out.with_name(out.name + f.name[len(staged.name):]) if f.name.startswith(staged.name)
              else out.with_name(f.name)) for f in [tokenizer, *extra, side]]
    fsutil.publish(moves + [(staged, out)], force=force)


# ExportRequest fields that mean nothing for a causal LM: refused rather than silently ignored.
_NOT_FOR_LLM = {"opset": "--opset", "via": "--via", "keep_layout": "--keep-layout", "report": "--report",
                "contract": "--labels/--normalize/--task", "keep_unverified": "--keep-unverified",
                "dynamic_batch": "--dynamic-batch"}


def export_request(request) -> LLMExportResult:
    """``export`` for an ExportRequest whose source is a causal LM (the API routes it here)."""
    from deploykit.request import export_defaults

    defaults = export_defaults()
    for name, flag in _NOT_FOR_LLM.items():
        if getattr(request, name) not in (getattr(defaults, name), None, False):
            raise UsageError(f"{flag} does not apply to a causal LM export", f"leave {flag} out")
    if request.route != "first" or request.all_precisions:
        raise UsageError("--route all and --quantize all do not apply to a causal LM export",
                         "export one target and one precision at a time")
    from deploykit.options import VerifyOptions

    options = request.llm or causal_lm.llm_options_for(request.verify.timeout, VerifyOptions.timeout)
    return export(request.source, request.to, request.output, options=options, quantize=request.mode,
                  force=request.force, debug=request.debug)
