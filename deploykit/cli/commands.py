"""The `deploykit` command. Each command imports the API lazily and calls one function.

Exit codes: 0 success · 1 verification failed · 2 bad usage or bad input ·
3 missing dependency · 4 conversion failed · 5 internal error (a deploykit bug) ·
6 an artifact kept unverified (--keep-unverified) · 130 interrupted (Ctrl-C) · 143 terminated (SIGTERM).
"""
from __future__ import annotations

import sys
from functools import partial
from typing import List, Optional

import typer
from typing_extensions import Annotated

from deploykit.cli import tools
from deploykit.cli.flags import (ArmCpu, Atol, Debug, Device, Inputs, Json, Labels, Layout, Locate, MaxContext,
                                 Normalize, Npz, OrtPlatform, OrtStyle, PrefillLen, Precision, Prompts, Rtol, Samples,
                                 Seed, Task, Text, Timeout, Tokens, TrustPickle, Weights)
from deploykit.cli.support import (EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, _exit, _lazy, _on_sigterm, _run,
                                   _usage_error_types, printable, terminal_safe)
from deploykit.model import LoadOptions
from deploykit.options import QuantizeOptions, VerifyOptions
from deploykit.causal_lm import LLMOptions
from deploykit.request import export_defaults, option_default

# Flag defaults are the option objects' field defaults: typer needs the values here, they are declared there.
_D = export_defaults()
_q, _v, _l, _m = (partial(option_default, cls) for cls in (QuantizeOptions, VerifyOptions, LoadOptions, LLMOptions))

app = typer.Typer(
    name="deploykit", add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    help="Export PyTorch and Keras models to ONNX, TFLite, SavedModel, ExecuTorch and Apple Core AI / Core ML, "
         "prove the export computes "
         "the same thing (natively and in the browser), and measure what production gains. Exit codes: 0 ok, "
         "1 verification failed, 2 bad usage/input, 3 missing dependency, 4 conversion failed, 5 internal error, "
         "6 kept unverified (--keep-unverified), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).",
)
samples_app = typer.Typer(help="Sample models built in code (the seed's two-layer net, MobileNetV2, ...).",
                          no_args_is_help=True)
app.add_typer(samples_app, name="samples")


def _verify_options(samples, seed, npz, precision, atol, rtol, timeout, **more) -> VerifyOptions:
    """VerifyOptions from the flags every checking command has; ``more`` (device, runtimes, ...) where it has them."""
    return VerifyOptions(samples=samples, seed=seed, inputs_npz=npz, precision=precision, atol=atol, rtol=rtol,
                         timeout=timeout, **more)


def _llm_options(**given) -> "LLMOptions | None":
    """LLMOptions when a causal-LM flag differs from its default (None otherwise: the API's defaults apply)."""
    from deploykit.causal_lm import llm_options_for

    changed = {k: v for k, v in given.items() if k != "timeout" and v != _m(k)}
    timeout = llm_options_for(given["timeout"], _v("timeout")).timeout     # a causal LM's longer default
    return LLMOptions(**changed, timeout=timeout) if changed else None


def _export_exit_code(data: dict) -> int:
    """0 verified; 6 kept with --keep-unverified (parity proves nothing); 1 a failed check."""
    from deploykit.errors import EXIT_CONVERSION_FAILED, EXIT_UNVERIFIED

    if data.get("kind") == "causal_lm" and not data.get("passed"):     # the oracle's table is printed above
        print(printable(f"error: the exported decoder does not generate what the source generates "
                        f"({data['report']['summary']}) — nothing was written; try another target or precision, or "
                        f"`deploykit verify` the source against an artifact you trust"), file=sys.stderr)
        return EXIT_CONVERSION_FAILED
    if data.get("unverified"):
        return EXIT_UNVERIFIED
    return 0 if data.get("passed", True) else 1


