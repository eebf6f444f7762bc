"""A matrix SPEC (TOML or YAML): models × targets × precisions, expanded into independent cells.

    [matrix]
    targets = ["onnx", "tflite"]          # required
    precisions = ["fp32", "dynamic"]      # fp32 (no --quantize), fp16, dynamic, int8; default ["fp32"]
    route = "first"                       # or "all" (export --route all)
    bench = ["torch", "onnxruntime"]      # bench rows per cell; default: each format's native row; [] = no bench
    verify_runtimes = ["litert-arm64"]    # also verify there (+ arm_cpu = "cortex-a53"; default cortex-a76)
    [[models]]
    path = "samples/two_layer_net.pt2"    # or factory = "pkg.mod:make" (+ weights), or folder = "zoo/"

Every value is checked here, before any cell runs, and a bad one is a UsageError naming the key and the
spec file. Relative paths are relative to the spec file's folder. This module imports no framework.
"""
from __future__ import annotations

import contextlib
import fnmatch
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from deploykit.errors import ModelLoadError, UsageError
from deploykit.matrix.spec_runtimes import arm_cpu, bench_rows, known_runtimes
from deploykit.text import quoted

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
NATIVE_BENCH_ROWS = ("torch", "onnxruntime", "litert", "tensorflow", "executorch")
MATRIX_KEYS = {"targets", "precisions", "route", "bench", "verify_runtimes", "arm_cpu", "samples", "seed", "timeout",
               "retries", "iterations", "warmup", "memory_mb", "name"}
MODEL_KEYS = {"path", "factory", "folder", "name", "inputs", "inputs_npz", "calibration", "calibration_samples",
              "calibration_normalize", "io_dtype", "weights", "trust_pickle", "labels", "normalize", "task",
              "targets", "precisions", "expect_fail"}
OPTION_KEYS = ("inputs", "inputs_npz", "calibration", "calibration_samples", "calibration_normalize", "io_dtype",
               "weights", "trust_pickle", "labels", "normalize", "task")
PATH_KEYS = ("inputs_npz", "calibration", "weights", "labels")
STRING_OPTIONS = ("io_dtype", "task", "normalize", "calibration_normalize")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the matrix: where it is, and the flags its cells pass to export (``options``)."""

    name: str
    source: str                     # a file or folder path, or package.module:factory
    options: dict                   # OPTION_KEYS given for it (paths made absolute)
    targets: tuple
    precisions: tuple
    expect_fail: tuple = ()         # "target/precision" patterns expected to fail (reported xfail, not a failure)


@dataclass(frozen=True)
class Cell:
    """One job: a model to one target at one precision — convert, verify, bench."""

    model: ModelEntry
    target: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.model.name} → {self.target} {self.precision}"

    @property
    def expected_to_fail(self) -> bool:
        return any(fnmatch.fnmatch(f"{self.target}/{self.precision}", p) for p in self.model.expect_fail)


@dataclass(frozen=True)
class MatrixSpec:
    """The parsed spec: its models and the settings every cell shares."""

    path: str
    name: str
    models: tuple
    route: str = "first"
    bench: tuple = NATIVE_BENCH_ROWS
    verify_runtimes: tuple = ()
    arm_cpu: Optional[str] = None           # the core of the emulated ARM runtimes in verify_runtimes
    samples: int = 5
    seed: int = 0
    timeout: float = 1800.0
    retries: int = 1
    iterations: int = 50
    warmup: int = 5
    memory_mb: int = 2048
    skipped: tuple = field(default=())       # files in a scanned folder that are not models, with the reason

    def cells(self) -> list:
        """Every (model, target, precision), in spec order."""
        return [Cell(m, t, p) for m in self.models for t in m.targets for p in m.precisions]

    def settings(self) -> dict:
        """What every cell's result depends on besides its model (part of each cell key)."""
        settings = {"route": self.route, "bench": list(self.bench), "verify_runtimes": list(self.verify_runtimes),
                    "samples": self.samples, "seed": self.seed, "iterations": self.iterations, "warmup": self.warmup}
        # Only when given: the cell keys of specs without it stay what they were (their stores are reused).
        return {**settings, "arm_cpu": self.arm_cpu} if self.arm_cpu else settings


