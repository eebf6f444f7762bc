"""`deploykit bench`: every (artifact, runtime, threads, batch) case in its own child process.

Each case reports load time (process start -> model ready, and model load alone), the first
inference, latency percentiles over timed iterations after warm-up, throughput, peak RSS and
its growth over a bare interpreter, artifact size, and what actually ran (delegate / EP,
threads). Statistics are a distribution, never one run; a wide spread is flagged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from deploykit import registry
from deploykit.benchmark import delegation
from deploykit.child import MEASURE, check_timeout, run_child
from deploykit.errors import DeploykitError, UsageError
from deploykit.formats import TORCH_FORMATS, Format, detect, is_factory_reference
from deploykit.harness import NOISY_SPREAD, Timing, latency_stats
from deploykit.machine import gpu_present

# Bench rows: (row name, registry runtime, options, formats, needs a GPU)
ROWS = (
    ("torch", "torch", {}, TORCH_FORMATS, False),
    ("torch_compile", "torch", {"compile": True}, TORCH_FORMATS, False),
    ("torch_cuda", "torch", {"device": "cuda"}, TORCH_FORMATS, True),
    ("onnxruntime", "onnxruntime", {}, {Format.ONNX, Format.ORT}, False),
    ("onnxruntime_cuda", "onnxruntime", {"device": "cuda"}, {Format.ONNX}, True),
    ("litert", "litert", {"xnnpack": True}, {Format.TFLITE}, False),
    ("litert_no_xnnpack", "litert", {"xnnpack": False}, {Format.TFLITE}, False),
    ("tensorflow", "tensorflow", {}, {Format.KERAS, Format.KERAS_H5, Format.SAVED_MODEL}, False),
    ("executorch", "executorch", {}, {Format.EXECUTORCH}, False),
    # A reference runtime: Core AI's CPU path on Linux proves parity; its time is not an iPhone's (REFERENCE_ROWS).
    ("coreai", "coreai", {}, {Format.COREAI}, False),
    ("onnxruntime-web", "onnxruntime-web", {}, {Format.ONNX}, False),
    ("litert-js", "litert-js", {}, {Format.TFLITE}, False),
    # Emulated ARM cores: parity against the native row's runtime, never a latency (benchmark.emulated). Only
    # when named with --runtime: each costs seconds to minutes under qemu and measures no time.
    ("litert-arm64", "litert-arm64", {"xnnpack": True}, {Format.TFLITE}, False),
    ("onnxruntime-arm64", "onnxruntime-arm64", {}, {Format.ONNX, Format.ORT}, False),
)
EMULATED_ROWS = ("litert-arm64", "onnxruntime-arm64")
RESEARCH_ROWS = ("torch", "torch_compile", "tensorflow")
# Rows whose runtime is marked `reference` in the registry: timed and shown, flagged, never a production speed-up.
REFERENCE_ROWS = tuple(row[0] for row in ROWS if registry.runtime_entry(row[1]).reference)
REFERENCE_NOTE = ("{rows}: a reference runtime — Apple Core AI's CPU path on Linux, tens of times slower than torch "
                  "here and without the GPU or Neural Engine an Apple device has: its time is not device time and "
                  "never counts as a production speed-up (its parity is what it proves)")
MOBILE_DISCLAIMER = ("--profile mobile: LiteRT + XNNPACK on 1 and 2 pinned cores of this desktop/server CPU — "
                     "a stand-in for a phone's big cores, not a phone measurement")


@dataclass(frozen=True)
class BenchOptions:
    runtimes: tuple = ()            # row names; () = every row that applies
    threads: tuple = (1,)
    batches: tuple = (None,)        # None = the model's own batch
    warmup: int = 10
    iterations: int = 100
    seconds: Optional[float] = None
    profile: Optional[str] = None   # "mobile"
    timeout: float = 600.0
    arm_cpu: Optional[str] = None   # the emulated core of the ARM rows (None: cortex-a76)
    delegation: bool = True         # each artifact's delegate coverage, probed once after the timings (1-9 s each)

    def __post_init__(self) -> None:
        known = {row[0] for row in ROWS}
        unknown = set(self.runtimes) - known
        if unknown:
            raise UsageError(f"unknown runtime(s) {', '.join(sorted(unknown))}", f"use {', '.join(sorted(known))}")
        if self.profile not in (None, "mobile"):
            raise UsageError(f"unknown --profile {self.profile!r}", "use --profile mobile")
        for option, values in (("--threads", self.threads), ("--batch", [b for b in self.batches if b is not None])):
            if any(not isinstance(v, int) or v < 1 for v in values) or (option == "--threads" and not values):
                raise UsageError(f"{option} takes positive integers (got {values!r})", f"e.g. {option} 1,2")
        self.timing()          # validates warmup / iterations / seconds
        check_timeout(self.timeout)
        if self.arm_cpu is not None:
            if not set(self.runtimes) & set(EMULATED_ROWS):
                raise UsageError("--arm-cpu picks the core of an emulated ARM row, and none is asked for",
                                 f"add --runtime {' or --runtime '.join(EMULATED_ROWS)}")
            from deploykit.emulation.cores import core

            core(self.arm_cpu)     # an unknown core is refused now, not after the timed rows ran

    def timing(self) -> Timing:
        return Timing(self.warmup, self.iterations, self.seconds)


def plan(models: list, options: BenchOptions) -> tuple:
    """(cases to run, rows skipped with their reason)."""
    cases, skipped = [], []
    for path in models:
        fmt = detect(path)
        for name, runtime, extra, formats, gpu in ROWS:
            if fmt not in formats or not _wanted(name, options):
                continue
            reason = _unavailable(runtime, gpu)
            if reason:
                skipped.append({"model": path, "runtime": name, "reason": reason})
                continue
            # An emulated row measures no time: one case per batch, threads make no difference to parity.
            thread_counts = (1,) if name in EMULATED_ROWS else options.threads
            for threads in (1, 2) if options.profile == "mobile" else thread_counts:
                for batch in options.batches:
                    affinity = list(range(threads)) if options.profile == "mobile" else None
                    cases.append({"model": path, "format": fmt.value, "row": name, "runtime": runtime,
                                  "options": {"threads": threads, **extra}, "batch": batch, "affinity": affinity,
                                  **({"reference": True} if name in REFERENCE_ROWS else {})})
    if not cases and not skipped:
        raise UsageError("nothing to benchmark for these models and runtimes",
                         "give model files that one of the selected runtimes runs")
    return cases, skipped


def _wanted(row: str, options: BenchOptions) -> bool:
    if options.profile == "mobile":
        return row == "litert"
    return row in options.runtimes if options.runtimes else row not in EMULATED_ROWS


def _unavailable(runtime: str, gpu: bool) -> str:
    entry = next(e for e in registry.RUNTIMES if e.name == runtime)
    reason = entry.unavailable_reason()
    if reason:
        return reason
    if gpu and not gpu_present():
        return "no NVIDIA GPU on this machine"
    return ""


def run_case(case: dict, options: BenchOptions, load: Optional[dict] = None) -> dict:
    """Run one case in a fresh child process; a failure, crash or time-out becomes the row's error. An ARM row
    is not timed: it reports its parity with the native runtime (``deploykit.benchmark.emulated``)."""
    if case["row"] in EMULATED_ROWS:
        from deploykit.benchmark.emulated import run_emulated_case

        return run_emulated_case(case, options.timeout, options.arm_cpu, load)
    path = Path(case["model"])
    model = {"path": str(path.resolve()) if path.exists() else case["model"], "format": case["format"], "load": load or {}}
    request = {"model": model, "runtime": case["runtime"], "options": case["options"], "batch": case["batch"],
               "affinity": case["affinity"], "timing": options.timing().to_dict()}
    try:
        raw = run_child("deploykit.harness:measure_job", request, stage=MEASURE, what=Path(case["model"]).name,
                        timeout=options.timeout).info
    except DeploykitError as exc:
        return {**case, "error": exc.one_line().removeprefix("error: ")}
    return {**case, **summarize(raw), "size_bytes": artifact_size(case["model"])}


def summarize(raw: dict) -> dict:
    """Latency distribution (the harness's statistics) and derived numbers from one case's raw timings."""
    latency = latency_stats(raw.pop("times_ms"))
    spread = latency.pop("spread")
    batch = next(iter(raw["input_shapes"].values()), [1])[0] if raw["input_shapes"] else 1
    return {**raw, "latency_ms": latency,
            "throughput_per_s": round(batch * 1e3 / latency["mean"], 2) if latency["mean"] else None,
            "rss_delta_bytes": raw["peak_rss_bytes"] - (raw.get("rss_at_start_bytes") or 0),
            "spread": spread, "noisy": spread > NOISY_SPREAD}


def artifact_size(path: str) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else 0


def bench(models: list, options: BenchOptions = BenchOptions(), load: Optional[dict] = None, echo=None) -> dict:
    """Run every case; returns the JSON-able result (machine, cases, skipped rows, FLOPs, headline)."""
    from deploykit.machine import cpu_peak

    for path in models:
        if not Path(path).exists() and not is_factory_reference(path):
            raise UsageError(f"{path}: no such file or directory",
                             "give model files (or a package.module:factory) to benchmark")
    cases, skipped = plan(models, options)
    machine = cpu_peak()
    flops = model_flops(models, options.timeout)
    results = []
    for case in cases:
        row = run_case(case, options, load if _takes_user_shapes(case["model"], models[0]) else None)
        _add_roofline(row, flops.get(case["model"]), machine)
        results.append(row)
        if echo:
            echo(row)
    coverage = _delegation(results, models, options, load)
    notes = [MOBILE_DISCLAIMER] if options.profile == "mobile" else []
    noisy = [r for r in results if r.get("noisy")]
    if noisy:
        notes.append(f"{len(noisy)} case(s) had a wide spread (p90 more than {NOISY_SPREAD:.0%} above p50): the "
                     "machine was busy; rerun with more --iterations or on a quiet machine")
    notes += _bindings_notes(results)
    reference = sorted({r["row"] for r in results if r.get("reference")})
    if reference:
        notes.append(REFERENCE_NOTE.format(rows=", ".join(reference)))
    if any(r["row"] in EMULATED_ROWS for r in results):
        notes.append("ARM rows run under qemu, 300-500x slower than the phone and not uniformly so: they show the "
                     "difference from the native runtime on the same feeds (max_abs, cosine), never a latency")
    notes += [f"delegation of {Path(path).name} not computed: {found['error']}" for path, found in coverage.items()
              if "error" in found]
    return {"schema_version": 1, "machine": machine, "options": options.__dict__, "cases": results,
            "skipped": skipped, "flops": flops, "notes": notes, "headline": headline(results),
            "delegation": {"artifacts": coverage, "findings": delegation.findings(
                results, RESEARCH_ROWS, REFERENCE_ROWS + EMULATED_ROWS + registry.BROWSER_RUNTIMES)}}


def _delegation(results: list, models: list, options: BenchOptions, load: Optional[dict]) -> dict:
    """The "delegated" column, once per artifact file and only after every case is timed: the probes load the
    model in a child of their own and would otherwise compete with a timing for the CPU."""
    if not options.delegation:
        return {}
    loads = {model: load if _takes_user_shapes(model, models[0]) else None for model in models}
    return delegation.add_columns(results, loads, options.timeout)


def _takes_user_shapes(model: str, first: str) -> bool:
    """``--input`` applies to a PyTorch model (it has no shapes of its own), and to every model in the first
    model's format: an ONNX source with a dynamic dim and its quantized ONNX share names and layout. A model
    in another format keeps its own signature (onnx2tf's TFLite is NHWC, with the dims pinned at export)."""
    fmt = detect(model)
    return fmt in TORCH_FORMATS or fmt == detect(first)


def _bindings_notes(rows: list) -> list:
    """A runtime reached through heavy Python bindings pays their import at every cold start; an app does not."""
    timed = [r for r in rows if r.get("bindings_import_s") is not None]
    if not timed:
        return []
    slowest: dict = {}
    for row in timed:
        slowest[row["row"]] = max(slowest.get(row["row"], 0.0), row["bindings_import_s"])
    seconds = ", ".join(f"{name} up to {value:.1f} s" for name, value in slowest.items())
    return [f"cold start includes importing the Python bindings ({seconds} of it): a cost of the Python binding "
            "only — an app links the C++ runtime and does not pay it"]


def model_flops(models: list, timeout: float) -> dict:
    """FLOPs per inference for each model, counted once per model family.

    Countable files (torch, ONNX) are counted in a child process; a TFLite/Keras artifact gets
    the count of the file its manifest names as source, when that file is in the run.
    """
    from deploykit import manifest
    from deploykit.fsutil import sha256_of

    counts, by_hash = {}, {}
    for path in models:
        if detect(path) in TORCH_FORMATS or detect(path) == Format.ONNX:
            try:
                counts[path] = run_child("deploykit.benchmark.flops:job", {"path": path}, stage=MEASURE,
                                         what=f"the FLOPs of {Path(path).name}", timeout=timeout).info
                by_hash[sha256_of(path)] = counts[path]
            except DeploykitError as exc:
                counts[path] = {"flops": None, "method": f"not counted: {exc.message}"}
    for path in models:
        if path not in counts:
            source = ((manifest.read(path) or {}).get("source") or {}).get("sha256")
            if source in by_hash:
                counts[path] = {**by_hash[source], "method": by_hash[source]["method"] + " (of its source)"}
    return counts


def _add_roofline(row: dict, flops: Optional[dict], machine: dict) -> None:
    if "error" in row or "latency_ms" not in row or not flops or not flops.get("flops"):
        return
    seconds = row["latency_ms"]["p50"] / 1e3
    achieved = flops["flops"] / seconds / 1e9
    row["gflops_per_s"] = round(achieved, 2)
    peak = machine.get("peak_gflops_per_core")
    if peak:
        row["fraction_of_peak"] = round(achieved / (peak * (row["options"].get("threads") or 1)), 4)


def headline(rows: list) -> Optional[dict]:
    """Production vs research at the same threads and batch: speed, memory, start-up."""
    ok = [r for r in rows if "error" not in r and "latency_ms" in r]      # ARM rows have no latency to rank
    for research_row in RESEARCH_ROWS:
        research = [r for r in ok if r["row"] == research_row]
        for base in research:
            same = [r for r in ok if r["row"] not in RESEARCH_ROWS + REFERENCE_ROWS and r["options"].get("threads")
                    == base["options"].get("threads") and r["batch"] == base["batch"]]
            native = [r for r in same if r["row"] not in registry.BROWSER_RUNTIMES]
            if not native:
                continue
            best = min(native, key=lambda r: r["latency_ms"]["p50"])
            return {"browser": _browser_column(base, best, same), "research": f"{base['row']} ({Path(base['model']).name})",
                    "production": f"{best['row']} ({Path(best['model']).name})",
                    "threads": base["options"].get("threads"), "batch": base["batch"],
                    "speedup": round(base["latency_ms"]["p50"] / best["latency_ms"]["p50"], 2),
                    "memory_ratio": round(base["peak_rss_bytes"] / best["peak_rss_bytes"], 2),
                    "startup_ratio": round(base["time_to_first_result_s"] / best["time_to_first_result_s"], 2)}
    return None


def _browser_column(research: dict, native: dict, same: list) -> Optional[dict]:
    """The fastest browser row beside the same research and native rows: how it compares with each."""
    browser = [r for r in same if r["row"] in registry.BROWSER_RUNTIMES]
    if not browser:
        return None
    best = min(browser, key=lambda r: r["latency_ms"]["p50"])
    return {"row": f"{best['row']} ({Path(best['model']).name})", "p50_ms": best["latency_ms"]["p50"],
            "speedup_vs_research": round(research["latency_ms"]["p50"] / best["latency_ms"]["p50"], 2),
            "slowdown_vs_native": round(best["latency_ms"]["p50"] / native["latency_ms"]["p50"], 2)}