@app.command()
def export(
    source: Annotated[str, typer.Argument(help="Model file (TorchScript .pt, torch.export .pt2, Keras .keras/.h5, "
                                               "SavedModel dir, ONNX, TFLite) or package.module:factory.")],
    to: Annotated[str, typer.Option("--to", help="Target format: onnx, ort (ONNX Runtime Mobile's .ort, with its "
                                    "required-operators config beside it), tflite, saved_model, executorch (.pte, "
                                    "XNNPACK-delegated), coreai (Apple Core AI .aimodel, verified on coreai-core's "
                                    "CPU runtime) or coreml (Core ML .mlpackage: static checks only off macOS, "
                                    "needs --keep-unverified); the last three from PyTorch sources.")] = _D.to,
    via: Annotated[Optional[str], typer.Option("--via", help="Only routes through this format or tool, e.g. "
                                               "litert (litert-torch) or onnx (via ONNX + onnx2tf).")] = _D.via,
    route: Annotated[str, typer.Option("--route", help="first: keep the first route whose artifact matches "
                                       "(registry order); all: build and verify every route, keep the best "
                                       "(parity, then 1-thread latency).")] = _D.route,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Artifact path (default: "
                                                  "<source name>.<target suffix> in the current directory).")] = _D.output,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = _D.force,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (default: the exporter's).")] = _D.opset,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Make dim 0 of every input symbolic "
                                                "(verified at a second batch size).")] = _D.dynamic_batch,
    keep_layout: Annotated[bool, typer.Option("--keep-layout", help="Keep the source's input layout (NCHW) at the "
                                              "artifact's boundary where the converter can (onnx2tf); by default "
                                              "the converter's native layout is used and recorded.")] = _D.keep_layout,
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="fp16, dynamic (int8 weights), int8 (full "
                        "integer, calibrated) or all (build each and compare size, latency, agreement).")] = None,
    calibration: Annotated[Optional[str], typer.Option("--calibration", help="Representative data: .npz with one "
                           "array per input (leading sample axis), or a folder of images. int8 calibrates on the "
                           "first --calibration-samples and is judged on the rest; fp16/dynamic are judged on it. "
                           "Without it: random data, with a warning.")] = _q("calibration"),
    calibration_samples: Annotated[int, typer.Option("--calibration-samples", help="How many calibration "
                                   "samples to use.")] = _q("samples"),
    calibration_normalize: Annotated[str, typer.Option("--calibration-normalize", help="Images: unit ([0, 1]), "
                                     "imagenet, symmetric ([-1, 1]) or mean=A,B,C,std=D,E,F (on [0, 1] pixels).")] = _q("normalize"),
    io_dtype: Annotated[str, typer.Option("--io-dtype", help="int8 TFLite: float or int8 inputs/outputs "
                        "(int8 also opens litert-torch's PT2E route for PyTorch programs).")] = _q("io_dtype"),
    repair: Annotated[bool, typer.Option("--repair/--no-repair", help="int8 that fails its preset (ONNX Runtime "
                      "static QDQ, TFLiteConverter full integer): try other calibration methods (ONNX), then quantize "
                      "only the weighted layers, then keep the layers where the error grows most (measured layer by "
                      "layer) in float — at most 10 quantizations after the plain one; the manifest records what "
                      "stayed float.")] = _q("repair"),
    report: Annotated[Optional[str], typer.Option("--report", help="With --quantize all: write precisions.html "
                      "(size, latency and agreement of every precision, plotted) into this folder.")] = _D.report,
    keep_unverified: Annotated[bool, typer.Option("--keep-unverified", help="Keep an artifact whose parity cannot "
                               "tell (the source's output does not depend on its input: random-init weights, say), "
                               "marked unverified in the manifest; exit 6.")] = _D.keep_unverified,
    optimize: Annotated[bool, typer.Option("--optimize/--no-optimize", help="Simplify the graph with onnxslim "
                                           "(kept only if parity still holds).")] = _D.optimize,
    labels: Labels = None, normalize: Normalize = None, task: Task = None,
    inputs: Inputs = None, weights: Weights = _l("weights"), trust_pickle: TrustPickle = _l("trust_pickle"),
    samples: Samples = _v("samples"),
    seed: Seed = _v("seed"), npz: Npz = _v("inputs_npz"), precision: Precision = _v("precision"),
    atol: Atol = _v("atol"), rtol: Rtol = _v("rtol"), timeout: Timeout = _v("timeout"),
    locate: Annotated[bool, typer.Option("--locate", help="When a converted model fails "
                                         "its parity check, also compare it with the source "
                                         "layer by layer and name the first layer outside the "
                                         "preset (as verify --locate does).")] = _v("locate"),
    arm_cpu: Annotated[Optional[str], typer.Option("--arm-cpu", help="Also judge the TFLite or ONNX artifact on "
                       "this emulated ARM core (litert-arm64 / onnxruntime-arm64; provisioned on first use, "
                       "~30 s); the manifest records it. --quantize fp16 is judged on cortex-a76 without it "
                       "whenever the ARM userland is installed (x86 cannot stand in for the phone's fp16).")]
    = _v("arm_cpu"),
    ort_style: OrtStyle = _D.ort_style, ort_platform: OrtPlatform = _D.ort_platform,
    max_context: MaxContext = _m("max_context"), prefill_len: PrefillLen = _m("prefill_len"),
    prompts: Prompts = _m("prompts"), tokens: Tokens = _m("tokens"), text: Text = _m("text"),
    as_json: Json = False, debug: Debug = _D.debug,
) -> None:
    """Convert a model, verify the artifact against the source, write it with a manifest.

    Examples: deploykit export model.pt2 --to onnx -o model.onnx ; deploykit export model.pt2 --to coreai ;
    deploykit export model.pt2 --to tflite --route all ; deploykit export model.keras --to tflite ;
    deploykit export model.pt2 --to executorch --quantize int8 --calibration images/ ;
    deploykit export model.onnx --to ort --ort-style runtime ;
    deploykit export model.pt2 --to tflite --quantize all --calibration images/ -o m.tflite --report precisions/ ;
    causal LMs (a Hugging Face folder or a .gguf): deploykit export SmolLM2.gguf --to onnx --quantize int4
    (a cached decoder judged by the generation oracle; docs/llm.md)
    """
    def action() -> dict:
        from deploykit import api
        from deploykit.contract import ContractChoices
        from deploykit.request import ExportRequest

        plan = QuantizeOptions(mode=quantize, calibration=calibration, samples=calibration_samples,
                               normalize=calibration_normalize, io_dtype=io_dtype, repair=repair) if quantize else None
        request = ExportRequest(
            source, to, output, force=force, load=api.load_options(inputs or (), weights, trust_pickle, timeout),
            verify=_verify_options(samples, seed, npz, precision, atol, rtol, timeout, locate=locate,
                                  arm_cpu=arm_cpu), opset=opset,
            dynamic_batch=dynamic_batch, optimize=optimize, via=via, route=route, keep_layout=keep_layout,
            quantize=plan, report=report, debug=debug,
            contract=ContractChoices(labels, normalize, task) if labels or normalize or task else None,
            keep_unverified=keep_unverified, llm=_llm_options(max_context=max_context, prefill_len=prefill_len,
                                                              prompts=prompts, tokens=tokens, text=text,
                                                              timeout=timeout),
            ort_style=ort_style, ort_platform=ort_platform)
        return api.export(request).to_dict()

    _run(action, as_json, debug, _lazy("print_export"), _export_exit_code)