def load_spec(path: str) -> MatrixSpec:
    """Read and check a TOML (.toml) or YAML (.yaml/.yml) matrix spec."""
    spec_path = Path(path)
    if not spec_path.is_file():
        raise UsageError(f"{path}: no such spec file", "give a TOML or YAML matrix spec (see `deploykit matrix --help`)")
    data = _parse(spec_path)
    where = spec_path.name
    if not isinstance(data, dict) or not isinstance(data.get("matrix"), dict):
        raise UsageError(f"{where} has no [matrix] table", "add [matrix] with targets = [...]")
    unknown = set(data) - {"matrix", "models"}
    if unknown:
        raise UsageError(f"{where}: unknown top-level key {quoted(sorted(unknown, key=str)[0])}", "use [matrix] and [[models]]")
    settings = _matrix_table(data["matrix"], where)
    models, skipped = _models(data.get("models"), settings.pop("axes"), spec_path.parent.resolve(), where)
    return MatrixSpec(path=str(spec_path), name=settings.pop("name", spec_path.stem), models=models,
                      skipped=tuple(skipped), **settings)


def _parse(path: Path) -> dict:
    text = _read(path)
    with _recursion_limit(PARSE_RECURSION_LIMIT):
        return _parse_text(text, path)


# tomllib and PyYAML parse nesting recursively, and a hostile spec is refused by the RecursionError Python's
# default limit raises. A library in the same process may have raised the limit (importing onnx2tf sets it to
# 2**31 - 1), and then the same spec parses far deeper — up to overflowing the C stack: parse under the default.
PARSE_RECURSION_LIMIT = 1000


@contextlib.contextmanager
def _recursion_limit(limit: int):
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(min(previous, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


def _parse_text(text: str, path: Path) -> dict:
    if path.suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(text, path.name)
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path.name} is not valid TOML: {exc}", "fix the spec (YAML specs end in .yaml)") from None
    except RecursionError:      # tomllib parses nested arrays recursively
        raise UsageError(f"{path.name} nests arrays or tables too deeply to be a matrix spec",
                         "fix the spec: a matrix spec is a [matrix] table and [[models]] tables") from None


# A spec is a short list of models: 1 MiB holds thousands. The cap keeps a 12 GB file (or a sparse one) from
# being read into memory before it is refused.
MAX_SPEC_BYTES = 1 << 20
# What YAML aliases may add to a spec, in nodes plus characters of the values they repeat. A spec has a use for
# them (a block of shared model options, `<<: *defaults`), but every value of a spec is walked — checked, hashed
# into cell keys, quoted in messages — so 9 nested aliases of 9 (the "billion laughs") would expand a 400-byte
# file to gigabytes. 100,000 is some 500 models' worth of shared options.
MAX_ALIAS_EXPANSION = 100_000


def _parse_yaml(text: str, name: str):
    """YAML through PyYAML's SafeLoader in two steps: compose the node graph (an alias is the same node again, so
    the graph is as small as the text), measure what the aliases would expand it to, and only then build the
    Python objects — a bomb is refused before anything big exists."""
    try:
        import yaml
    except ImportError:
        raise UsageError(f"{name} is YAML and PyYAML is not installed",
                         "pip install pyyaml, or write the spec as TOML") from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)      # its reader refuses control characters already here: inside the try
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node, name)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UsageError(f"{name} is not valid YAML: {' '.join(str(exc).split())[:300]}", "fix the spec") from None
    except RecursionError:      # PyYAML composes and constructs nested nodes recursively
        raise UsageError(f"{name} nests lists or mappings too deeply to be a matrix spec", "fix the spec") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_aliases(root, name: str) -> None:
    """Refuse a node graph whose aliases add more than MAX_ALIAS_EXPANSION to it, or that contains itself."""
    import yaml

    sizes: dict = {}        # id(node) -> its expanded size; None while it is being measured (seen again: a cycle)
    unique = [0]            # the graph's own size: each node once

    def size(node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] is None:
                raise UsageError(f"{name}: a YAML alias refers to a node that contains it (a recursive value)",
                                 "write the value out: a matrix spec has no recursive values")
            return sizes[id(node)]
        sizes[id(node)] = None
        if isinstance(node, yaml.ScalarNode):
            total = own = 1 + len(node.value)
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
            total, own = 1 + sum(size(child) for child in children), 1
        unique[0] += own
        sizes[id(node)] = total
        return total

    if size(root) - unique[0] > MAX_ALIAS_EXPANSION:
        raise UsageError(f"{name}: its YAML aliases would repeat over {MAX_ALIAS_EXPANSION:,} nodes and characters "
                         "(an alias bomb)", "write the spec without nested aliases")


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})", "check the path and its permissions") from None
    if len(data) > MAX_SPEC_BYTES:
        raise UsageError(f"{path.name} is over {MAX_SPEC_BYTES >> 20} MiB, too large for a matrix spec",
                         "give the spec file itself (a TOML or YAML list of models)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path.name} is not UTF-8 text", "give a TOML or YAML matrix spec") from None


