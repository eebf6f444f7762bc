"""Registries of loaders, converter edges and runtimes: data, not if-chains.

Targets are "module:attribute" strings resolved on use, so that listing the registry
(``deploykit doctor``) imports nothing heavy, and a missing package makes an entry
unavailable with an install hint instead of an ImportError.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Optional

from deploykit.errors import MissingDependency, UsageError
from deploykit.formats import LLM_FORMATS, TORCH_FORMATS, Format

@dataclass(frozen=True)
class Package:
    """One optional dependency: how it is imported, installed, marked in tests, and whether it is heavy."""

    module: str             # import name
    distribution: str       # pip name
    extra: str              # the deploykit extra that installs it
    marker: str = ""        # pytest marker of the tests that need it ("" = none of its own)
    heavy: bool = True      # a framework that `deploykit --help` must never import


# The one table of optional packages: install hints, doctor, manifest versions and test markers read it.
PACKAGE_TABLE = (
    Package("torch", "torch", "torch", marker="torch"),
    Package("onnx", "onnx", "onnx", marker="onnxruntime"),
    Package("onnxscript", "onnxscript", "torch", marker="torch"),
    Package("onnxruntime", "onnxruntime", "onnx", marker="onnxruntime"),
    Package("onnxslim", "onnxslim", "onnx"),
    Package("tensorflow", "tensorflow", "tf", marker="tensorflow"),
    Package("keras", "keras", "tf"),
    Package("tf2onnx", "tf2onnx", "tf"),
    Package("onnx2tf", "onnx2tf", "tf"),
    Package("ai_edge_quantizer", "ai-edge-quantizer", "tf"),      # the int8 repair's 16x8 step
    Package("ai_edge_litert", "ai-edge-litert", "litert", marker="litert"),
    Package("litert_torch", "litert-torch", "litert"),
    Package("jax", "jax", "litert"),
    Package("matplotlib", "matplotlib", "report", heavy=False),
    Package("playwright", "playwright", "browser", marker="browser"),
    Package("executorch", "executorch", "executorch", marker="executorch"),
    Package("ray", "ray", "ray", marker="ray"),
    Package("coreai", "coreai-core", "apple", marker="coreai"),      # Apple's Core AI: authoring + a CPU runtime
    Package("coreai_torch", "coreai-torch", "apple", marker="coreai"),
    Package("coremltools", "coremltools", "apple", marker="coreml"),
    Package("transformers", "transformers", "llm", marker="llm"),    # causal LM sources (HF folders, GGUF)
    Package("tokenizers", "tokenizers", "llm", marker="llm", heavy=False),
    Package("gguf", "gguf", "llm", marker="llm", heavy=False),
)
PACKAGES = {p.module: (p.distribution, p.extra) for p in PACKAGE_TABLE}


def test_markers() -> dict:
    """pytest marker -> the import names its tests need (conftest skips them when one is missing)."""
    markers: dict = {}
    for package in PACKAGE_TABLE:
        if package.marker:
            markers.setdefault(package.marker, []).append(package.module)
    return {marker: tuple(modules) for marker, modules in markers.items()}


def heavy_modules() -> tuple:
    """Import names of the frameworks that the core and `deploykit --help` must not import."""
    return tuple(p.module for p in PACKAGE_TABLE if p.heavy)


def tracked_distributions() -> tuple:
    """Distributions whose versions a manifest may record."""
    return ("deploykit", "numpy") + tuple(dict.fromkeys(p.distribution for p in PACKAGE_TABLE))


def missing_packages(requires: tuple) -> list:
    """Import names in ``requires`` that are not importable (checked without importing)."""
    return [name for name in requires if importlib.util.find_spec(name) is None]


def require(requires: tuple, why: str) -> None:
    """Raise MissingDependency naming the first missing package and its extra."""
    problem = _missing(requires, why)
    if problem:
        raise problem


def _missing(requires: tuple, why: str) -> Optional[MissingDependency]:
    missing = missing_packages(requires)
    if not missing:
        return None
    dist, extra = PACKAGES.get(missing[0], (missing[0], "all"))
    return MissingDependency.for_package(dist, extra, why)


def resolve(target: str):
    """Import ``module:attribute`` and return the attribute."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class LoaderEntry:
    """Reads a format's signature: ``target(path, fmt, LoadOptions) -> LoadedModel``.

    ``isolated`` loaders run in a child process (the runtime can crash natively on a bad file).
    """

    formats: frozenset
    target: str
    requires: tuple
    isolated: bool = False