@app.command()
def verify(
    source: Annotated[str, typer.Argument(help="The reference model (what the artifacts must match).")],
    artifacts: Annotated[Optional[List[str]], typer.Argument(help="One or more artifacts; each is compared with "
                         "the source, and each with the previous one. None when SOURCE is a bundle folder "
                         "(`deploykit package`): its model is checked against its golden vectors.")] = None,
    inputs: Inputs = None, weights: Weights = None, trust_pickle: TrustPickle = False, samples: Samples = _v("samples"),
    seed: Seed = _v("seed"), npz: Npz = _v("inputs_npz"), precision: Precision = _v("precision"),
    atol: Atol = _v("atol"), rtol: Rtol = _v("rtol"), timeout: Timeout = _v("timeout"), device: Device = _v("device"),
    xnnpack: Annotated[bool, typer.Option("--xnnpack/--no-xnnpack", help="Run TFLite artifacts with LiteRT's "
                                          "XNNPACK delegate (default) or with its builtin kernels only.")]
    = _v("xnnpack"),
    runtime: Annotated[Optional[List[str]], typer.Option("--runtime", help="Run each artifact on this runtime "
                       "where it runs the artifact's format (repeatable; each gives its own report): onnxruntime, "
                       "litert, the browser runtimes onnxruntime-web (.onnx) and litert-js (.tflite) in "
                       "headless Chromium, and the emulated ARM runtimes litert-arm64 (.tflite) and "
                       "onnxruntime-arm64 (.onnx), each shown beside its x86 runtime. Core AI assets (.aimodel) "
                       "run on coreai (coreai-core's CPU runtime: a reference, not device time); Core ML packages "
                       "(.mlpackage) on coreml, macOS only. Default: the format's native runtime.")] = None,
    arm_cpu: ArmCpu = _v("arm_cpu"), locate: Locate = _v("locate"), layout: Layout = _v("layout"),
    report: Annotated[Optional[str], typer.Option("--report", help="With --locate: write locate.html (error along "
                      "depth plotted, every layer table), locate.png and locate.json into this folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace report files written before.")] = False,
    prompts: Prompts = _m("prompts"), tokens: Tokens = _m("tokens"), text: Text = _m("text"),
    as_json: Json = False, debug: Debug = False,
) -> None:
    """Numerical parity of artifacts against their source. Exit 0 if all match, 1 if not.

    Every artifact is compared with the source, and each with the previous one (a chain
    report); recorded layout permutations (manifest) are applied. With --locate, also layer by layer.
    Examples: deploykit verify model.pt2 model.onnx model.tflite ; deploykit verify bundle/ ;
    deploykit verify model.pt2 model.onnx model.tflite model.aimodel ;
    deploykit verify model.pt2 model.onnx --runtime onnxruntime --runtime onnxruntime-web ;
    deploykit verify model.pt2 model.tflite --locate ;
    deploykit verify model.pt2 model.tflite --runtime litert-arm64 --arm-cpu cortex-a53 ;
    causal LMs: deploykit verify SmolLM2.gguf SmolLM2.onnx --prompts prompts.txt --tokens 32 (the generation
    oracle: prefill logits, each cached decode step, greedy tokens, perplexity)
    """
    def action() -> dict:
        from deploykit import api

        return api.verify(source, artifacts or (), load=api.load_options(inputs or (), weights, trust_pickle, timeout),
                          options=_verify_options(samples, seed, npz, precision, atol, rtol, timeout, device=device,
                                                  xnnpack=xnnpack, runtimes=tuple(runtime or ()), locate=locate,
                                                  layout=layout, arm_cpu=arm_cpu),
                          report_dir=report, force=force,
                          llm=_llm_options(prompts=prompts, tokens=tokens, text=text, timeout=timeout)).to_dict()

    _run(action, as_json, debug, _lazy("print_verify"), lambda data: 0 if data["passed"] else 1)