def _matrix_table(table: dict, where: str) -> dict:
    unknown = set(table) - MATRIX_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown [matrix] key {quoted(sorted(unknown, key=str)[0])}", f"use {', '.join(sorted(MATRIX_KEYS))}")
    axes = {"targets": _targets(table.get("targets"), where, "[matrix] targets"),
            "precisions": _precisions(table.get("precisions", ["fp32"]), where, "[matrix] precisions")}
    route = table.get("route", "first")
    if route not in ("first", "all"):
        raise UsageError(f"{where}: [matrix] route must be \"first\" or \"all\" (got {quoted(route)})", "fix the spec")
    out = {"route": route}
    if "bench" in table:
        value = table["bench"]       # false: no bench at all
        out["bench"] = () if value is False else bench_rows(_strings(value, where, "[matrix] bench"), where)
    if "verify_runtimes" in table:
        out["verify_runtimes"] = tuple(_strings(table["verify_runtimes"], where, "[matrix] verify_runtimes"))
    for key in NUMBERS:
        if key in table:
            out[key] = _number(table[key], key, where, f"[matrix] {key}")
    known_runtimes(out.get("verify_runtimes", ()), where)
    if "arm_cpu" in table:
        out["arm_cpu"] = arm_cpu(table["arm_cpu"], out.get("verify_runtimes", ()), where)
    if "name" in table:
        out["name"] = _name(table["name"], where, "[matrix] name")
    return {"axes": axes, **out}


def _targets(value, where: str, key: str) -> tuple:
    from deploykit.registry import TARGETS

    names = _strings(value, where, key)
    if not names:
        raise UsageError(f"{where}: {key} is missing or empty", f"e.g. targets = [\"onnx\", \"tflite\"]")
    bad = [n for n in names if n not in TARGETS]
    if bad:
        raise UsageError(f"{where}: {key} has unknown target {quoted(bad[0])}", f"use {', '.join(TARGETS)}")
    return tuple(dict.fromkeys(names))


def _precisions(value, where: str, key: str) -> tuple:
    names = _strings(value, where, key)
    bad = [n for n in names if n not in PRECISIONS]
    if bad or not names:
        raise UsageError(f"{where}: {key} has unknown precision {quoted(bad[0]) if bad else '(none)'}",
                         f"use {', '.join(PRECISIONS)}")
    return tuple(dict.fromkeys(names))


def _strings(value, where: str, key: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{where}: {key} must be a list of strings (got {quoted(value)})", "fix the spec")
    return value


# Every number a spec holds: (kind, lowest, highest, example). The ranges are what a matrix can mean, not what
# Python can hold: `retries = 1e20` (or a 21-digit integer) would retry a crashing cell forever, a timeout of
# 1e300 s overflows the clock the harness waits on, a seed must fit numpy's 32-bit generator, and a huge
# samples/iterations count is a run that never ends. Floats are refused where a count is meant.
NUMBERS = {
    "samples": (int, 1, 10_000, "samples = 5"),                 # verify's inputs per cell
    "seed": (int, 0, 2**32 - 1, "seed = 0"),                    # numpy.random.default_rng's range
    "timeout": (float, 1e-3, 7 * 86_400, "timeout = 1800"),     # seconds per phase: at most a week
    "retries": (int, 0, 10, "retries = 1"),                     # tries after the first, per phase
    "iterations": (int, 1, 1_000_000, "iterations = 50"),       # timed runs per bench case
    "warmup": (int, 0, 100_000, "warmup = 5"),
    "memory_mb": (int, 1, 4 * 2**20, "memory_mb = 2048"),       # Ray's per-cell request: at most 4 TiB
    "calibration_samples": (int, 1, 100_000, "calibration_samples = 100"),   # a model's int8 calibration inputs
}


def _number(value, name: str, where: str, key: str):
    """``value`` as the number ``name`` means, inside its documented range (NUMBERS), or a UsageError."""
    kind, low, high, example = NUMBERS[name]
    wrong_kind = isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float))
    if wrong_kind:
        raise UsageError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'} (got {quoted(value)})",
                         f"e.g. {example}")
    if not math.isfinite(value) or not low <= value <= high:
        raise UsageError(f"{where}: {key} must be between {_plain(low)} and {_plain(high)} (got {quoted(value)})",
                         f"e.g. {example}")
    return kind(value)