@dataclass(frozen=True)
class ConverterEdge:
    """One conversion step from any of ``src`` formats to ``dst``.

    ``target`` names ``convert(model, out_path, options: ExportOptions, check) -> ConversionResult``
    (the contract in ``deploykit.conversion``); it may start children only through ``deploykit.child``.
    """

    name: str
    src: frozenset
    dst: Format
    target: str
    requires: tuple
    tag: str = ""           # the tool, as --via names it (litert, onnx2tf, tf2onnx, ...)
    preference: int = 0     # lower is tried first among routes of equal length
    quantizes: tuple = ()   # --quantize modes this edge can apply
    post_step: bool = False  # applied after a route (never planned as a hop of its own)
    int8_io: bool = False   # its int8 quantization makes the inputs and outputs int8 too

    @property
    def available(self) -> bool:
        return not missing_packages(self.requires)


@dataclass(frozen=True)
class RuntimeEntry:
    """A runtime that can execute models of ``formats`` through the Runner protocol."""

    name: str
    formats: frozenset
    target: str
    requires: tuple
    description: str = ""
    check: str = ""         # "module:function" -> why it cannot run here beyond packages ("" = it can)
    remedy: str = ""        # what to do when ``check`` says why not
    browser: bool = False   # runs in a browser page (ships as web assets, `package --app web`)
    emulates: str = ""      # the native runtime this one runs on an emulated ARM core (its runner, in an arm64 child)
    reference: bool = False  # proves parity here but its time is not the device's (Core AI's Linux CPU path)
    decoder: str = ""       # "module:function(path, RunnerOptions) -> causal_lm.DecoderCalls" for cached decoders

    @property
    def available(self) -> bool:
        return not self.unavailable_reason()

    def unavailable_reason(self) -> str:
        missing = missing_packages(self.requires)
        if missing:
            return f"{', '.join(missing)} not installed"
        return resolve(self.check)() if self.check else ""


TF_FORMATS = frozenset({Format.KERAS, Format.KERAS_H5, Format.SAVED_MODEL})

LOADERS = (
    # torch's and TensorFlow's own deserializers abort on crafted archives: their files are read in a child too.
    LoaderEntry(TORCH_FORMATS, "runtimes.torch_eager:load_model", ("torch",), isolated=True),
    LoaderEntry(frozenset({Format.ONNX}), "runtimes.onnxruntime:load_model", ("onnx",)),
    # ONNX Runtime's own (pure Python) flatbuffer reader: nothing native reads the file here.
    LoaderEntry(frozenset({Format.ORT}), "runtimes.onnxruntime:load_ort_model", ("onnxruntime",)),
    LoaderEntry(TF_FORMATS, "runtimes.tensorflow:load_model", ("tensorflow",), isolated=True),
    LoaderEntry(frozenset({Format.TFLITE}), "runtimes.litert:load_model", ("ai_edge_litert",), isolated=True),
    LoaderEntry(frozenset({Format.EXECUTORCH}), "runtimes.executorch:load_model", ("executorch", "torch"),
                isolated=True),
    LoaderEntry(frozenset({Format.COREAI}), "runtimes.coreai:load_model", ("coreai",), isolated=True),
    LoaderEntry(frozenset({Format.COREML}), "runtimes.coreml:load_model", ("coremltools",), isolated=True),
)
# Formats a runner runs from the file and its signature alone (no framework object to rebuild).
FILE_FORMATS = frozenset({Format.ONNX, Format.ORT, Format.TFLITE, Format.EXECUTORCH, Format.COREAI, Format.COREML})

