"""The Python API. The CLI is a thin layer over these functions: each command calls exactly one.

    import deploykit
    result = deploykit.export("model.pt2", to="tflite", output="model.tflite")
    report = deploykit.verify("model.pt2", ["model.tflite"])
    timings = deploykit.bench(["model.pt2", "model.tflite"], deploykit.BenchOptions(threads=(1, 2)))

Every option is validated here or in its option object's constructor, so a bad value from
Python raises the same UsageError (exit 2) as the same value given on the command line.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

from deploykit import registry
from deploykit.benchmark.cases import BenchOptions
from deploykit.errors import UsageError
from deploykit.model import LoadOptions
from deploykit.causal_lm import LLMOptions, llm_options_for
from deploykit.child import check_timeout
from deploykit.options import QuantizeOptions, VerifyOptions
from deploykit.request import ExportRequest, export_defaults

__all__ = ["export", "verify", "verify_bundle", "package", "bench", "inspect", "readiness", "doctor", "report", "samples", "build_samples", "demo",
           "load_options", "ExportRequest", "VerifyOptions", "QuantizeOptions", "LoadOptions", "LLMOptions",
           "BenchOptions"]

_D = export_defaults()       # export()'s defaults are ExportRequest's fields, declared there once
_L = LoadOptions()           # load_options()'s are LoadOptions's


def load_options(inputs: Sequence[str] = (), weights: Optional[str] = _L.weights, trust_pickle: bool = _L.trust_pickle,
                 timeout: float = _L.timeout) -> LoadOptions:
    """LoadOptions from command-line style values: ``--input NAME:DIMS[:DTYPE[:LOW..HIGH]]`` or ``NAME:DIMS:DTYPE=VALUE`` texts, weights path."""
    from deploykit.spec import parse_input_arg

    specs = []
    for text in inputs:
        try:
            specs.append(parse_input_arg(text))
        except ValueError as exc:
            raise UsageError(str(exc), "fix the --input value") from None
    if weights:
        from deploykit.fsutil import require_regular_file

        require_regular_file(weights, "weights file", "check the --weights path")
    check_timeout(timeout)
    return LoadOptions(weights=weights, trust_pickle=trust_pickle, input_specs=tuple(specs), timeout=timeout)


def export(source: "str | ExportRequest", to: str = _D.to, output: Optional[str] = _D.output, *,
           force: bool = _D.force, load: Optional[LoadOptions] = _D.load, verify: VerifyOptions = _D.verify,
           opset: Optional[int] = _D.opset, dynamic_batch: bool = _D.dynamic_batch, optimize: bool = _D.optimize,
           via: Optional[str] = _D.via, route: str = _D.route, keep_layout: bool = _D.keep_layout,
           quantize: Optional[QuantizeOptions] = _D.quantize, report: Optional[str] = _D.report,
           debug: bool = _D.debug, contract=_D.contract, keep_unverified: bool = _D.keep_unverified,
           llm: Optional[LLMOptions] = _D.llm, ort_style: Optional[str] = _D.ort_style,
           ort_platform: Optional[str] = _D.ort_platform):
    """Convert ``source`` to ``to`` (onnx, ort, tflite, saved_model, executorch, coreai, coreml), verify it against
    the source, write the artifact and its manifest. Returns an ExportResult (``.passed``, ``.artifact``,
    ``.to_dict()``).

    Routes (chains of converter edges) are tried in the registry's order and the first whose
    artifact matches the source is kept; ``via`` restricts them to those through a format or tool;
    ``route="all"`` builds and verifies every route and keeps the best (parity, then 1-thread
    latency). ``quantize=QuantizeOptions("int8", calibration=...)`` quantizes; mode ``"all"`` builds
    every precision and returns their comparison table (``report`` = folder for precisions.html).
    ``contract=ContractChoices(labels_file=, normalize=, task=)`` records what the model's inputs and outputs
    mean in the manifest's contract (`package` builds on it). Raises ConversionError (exit 4) when no route gives
    an artifact that matches. ``keep_unverified`` keeps an artifact whose parity cannot tell (the source's output
    does not depend on its input), marked ``unverified`` in the result and the manifest (CLI exit 6).

    A causal LM source (a Hugging Face folder or a GGUF file) becomes a cached decoder judged by the generation
    oracle; ``llm`` (LLMOptions: context, prefill length, prompts, tokens, text) shapes it — see docs/llm.md.

    ``to="ort"`` writes ONNX Runtime Mobile's ORT format with its required-operators config beside it;
    ``ort_style`` ("fixed", default, or "runtime") and ``ort_platform`` ("arm", default, or "amd64") choose how
    ONNX Runtime optimises it (docs/export.md).

    ``source`` may also be an ExportRequest holding all of these (``export(request)``); the other arguments
    must then be left out.
    """
    given = dict(to=to, output=output, force=force, load=load, verify=verify, opset=opset,
                 dynamic_batch=dynamic_batch, optimize=optimize, via=via, route=route, keep_layout=keep_layout,
                 quantize=quantize, report=report, debug=debug, contract=contract, keep_unverified=keep_unverified,
                 llm=llm, ort_style=ort_style, ort_platform=ort_platform)
    if isinstance(source, ExportRequest):
        mixed = sorted(name for name, value in given.items() if value is not getattr(_D, name)
                       and value != getattr(_D, name))
        if mixed:
            raise UsageError(f"export() got an ExportRequest and {mixed[0]}=",
                             "put every option into the ExportRequest, or pass the source as a string")
        request = source
    else:
        request = ExportRequest(source, **given)
    from deploykit.llm.flow import export_request, is_causal_lm

    if is_causal_lm(request.source):
        return export_request(request)
    if request.llm is not None:
        raise UsageError("--max-context, --prefill-len, --prompts, --tokens and --text apply to causal LM sources "
                         "(a Hugging Face folder or a GGUF file)", "leave them out for this model")
    if request.all_precisions:
        from deploykit.exporting.precisions import export_all_precisions

        return _Table(export_all_precisions(request))
    from deploykit.exporting.pipeline import export_model

    return export_model(request)


class _Table(dict):
    """The `--quantize all` table, with the same `.passed` / `.to_dict()` as an ExportResult."""

    @property
    def passed(self) -> bool:
        return bool(self.get("passed"))

    def to_dict(self) -> dict:
        return dict(self)


def verify(source: str, artifacts: Sequence[str], *, load: Optional[LoadOptions] = None,
           options: VerifyOptions = VerifyOptions(), report_dir: Optional[str] = None, force: bool = False,
           llm: Optional[LLMOptions] = None):
    """Compare every artifact against the source, and each against the previous one, on the same inputs.

    Returns a VerifyResult (``.passed``, ``.reports``, ``.locations``, ``.to_dict()``); recorded layouts are
    applied. ``options.locate`` also compares layer by layer (``.locations``); ``report_dir`` then gets
    locate.html with the error along depth plotted. An emulated ARM runtime in ``options.runtimes``
    (``litert-arm64``, ``onnxruntime-arm64``) runs on ``options.arm_cpu`` beside its x86 runtime, and the report
    compares the two.

    When ``source`` is a causal LM (a Hugging Face folder or a GGUF file), each artifact is judged by the generation
    oracle instead (``deploykit.llm``: prefill logits, each cached decode step, greedy tokens, perplexity), with
    ``llm`` (prompts, tokens, text; default LLMOptions()) and ``options.runtimes[0]`` as the runtime when given.
    """
    from deploykit.llm.flow import is_causal_lm

    if is_causal_lm(source):
        from dataclasses import replace as _with

        from deploykit.llm.flow import verify as verify_llm

        llm = _with(llm or llm_options_for(options.timeout, VerifyOptions.timeout),
                    runtime=options.runtimes[0] if options.runtimes else None)
        return verify_llm(source, list(artifacts), llm)
    from deploykit.checking.arm import check_arm_cpu
    from deploykit.checking.checker import verify_artifacts

    check_arm_cpu(options.arm_cpu, options.runtimes)      # before minutes of running, not after
    if report_dir:      # refused before minutes of running, not after
        from pathlib import Path

        from deploykit import fsutil

        if not options.locate:
            raise UsageError("--report on verify draws the --locate layer tables", "add --locate")
        registry.require(("matplotlib",), "needed to draw the report's plots")
        for name in ("locate.html", "locate.json", "locate.png"):
            fsutil.prepare_output(Path(report_dir) / name, force)
    if not artifacts:
        from deploykit.bundle.packaging import is_bundle

        if is_bundle(source):
            return verify_bundle(source, timeout=options.timeout, runtimes=options.runtimes, arm_cpu=options.arm_cpu)
    result = verify_artifacts(source, list(artifacts), load or LoadOptions(timeout=options.timeout), options)
    if report_dir:
        from deploykit.checking.locate_report import build_locate_report

        result.report = build_locate_report(result.to_dict(), report_dir, force)
    return result


def verify_bundle(folder: str, timeout: float = 600.0, runtimes: Sequence[str] = (), arm_cpu: Optional[str] = None):
    """A bundle's model against its golden vectors (and its files against their recorded sha256): what
    ``python app.py selftest`` does on the device, here on deploykit's runner. Each of ``runtimes`` gives a report
    of its own; an emulated ARM one (``litert-arm64``, ``onnxruntime-arm64``, on core ``arm_cpu``) runs the
    bundle's own ``app.py selftest`` in the arm64 userland with only its requirements. Returns a VerifyResult."""
    import time

    from deploykit.checking.checker import VerifyResult
    from deploykit.bundle.packaging import BUNDLE_FILE, is_bundle
    from deploykit.bundle.packaging import verify_bundle as check

    check_timeout(timeout)
    _check_bundle_runtimes(tuple(runtimes), arm_cpu)
    if not is_bundle(folder):
        raise UsageError(f"{folder} is not a deploykit bundle (no {BUNDLE_FILE} in it)",
                         "give the folder that `deploykit package` wrote")
    started = time.perf_counter()
    from deploykit.llm.bundle_verify import is_llm_bundle, verify as verify_llm_bundle

    if is_llm_bundle(folder):       # a text-generation bundle: its golden tokens, on its own runtime
        return VerifyResult(folder, [verify_llm_bundle(folder, timeout, tuple(runtimes))],
                            time.perf_counter() - started)
    reports = [check(folder, timeout, runtime, arm_cpu) for runtime in tuple(runtimes) or (None,)]
    return VerifyResult(folder, reports, time.perf_counter() - started)