@app.command()
def package(
    artifact: Annotated[str, typer.Argument(help="An .onnx, .ort, .tflite, Core AI .aimodel or Core ML .mlpackage "
                                               "artifact (its deploykit manifest names the source that makes the "
                                               "golden vectors).")],
    output: Annotated[str, typer.Option("-o", "--output", help="The bundle folder to write.")],
    app_kind: Annotated[str, typer.Option("--app", help="The app to generate: python (app.py: numpy + the one "
                        "runtime) or web (a static site: onnxruntime-web / LiteRT.js in the browser, a self-test "
                        "page; serve it with `deploykit serve DIR`).")] = "python",
    labels: Labels = None, normalize: Normalize = None, task: Task = None,
    source: Annotated[Optional[str], typer.Option("--source", help="The source model, when the artifact has no "
                                                  "manifest naming it.")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Golden vectors: seeded input samples.")] = 8,
    seed: Seed = 0, npz: Npz = None, timeout: Timeout = 600.0, force: Annotated[bool, typer.Option(
        "--force", help="Replace a bundle folder deploykit wrote before.")] = False,
    keep_unverified: Annotated[bool, typer.Option("--keep-unverified", help="Write the bundle of a model no "
                               "runtime here can run (Core ML off macOS), marked unverified; exit 6.")] = False,
    as_json: Json = False, debug: Debug = False,
) -> None:
    """Bundle an artifact for a device app: model (contract in its metadata), contract.json, labels, golden
    vectors, app.py and requirements.txt. On the device: python app.py selftest ; python app.py predict photo.jpg

    Examples: deploykit package mobilenet_v2.onnx -o bundle/ --labels labels.txt --normalize imagenet ;
    deploykit package mobilenet_v2.tflite --app web -o site/ --labels labels.txt && deploykit serve site/
    """
    def action() -> dict:
        from deploykit import api
        from deploykit.bundle.packaging import PackageOptions

        options = PackageOptions(app=app_kind, labels=labels, normalize=normalize, task=task, samples=samples,
                                 source=source, keep_unverified=keep_unverified,
                                 verify=_verify_options(samples, seed, npz, None, None, None, timeout))
        return api.package(artifact, output, options, force=force)

    _run(action, as_json, debug, _lazy("print_bundle"), _export_exit_code)


def _int_list(text: str, option: str) -> tuple:
    """Comma-separated integers (text parsing only: BenchOptions judges the values)."""
    from deploykit.errors import UsageError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise UsageError(f"bad {option} {text!r}", f"give positive integers separated by commas, e.g. {option} 1,2")
    return values


@app.command()
def bench(
    models: Annotated[List[str], typer.Argument(help="Model files: sources and/or artifacts (.pt, .pt2, .onnx, "
                                                     ".tflite, .keras, SavedModel dir).")],
    runtime: Annotated[Optional[List[str]], typer.Option("--runtime", help="Only these rows (repeatable): torch, "
                       "torch_compile, torch_cuda, onnxruntime, onnxruntime_cuda, litert, litert_no_xnnpack, "
                       "tensorflow, and in headless Chromium onnxruntime-web and litert-js (timed in the page; memory "
                       "is the page's renderer), and litert-arm64 / onnxruntime-arm64 (an emulated ARM core: parity "
                       "with the native runtime, never a latency). Default: every row that runs the model and is "
                       "available here, except the ARM rows.")] = None,
    threads: Annotated[str, typer.Option("--threads", help="Intra-op thread counts, comma-separated.")] = "1",
    batch: Annotated[Optional[str], typer.Option("--batch", help="Batch sizes, comma-separated. Default: the model's "
                                                 "own. A model with a fixed batch gives an error row for other sizes "
                                                 "(export it with --dynamic-batch).")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs before timing.")] = 10,
    iterations: Annotated[int, typer.Option("--iterations", help="Timed runs per case.")] = 100,
    seconds: Annotated[Optional[float], typer.Option("--seconds", help="Time-box per case instead of "
                                                     "--iterations.")] = None,
    profile: Annotated[Optional[str], typer.Option("--profile", help="mobile: LiteRT + XNNPACK on 1 and 2 pinned "
                                                   "cores (desktop silicon standing in for a phone).")] = None,
    report: Annotated[Optional[str], typer.Option("--report", help="Also write the research-vs-production report "
                                                  "(HTML + PNGs + JSON) into this directory.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing report.")] = False,
    inputs: Inputs = None, weights: Weights = None, timeout: Timeout = 600.0,
    arm_cpu: Annotated[Optional[str], typer.Option("--arm-cpu", help="The emulated core of the ARM rows "
                       "(cortex-a76 by default; cortex-a53, neoverse-n1, ...).")] = None,
    tokens: Tokens = _m("tokens"),
    prompt_tokens: Annotated[Optional[int], typer.Option("--prompt-tokens", help="Causal LMs: the prompt length "
                             "whose time to first token is measured (default 64; --iterations then counts timed "
                             "generations, default 3).")] = None,
    as_json: Json = False, debug: Debug = False,
) -> None:
    """Latency, cold start, memory and size of each model on each runtime, one child process per case.

    Example: deploykit bench model.pt2 model.onnx model.tflite --threads 1,2 --report out/ ;
    causal LMs: deploykit bench SmolLM2.gguf SmolLM2.onnx SmolLM2.pte --threads 1,2 (time to first token, decode
    tokens/s beside the memory-bandwidth bound)
    """
    def action() -> dict:
        from deploykit import api

        options = api.BenchOptions(runtimes=tuple(runtime or ()), threads=_int_list(threads, "--threads"),
                               batches=_int_list(batch, "--batch") if batch else (None,), warmup=warmup,
                               iterations=iterations, seconds=seconds, profile=profile, timeout=timeout,
                               arm_cpu=arm_cpu)
        echo = None if as_json else (lambda row: _lazy("print_bench_case")(terminal_safe(row)))
        return api.bench(models, options, load=api.load_options(inputs or (), weights, timeout=timeout),
                         report_dir=report, force=force, echo=echo, prompt_tokens=prompt_tokens,
                         llm=_llm_options(tokens=tokens, timeout=timeout))

    _run(action, as_json, debug, _lazy("print_bench"), _bench_exit_code)


def _bench_exit_code(data: dict) -> int:
    """1 when cases ran and every one of them failed: a benchmark that measured nothing is not a success."""
    cases = data.get("cases") or []
    if not cases or any("error" not in case for case in cases):
        return 0
    first = str(cases[0]["error"])
    print(printable(f"error: every benchmark case failed ({len(cases)}); the first: {first}"
                    if " — " in first else f"error: every benchmark case failed ({len(cases)}); the first: {first} — "
                    "run with --debug for the runtimes' logs"), file=sys.stderr)
    return 1


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="Model file or folder (SavedModel, Core AI .aimodel, Core ML "
                                              ".mlpackage), or package.module:factory.")],
    inputs: Inputs = None, weights: Weights = None, trust_pickle: TrustPickle = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a child process may take to read a file "
                                           "whose runtime could crash on it (TFLite).")] = 600.0,
    readiness: Annotated[bool, typer.Option("--readiness", help="Also say which accelerator takes the artifact "
                                            "(LiteRT: XNNPACK measured here, GPU delegate from its rules; ONNX: "
                                            "NNAPI / CoreML partitions; ExecuTorch: delegated vs portable) and which "
                                            "operators its runtime must ship; --input pins dynamic dims first.")] = False,
    as_json: Json = False, debug: Debug = False,
) -> None:
    """Signature, parameter count, op histogram and size of a model; with --readiness, its delegate coverage.

    Example: deploykit inspect model.onnx ; deploykit inspect model.tflite --readiness --json
    """
    def action() -> dict:
        from deploykit import api

        load = api.load_options(inputs or (), weights, trust_pickle, timeout)
        found = api.readiness(model, load).to_dict() if readiness else None    # a source is refused before loading
        info = api.inspect(model, load)
        return {**info, "readiness": found} if found else info

    _run(action, as_json, debug, _lazy("print_inspect"))


# Commands whose bodies live in deploykit.cli.tools, registered here in --help's order.
app.command()(tools.serve)
app.command()(tools.matrix)
app.command("report")(tools.report_command)
app.command()(tools.doctor)
samples_app.command("list")(tools.samples_list)
samples_app.command("build")(tools.samples_build)
app.command()(tools.demo)


def main(argv: "list[str] | None" = None) -> None:
    """Entry point (``argv`` defaults to ``sys.argv[1:]``): click's usage errors become the same one-line
    `error: … — …` as ours (exit 2); SIGTERM is handled like Ctrl-C (exit 143 instead of 130)."""
    import signal

    from deploykit.fsutil import private_tempdir

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with private_tempdir():
            code = app(args=argv, prog_name="deploykit", standalone_mode=False)
    except _usage_error_types() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(0)
        where = exc.ctx.command_path if exc.ctx else "deploykit"
        print(printable(f"error: {exc.format_message()} — see `{where} --help`"), file=sys.stderr)
        code = 2
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Terminated:        # SIGTERM outside a command's body (parsing, printing): the same exit
        print("error: terminated (SIGTERM)", file=sys.stderr)
        code = EXIT_TERMINATED
    _exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