# Order matters among routes of equal length: the first that passes verification is kept.
EDGES = (
    ConverterEdge("torch_to_onnx", TORCH_FORMATS, Format.ONNX, "converters.torch_to_onnx:convert",
                  ("torch", "onnx", "onnxscript"), tag="torch.onnx"),
    # litert-torch goes through torch.export, which cannot read TorchScript archives.
    ConverterEdge("torch_to_tflite", TORCH_FORMATS - {Format.TORCHSCRIPT}, Format.TFLITE,
                  "converters.torch_to_tflite:convert", ("torch", "litert_torch", "ai_edge_litert"), tag="litert",
                  quantizes=("dynamic", "int8"), int8_io=True),
    # torch.export + XNNPACK partitioner; TorchScript goes through torch's TS→ExportedProgram converter.
    ConverterEdge("torch_to_executorch", TORCH_FORMATS, Format.EXECUTORCH, "converters.torch_to_executorch:convert",
                  ("torch", "executorch"), tag="executorch", quantizes=("dynamic", "int8")),
    ConverterEdge("onnx_to_tflite", frozenset({Format.ONNX}), Format.TFLITE, "converters.onnx_to_tflite:convert",
                  ("onnx2tf", "tensorflow", "onnx", "ai_edge_litert"), tag="onnx2tf"),
    ConverterEdge("onnx_to_saved_model", frozenset({Format.ONNX}), Format.SAVED_MODEL,
                  "converters.onnx_to_tflite:convert_saved_model", ("onnx2tf", "tensorflow", "onnx"), tag="onnx2tf"),
    ConverterEdge("keras_to_tflite", TF_FORMATS, Format.TFLITE, "converters.keras_to_tflite:convert",
                  ("tensorflow", "ai_edge_litert"), tag="tflite_converter", quantizes=("fp16", "dynamic", "int8")),
    ConverterEdge("keras_to_onnx", TF_FORMATS, Format.ONNX, "converters.keras_to_onnx:convert",
                  ("tensorflow", "tf2onnx", "onnx"), tag="tf2onnx"),
    ConverterEdge("keras_to_saved_model", frozenset({Format.KERAS, Format.KERAS_H5}), Format.SAVED_MODEL,
                  "converters.keras_to_saved_model:convert", ("tensorflow",), tag="keras_export"),
    ConverterEdge("tflite_to_onnx", frozenset({Format.TFLITE}), Format.ONNX, "converters.tflite_to_onnx:convert",
                  ("tf2onnx", "tensorflow", "onnx"), tag="tf2onnx"),
    # Apple: coreai-torch lowers a torch.export program to a Core AI asset (TorchScript via TS→ExportedProgram);
    # coremltools writes a Core ML mlprogram, which nothing on Linux can run (its checks are static only).
    ConverterEdge("torch_to_coreai", TORCH_FORMATS, Format.COREAI, "converters.torch_to_coreai:convert",
                  ("torch", "coreai", "coreai_torch"), tag="coreai-torch", quantizes=("fp16",)),
    ConverterEdge("torch_to_coreml", TORCH_FORMATS, Format.COREML, "converters.torch_to_coreml:convert",
                  ("torch", "coremltools"), tag="coremltools", quantizes=("fp16",)),
    ConverterEdge("onnx_quantize", frozenset({Format.ONNX}), Format.ONNX, "converters.onnx_quantize:convert",
                  ("onnxruntime", "onnx"), tag="ort_quantization", quantizes=("fp16", "dynamic", "int8"),
                  post_step=True),
    # ONNX Runtime Mobile's ORT format (onnxruntime.tools.convert_onnx_models_to_ort), with the required-operators
    # config of a reduced build beside it.
    ConverterEdge("onnx_to_ort", frozenset({Format.ONNX}), Format.ORT, "converters.onnx_to_ort:convert",
                  ("onnxruntime", "onnx"), tag="ort_tools"),
    # Causal LMs: the source re-authored as a cached decoder (deploykit.transforms.cached_decoder), one edge per
    # runtime family; routed only by deploykit.llm (single hops), judged by the generation oracle.
    ConverterEdge("llm_to_onnx", LLM_FORMATS, Format.ONNX, "converters.llm_to_onnx:convert",
                  ("torch", "transformers", "onnx", "onnxscript"), tag="torch.onnx", quantizes=("int8", "int4")),
    ConverterEdge("llm_to_tflite", LLM_FORMATS, Format.TFLITE, "converters.llm_to_tflite:convert",
                  ("torch", "transformers", "litert_torch", "ai_edge_litert"), tag="litert", quantizes=("int8", "dynamic")),
    ConverterEdge("llm_to_executorch", LLM_FORMATS, Format.EXECUTORCH, "converters.llm_to_executorch:convert",
                  ("torch", "transformers", "executorch"), tag="executorch", quantizes=("8da4w",)),
)
QUANTIZE_MODES = ("fp16", "dynamic", "int8")