def _check_bundle_runtimes(runtimes: tuple, arm_cpu: Optional[str]) -> None:
    """Unknown runtimes and cores are refused before anything runs; a core needs an emulated runtime."""
    unknown = [name for name in runtimes if registry.runtime_entry(name) is None]
    if unknown:
        raise UsageError(f"unknown --runtime {unknown[0]!r}", f"use one of {', '.join(e.name for e in registry.RUNTIMES)}")
    if arm_cpu is not None:
        if not set(runtimes) & set(registry.EMULATED_RUNTIMES):
            raise UsageError("--arm-cpu picks the core of an emulated ARM runtime, and none is asked for",
                             f"add --runtime {' or --runtime '.join(registry.EMULATED_RUNTIMES)}")
        from deploykit.emulation.cores import core

        core(arm_cpu)


def package(artifact: str, output: str, options=None, *, force: bool = False) -> dict:
    """Bundle ``artifact`` for a device app into the folder ``output``: the model with its contract in its
    metadata (ONNX), contract.json, labels, golden vectors from the source, and a runtime-only app.py whose
    ``selftest`` proves the model on the device. ``options`` is a PackageOptions (labels, normalize, task,
    samples, source). Returns the bundle's description (files, bytes, contract, runtime requirements)."""
    from deploykit.bundle.packaging import PackageOptions, package as write_bundle
    from deploykit.llm.bundle import is_llm_artifact, package as write_llm_bundle

    if is_llm_artifact(artifact):   # a cached decoder: a text-generation bundle (deploykit.llm.bundle)
        return write_llm_bundle(artifact, output, options or PackageOptions(), force=force)
    return write_bundle(artifact, output, options or PackageOptions(), force=force)