def _plain(number) -> str:
    return f"{number:,}" if isinstance(number, int) else f"{number:g}"


def _name(value, where: str, key: str) -> str:
    """A display name: a short string (it titles the report and names rows, never a path)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise UsageError(f"{where}: {key} must be a string of 1 to 200 characters (got {quoted(value)})",
                         'e.g. name = "zoo"')
    return value


def _models(entries, axes: dict, root: Path, where: str) -> tuple:
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{where} lists no models", "add [[models]] tables with path = \"...\"")
    found, skipped = [], []
    for index, entry in enumerate(entries, 1):
        key = f"models[{index}]"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: {key} must be a table", "write [[models]] with path = \"...\"")
        found += _entry_models(entry, axes, root, where, key, skipped)
    names = [m.name for m in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{where}: two models are named {quoted(twice[0])}", "give each a distinct name = \"...\"")
    return tuple(found), skipped


def _entry_models(entry: dict, axes: dict, root: Path, where: str, key: str, skipped: list) -> list:
    unknown = set(entry) - MODEL_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown {key} key {quoted(sorted(unknown, key=str)[0])}", f"use {', '.join(sorted(MODEL_KEYS))}")
    kinds = [k for k in ("path", "factory", "folder") if k in entry]
    if len(kinds) != 1:
        raise UsageError(f"{where}: {key} needs exactly one of path, factory or folder (got {kinds or 'none'})",
                         "e.g. path = \"model.pt2\"")
    options = _options(entry, root, where, key)
    targets = _targets(entry["targets"], where, f"{key} targets") if "targets" in entry else axes["targets"]
    precisions = (_precisions(entry["precisions"], where, f"{key} precisions") if "precisions" in entry
                  else axes["precisions"])
    expect = tuple(_strings(entry.get("expect_fail"), where, f"{key} expect_fail"))
    prefix = _name(entry["name"], where, f"{key} name") if "name" in entry else None
    if kinds[0] == "folder":
        sources = _scan(_path(entry["folder"], root, where, key, must_be_dir=True), skipped)
        return [ModelEntry(f"{prefix}/{s.name}" if prefix else s.name, str(s), options, targets, precisions, expect)
                for s in sources]
    if kinds[0] == "factory" and not isinstance(entry["factory"], str):
        raise UsageError(f"{where}: {key} factory must be a string (got {quoted(entry['factory'])})",
                         'e.g. factory = "package.module:make_model"')
    source = entry["factory"] if kinds[0] == "factory" else str(_path(entry["path"], root, where, key))
    name = prefix or (source if kinds[0] == "factory" else Path(source).name)
    return [ModelEntry(name, source, options, targets, precisions, expect)]


def _options(entry: dict, root: Path, where: str, key: str) -> dict:
    options = {k: entry[k] for k in OPTION_KEYS if k in entry}
    for name in PATH_KEYS:
        if name in options:
            options[name] = str(_path(options[name], root, where, f"{key} {name}"))
    if "inputs" in options:
        options["inputs"] = _strings(options["inputs"], where, f"{key} inputs")
    for name in STRING_OPTIONS:     # checked here: the option objects quote (or hash) what they are given
        if name in options and not isinstance(options[name], str):
            raise UsageError(f"{where}: {key} {name} must be a string (got {quoted(options[name])})", "fix the spec")
    if "calibration_samples" in options:
        options["calibration_samples"] = _number(options["calibration_samples"], "calibration_samples", where,
                                                 f"{key} calibration_samples")
    if not isinstance(options.get("trust_pickle", False), bool):
        raise UsageError(f"{where}: {key} trust_pickle must be true or false (got {quoted(options['trust_pickle'])})",
                         "fix the spec")
    try:      # the checks the export's own option objects make, now rather than in every cell
        _check_like_export(options)
    except UsageError as exc:
        raise UsageError(f"{where}: {key}: {exc.message}", exc.remedy) from None
    return options


def _check_like_export(options: dict) -> None:
    """The checks the export's own request makes (int8 stands in for every precision: it uses every flag)."""
    export_request("", options, "onnx", "int8")