BROWSER_REMEDY = ("install Debian's chromium and npm (`apt-get install chromium npm`; ./run does it), "
                  "or set DEPLOYKIT_CHROMIUM to a Chromium executable")
COREAI_REMEDY = ("coreai-core ships an x86-64 Linux wheel for glibc >= 2.34 and Python 3.11-3.14, and macOS wheels: "
                 "run on such a host (pip install 'deploykit[apple]')")
COREML_REMEDY = "verify on a Mac, or export --to coreai, which runs here"
ARM_REMEDY = "run on a Debian/Ubuntu x86-64 host with apt-get (qemu and the arm64 Python come from Debian's packages)"
RUNTIMES = (
    RuntimeEntry("torch", TORCH_FORMATS, "runtimes.torch_eager:TorchEagerRunner", ("torch",),
                 "PyTorch eager / TorchScript / torch.export (research)"),
    RuntimeEntry("onnxruntime", frozenset({Format.ONNX, Format.ORT}), "runtimes.onnxruntime:OnnxRuntimeRunner",
                 ("onnxruntime",), "ONNX Runtime (CPU, CUDA EP when present)",
                 decoder="runtimes.onnxruntime:decoder_calls"),
    RuntimeEntry("litert", frozenset({Format.TFLITE}), "runtimes.litert:LiteRTRunner", ("ai_edge_litert",),
                 "LiteRT interpreter (XNNPACK delegate on by default)", decoder="runtimes.litert:decoder_calls"),
    RuntimeEntry("tensorflow", TF_FORMATS, "runtimes.tensorflow:TensorFlowRunner", ("tensorflow",),
                 "TensorFlow: Keras call / SavedModel serving signature"),
    RuntimeEntry("executorch", frozenset({Format.EXECUTORCH}), "runtimes.executorch:ExecuTorchRunner",
                 ("executorch", "torch"), "ExecuTorch (XNNPACK delegate + portable kernels) via its Python bindings",
                 decoder="runtimes.executorch:decoder_calls"),
    RuntimeEntry("coreai", frozenset({Format.COREAI}), "runtimes.coreai:CoreAIRunner", ("coreai",),
                 "Apple Core AI, coreai-core's in-package CPU runtime (a reference runtime on Linux: not device "
                 "time, no GPU or Neural Engine)", check="runtimes.coreai:unavailable_reason", remedy=COREAI_REMEDY,
                 reference=True),
    RuntimeEntry("coreml", frozenset({Format.COREML}), "runtimes.coreml:CoreMLRunner", ("coremltools",),
                 "Apple Core ML through coremltools' predict (macOS only)", check="runtimes.coreml:unavailable_reason",
                 remedy=COREML_REMEDY),
    # Browser runtimes come last: a format's default runtime stays the native one.
    RuntimeEntry("onnxruntime-web", frozenset({Format.ONNX}), "runtimes.onnxruntime_web:OnnxRuntimeWebRunner",
                 ("playwright",), "onnxruntime-web WASM in headless Chromium (browser / web view)",
                 check="deploykit.browser:unavailable_reason", remedy=BROWSER_REMEDY, browser=True),
    RuntimeEntry("litert-js", frozenset({Format.TFLITE}), "runtimes.litert_js:LiteRtJsRunner", ("playwright",),
                 "LiteRT.js WASM (XNNPACK) in headless Chromium (browser / web view)",
                 check="deploykit.browser:unavailable_reason", remedy=BROWSER_REMEDY, browser=True),
    # Emulated ARM cores: the native runtime's own runner in an arm64 Python under qemu (deploykit.emulation);
    # the host needs none of the runtime's packages, and the userland is installed on first use.
    RuntimeEntry("litert-arm64", frozenset({Format.TFLITE}), "runtimes.litert:LiteRTRunner", (),
                 "LiteRT (XNNPACK) on an emulated ARM core, aarch64 wheel under qemu (parity only, never latency)",
                 check="deploykit.emulation.userland:unavailable_reason", remedy=ARM_REMEDY, emulates="litert"),
    RuntimeEntry("onnxruntime-arm64", frozenset({Format.ONNX, Format.ORT}), "runtimes.onnxruntime:OnnxRuntimeRunner",
                 (),
                 "ONNX Runtime (MLAS) on an emulated ARM core, aarch64 wheel under qemu (parity only, never latency)",
                 check="deploykit.emulation.userland:unavailable_reason", remedy=ARM_REMEDY, emulates="onnxruntime"),
)
BROWSER_RUNTIMES = tuple(entry.name for entry in RUNTIMES if entry.browser)
EMULATED_RUNTIMES = tuple(entry.name for entry in RUNTIMES if entry.emulates)