def bench(models: Sequence[str], options=None, *, load: Optional[LoadOptions] = None, report_dir: Optional[str] = None,
          force: bool = False, echo=None, llm: Optional[LLMOptions] = None, prompt_tokens: Optional[int] = None) -> dict:
    """Benchmark each model on each runtime that runs it (one child process per case).

    With ``report_dir`` also write the research-vs-production report; when the first model is a
    framework source and others follow, their parity against it fills the report's parity table.

    When the first model is a causal LM (a Hugging Face folder or a GGUF file), the others are its cached-decoder
    artifacts: each row gives time to first token for a ``prompt_tokens`` prompt (default 64), decode tokens/s over
    ``llm.tokens`` tokens beside the memory-bandwidth bound, peak memory, size and cold start; ``options.iterations``
    then counts timed generations (3 unless set).
    """
    from deploykit.benchmark.cases import bench as run_bench

    if not models:
        raise UsageError("no model to benchmark", "give one or more model files")
    options = options or BenchOptions()
    from deploykit.llm.flow import is_causal_lm

    if is_causal_lm(models[0]):
        from deploykit.llm import speed

        if report_dir:
            raise UsageError("--report draws image-model benchmarks; a causal LM's table is printed and in --json",
                             "leave --report out")
        repeats = speed.DEFAULT_REPEATS if options.iterations == BenchOptions().iterations else options.iterations
        return speed.bench(list(models), options, llm or llm_options_for(options.timeout, BenchOptions.timeout),
                           prompt_tokens or speed.DEFAULT_PROMPT_TOKENS, repeats, echo)
    if llm is not None or prompt_tokens is not None:
        raise UsageError("--tokens and --prompt-tokens apply when the first model is a causal LM",
                         "leave them out for this model")
    if report_dir:   # fail before minutes of measuring, not after
        registry.require(("matplotlib",), "needed to draw the report's plots")
    load_payload = None
    if load and (load.weights or load.input_specs):
        load_payload = replace(load, timeout=options.timeout).to_dict()
    result = run_bench(list(models), options, load_payload, echo)
    if report_dir:
        result["report"] = _write_report(result, report_dir, _parity_for_report(list(models), load), force)
    return result


