"""The commands around the main flow (serve, matrix, report, doctor, samples, demo): their typer signatures and
bodies. ``deploykit.cli.commands`` registers them on the app, so this module imports no typer app of its own.
"""
from __future__ import annotations

import sys
from typing import List, Optional

import typer
from typing_extensions import Annotated

from deploykit.cli.flags import Debug, Json
from deploykit.cli.support import _lazy, _run


def serve(
    folder: Annotated[str, typer.Argument(help="A web bundle (`deploykit package --app web`) or any static folder.")],
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free one).")] = 8000,
    debug: Debug = False,
) -> None:
    """Serve a folder on 127.0.0.1 with the COOP/COEP headers that multi-threaded WASM needs; Ctrl-C stops.

    Example: deploykit serve site/  (then open http://127.0.0.1:8000/ , or /selftest.html)
    """
    def action() -> dict:
        from deploykit.cli.support import serve_until_interrupted

        return serve_until_interrupted(folder, port)

    _run(action, False, debug, lambda data: None)


def matrix(
    spec: Annotated[str, typer.Argument(help="TOML or YAML spec: [matrix] targets/precisions/route/bench and "
                                             "[[models]] path/factory/folder with their export flags (README).")],
    output: Annotated[str, typer.Option("-o", "--output", help="Results folder, or shared storage as a URI "
                                        "(file:///shared/zoo, s3://...): cells/, artifacts/, matrix.html, "
                                        "matrix.json. Rerun into it to resume.")] = "deploykit-matrix",
    executor: Annotated[str, typer.Option("--executor", help="local: a child process per cell, --workers at "
                                          "once; ray: Ray tasks (pip install 'deploykit[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="A running Ray cluster (host:port; its "
                       "nodes started with --resources '{\"deploykit_bench\": 1}'); -o must then be a URI every "
                       "node reaches. Default: a Ray instance on this machine.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Cells at once (default: one per core; "
                       "with --address the cluster's CPUs decide).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run again the cells a previous run "
                            "recorded as failed or crashed.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Ignore every stored result and run all cells.")] = False,
    as_json: Json = False, debug: Debug = False,
) -> None:
    """Every model × target × precision of a spec: convert, verify, bench — one independent cell each.

    Cells are keyed by content (model, options, tool versions): finished ones are skipped on a rerun and
    survive Ctrl-C. Prints a progress line per cell and "N passed, N failed, N unsupported"; exit 1 when
    a cell failed unexpectedly. Example: deploykit matrix zoo.toml -o zoo-out --executor ray
    """
    def action() -> dict:
        from deploykit.matrix.run import run_matrix
        from deploykit.render import MatrixProgress

        with MatrixProgress() as progress:
            result = run_matrix(spec, output, executor=executor, address=address, workers=workers,
                                retry_failed=retry_failed, force=force, progress=progress)
        if as_json:      # the CI line on stderr, also when stdout is the JSON document
            print(f"matrix: {result['summary_line']}", file=sys.stderr)
        return result

    _run(action, as_json, debug, _lazy("print_matrix"), lambda data: 0 if data["passed"] else 1)


def report_command(
    bench_json: Annotated[str, typer.Argument(help="A `deploykit bench --json` result file.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Directory for report.html, PNGs, report.json.")]
    = "deploykit-report",
    parity: Annotated[Optional[str], typer.Option("--parity", help="A `deploykit verify --json` result to show "
                                                  "as the parity table.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing report.")] = False,
    as_json: Json = False, debug: Debug = False,
) -> None:
    """Write the research-vs-production report (self-contained HTML + PNG plots + JSON) from a bench result.

    Example: deploykit bench m.pt2 m.onnx m.tflite --json > bench.json; deploykit report bench.json -o out/
    """
    def action() -> dict:
        from deploykit import api

        return api.report(bench_json, output, parity, force)

    _run(action, as_json, debug, _lazy("print_report"))


def doctor(
    provision: Annotated[Optional[str], typer.Option("--provision", help="Install this now instead of on first "
                         "use, then report: arm64 (qemu, Debian's arm64 Python and the aarch64 wheels of the ARM "
                         "runtimes, ~15 s and ~275 MiB into ~/.cache/deploykit/arm64-<lock>).")] = None,
    as_json: Json = False, debug: Debug = False,
) -> None:
    """Library versions, GPU, which routes and runtimes this install supports (imports no framework), and the
    emulated ARM userland. Example: deploykit doctor --provision arm64"""
    def action() -> dict:
        from deploykit import api

        if provision:
            from deploykit.introspect import provision as install

            install(provision)
        return api.doctor()

    _run(action, as_json, debug, _lazy("print_doctor"))


def samples_list(as_json: Json = False, debug: Debug = False) -> None:
    """List the sample models and their factories."""
    def action() -> dict:
        from deploykit import api

        return {"samples": api.samples()}

    _run(action, as_json, debug, lambda data: _lazy("print_samples")(data["samples"]))


def samples_build(
    output: Annotated[str, typer.Option("-o", "--output", help="Directory to write the files into.")] = "samples",
    only: Annotated[Optional[List[str]], typer.Option("--only", help="Build only this sample (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    as_json: Json = False, debug: Debug = False,
) -> None:
    """Build the sample models (trained from fixed seeds) and write them as files.

    Per sample: NAME.pt (TorchScript), NAME.pt2 (torch.export), NAME.weights.pt (state_dict),
    NAME.inputs.npz (example inputs); Keras: NAME.keras, NAME.h5; the causal LM tiny_llama: a Hugging Face
    folder tiny_llama/ (trained ~1.5 min on the bundled public-domain texts). Calibration data: shapes/ (132
    images for the CNNs) and tiny_transformer.calibration.npz. The MobileNetV2 sample trains for
    ~3.5 min the first time on a machine, then comes from ~/.cache/deploykit/trained.
    """
    def action() -> dict:
        from deploykit import api

        return {"samples": api.build_samples(output, tuple(only or ()), force)}

    _run(action, as_json, debug, lambda data: _lazy("print_samples")(data["samples"]))


def demo(
    output: Annotated[str, typer.Option("-o", "--output", help="Directory for the demo's files.")] = "deploykit-demo",
    as_json: Json = False, debug: Debug = False,
) -> None:
    """The main job end to end on bundled samples: build, export to ONNX and TFLite, verify the chain, inspect.

    Writes into --output, replacing only files an earlier demo wrote there.
    """
    def action() -> dict:
        from deploykit import api

        return api.demo(output, echo=not as_json, debug=debug)

    _run(action, as_json, debug, lambda data: None, lambda data: 0 if data["passed"] else 1)