def runtime_entry(name: str) -> Optional[RuntimeEntry]:
    """The runtime registered as ``name`` (None when there is none)."""
    return next((entry for entry in RUNTIMES if entry.name == name), None)


def browser_runtime_for(fmt: Format) -> RuntimeEntry:
    """The browser runtime that runs ``fmt`` (a web bundle's runtime)."""
    return next(entry for entry in RUNTIMES if entry.browser and fmt in entry.formats)


def runtime_problem(entry: RuntimeEntry, why: str) -> Optional[MissingDependency]:
    """Why ``entry`` cannot run here, as the error to raise (None when it can): a missing package with its
    extra, or what its own check found with its remedy (no Chromium for a browser runtime)."""
    problem = _missing(entry.requires, why)
    if problem:
        return problem
    reason = resolve(entry.check)() if entry.check else ""
    return MissingDependency(f"the {entry.name} runtime cannot run here: {reason}", entry.remedy) if reason else None

def runtime_distributions() -> dict:
    """What a device app needs for each runtime: runtime name -> the pip distributions it requires."""
    return {entry.name: tuple(PACKAGES.get(m, (m, ""))[0] for m in entry.requires) for entry in RUNTIMES
            if not entry.browser and not entry.emulates}    # web assets (package --app web); emulated ones


TARGETS = {"onnx": Format.ONNX, "ort": Format.ORT, "tflite": Format.TFLITE, "saved_model": Format.SAVED_MODEL,
           "executorch": Format.EXECUTORCH, "coreai": Format.COREAI, "coreml": Format.COREML}


def target_format(name: str) -> Format:
    try:
        return TARGETS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown target {name!r}", f"use --to one of {', '.join(TARGETS)}") from None


def loader_for(fmt: Format) -> LoaderEntry:
    for entry in LOADERS:
        if fmt in entry.formats:
            return entry
    raise UsageError(f"deploykit cannot load {fmt.value} models yet",
                     "convert it to ONNX or give a PyTorch model; see the README's support table")


def runtime_for(fmt: Format, name: Optional[str] = None) -> RuntimeEntry:
    """The named runtime, or the first registered one that runs ``fmt``."""
    for entry in RUNTIMES:
        if fmt in entry.formats and (name is None or entry.name == name):
            return entry
    choices = ", ".join(e.name for e in RUNTIMES if fmt in e.formats) or "none yet"
    raise UsageError(f"no runtime {name + ' ' if name else ''}runs {fmt.value} models",
                     f"runtimes for {fmt.value}: {choices}")


def plan(src: Format, dst: Format, max_hops: int = 2) -> list:
    """Every route (a list of edges) from ``src`` to ``dst``, shortest and preferred first."""
    routes, frontier = [], [(src, [])]
    for _hop in range(max_hops):
        next_frontier = []
        for fmt, path in frontier:
            for edge in EDGES:
                if fmt in edge.src and edge not in path and not edge.post_step:
                    route = path + [edge]
                    (routes if edge.dst == dst else next_frontier).append((edge.dst, route))
        frontier = next_frontier
    ranked = sorted((route for _fmt, route in routes), key=lambda r: (len(r), [e.preference for e in r]))
    return ranked