def _parity_for_report(models: list, load: Optional[LoadOptions]):
    from deploykit.formats import detect

    if len(models) < 2 or detect(models[0]).framework not in ("torch", "tensorflow"):
        return None
    return verify(models[0], models[1:], load=load).to_dict()


def _write_report(result: dict, report_dir: str, parity, force: bool) -> dict:
    from deploykit.benchmark.report import build_report

    return build_report(result, report_dir, parity=parity, force=force)


def report(bench_json: str, output: str = "deploykit-report", parity_json: Optional[str] = None,
           force: bool = False) -> dict:
    """Write the research-vs-production report from a `bench --json` file (and a `verify --json` file)."""
    data = _read_json(bench_json, "cases")
    comparisons = _read_json(parity_json, "comparisons") if parity_json else data.get("parity")
    return _write_report(data, output, comparisons, force)


def _read_json(path: str, key: str) -> dict:
    import json

    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", "give the JSON written by --json") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not JSON ({exc})", "give the JSON written by --json") from None
    if not isinstance(data, dict) or key not in data:
        raise UsageError(f"{path} has no {key!r}: not the expected deploykit result", "give the JSON written by --json")
    return data


def readiness(artifact: str, load: Optional[LoadOptions] = None):
    """Which accelerator takes ``artifact`` and which operators its runtime must ship: a
    ``deploykit.readiness.Readiness`` (one ``Coverage`` table per delegate or execution provider, the rewrites
    deploykit checked, the operator bill of materials; ``to_dict()`` is what ``inspect --readiness --json`` writes).
    ``load.input_specs`` pin dynamic dims first. Example: ``api.readiness("model.tflite").table("GPU delegate")``."""
    from deploykit.readiness import readiness as compute

    return compute(artifact, load or LoadOptions())


def inspect(model: str, load: Optional[LoadOptions] = None) -> dict:
    """Signature, parameter count, op histogram, size and hash of a model file (and its manifest's route)."""
    from deploykit.introspect import inspect_model

    return inspect_model(model, load or LoadOptions())


def doctor() -> dict:
    """Library versions, GPU, and which routes and runtimes this install supports (imports no framework)."""
    from deploykit.introspect import doctor as run_doctor

    return run_doctor()


def samples() -> list:
    """The sample models: name, factory, description, whether torch.export can capture it."""
    from sample_models import SAMPLES

    return [{"name": s.name, "factory": s.factory, "description": s.description, "exportable": s.exportable}
            for s in SAMPLES]


def build_samples(output: str = "samples", only: Sequence[str] = (), force: bool = False) -> list:
    """Build the sample models (trained from fixed seeds) and write them as files into ``output``."""
    from sample_models import SAMPLES

    unknown = set(only) - {s.name for s in SAMPLES}
    if unknown:
        raise UsageError(f"unknown sample(s) {', '.join(sorted(unknown))}", "see `deploykit samples list` for the names")
    registry.require(("torch",), "needed to build the sample models")
    from sample_models.build import build_samples as build

    return build(output, tuple(only), force)


def demo(output: str = "deploykit-demo", echo: bool = True, debug: bool = False) -> dict:
    """The main job end to end on bundled samples: build, export to ONNX and TFLite, verify the chain, inspect."""
    from deploykit.demo.run import run_demo

    return run_demo(output, echo=echo, debug=debug)