# spec key -> QuantizeOptions field
QUANTIZE_KEYS = {"calibration": "calibration", "calibration_samples": "samples", "calibration_normalize": "normalize",
                 "io_dtype": "io_dtype"}


def export_request(source: str, options: dict, target: str, precision: str, settings: Optional[dict] = None):
    """The ExportRequest of one cell: its model's flags (``options``), its target and precision, and the spec's
    ``settings`` (route, samples, seed, timeout). What a flag leaves out is ExportRequest's own default; the
    cell's child gets it as ``to_dict()`` and runs ``deploykit.export`` on it."""
    from deploykit.api import load_options
    from deploykit.contract import ContractChoices
    from deploykit.options import QuantizeOptions, VerifyOptions
    from deploykit.request import ExportRequest
    from deploykit.spec import parse_input_arg

    settings = settings or {}
    for text in options.get("inputs", ()):      # said as a spec value, not as a --input flag
        try:
            parse_input_arg(text)
        except ValueError as exc:
            raise UsageError(f"inputs: {exc}", "fix the --input text in the spec") from None
    verify = VerifyOptions(**{k: settings[k] for k in ("samples", "seed", "timeout") if k in settings},
                           **({"inputs_npz": options["inputs_npz"]} if "inputs_npz" in options else {}))
    load = load_options(options.get("inputs", ()), options.get("weights"), bool(options.get("trust_pickle")),
                        verify.timeout)
    quantize = None if precision == "fp32" else QuantizeOptions(
        precision, **{field: options[key] for key, field in QUANTIZE_KEYS.items() if key in options})
    contract = (ContractChoices(options.get("labels"), options.get("normalize"), options.get("task"))
                if any(options.get(k) for k in ("labels", "normalize", "task")) else None)
    return ExportRequest(source, target, force=True, load=load, verify=verify, quantize=quantize, contract=contract,
                         **({"route": settings["route"]} if "route" in settings else {}))


def _path(value, root: Path, where: str, key: str, must_be_dir: bool = False) -> Path:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: {key} must be a path (got {quoted(value)})", "fix the spec")
    path = (root / value).resolve()
    if not path.exists():
        raise UsageError(f"{where}: {key} {quoted(value)} does not exist (looked in {root})",
                         "paths in a spec are relative to the spec file's folder")
    if must_be_dir and not path.is_dir():
        raise UsageError(f"{where}: {key} folder {quoted(value)} is not a folder", "use path = for a single model")
    return path


def _scan(folder: Path, skipped: list) -> list:
    """The models in a folder, recognised by their bytes (formats.detect), not their names."""
    from deploykit.formats import detect

    models = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith(".manifest.json"):
            continue
        try:
            detect(entry)
        except (ModelLoadError, UsageError) as exc:
            skipped.append({"file": str(entry), "reason": exc.message})
            continue
        models.append(entry)
    if not models:
        raise UsageError(f"{folder} holds no model file deploykit recognises", "check the folder given as folder =")
    return models


def cell_options(cell: Cell, spec: MatrixSpec) -> Optional[dict]:
    """The cell's own options: what its key hashes besides the model's bytes."""
    return {"target": cell.target, "precision": cell.precision, "model_options": cell.model.options,
            **spec.settings()}


def cell_export(cell: Cell, spec: MatrixSpec):
    """The ExportRequest the cell runs (its output is chosen by the cell's child, where it writes)."""
    return export_request(cell.model.source, cell.model.options, cell.target, cell.precision,
                          {"route": spec.route, "samples": spec.samples, "seed": spec.seed, "timeout": spec.timeout})
