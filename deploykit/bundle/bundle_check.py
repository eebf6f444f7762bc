"""`deploykit verify BUNDLE`: is this folder still what `deploykit package` wrote, and does its model still reproduce
its golden vectors? Nothing in a bundle is trusted (issue 26): it may have been edited by anyone on the way to a
device, including its record of sha256s. So before anything in it is read or run, verify checks that the app can
only run what verify checks (no unlisted file, no link, no listed path outside the bundle or that is no regular
file, the model the app loads); then that every listed file is unchanged; then that every file it reads has the
shape `package` writes (deploykit-bundle.json, golden.json, golden.npz, contract.json, labels, the contract the
model carries). Each finding is a problem in the verdict, "tampered: …" (exit 1), never an exception.
"""
from __future__ import annotations

import ast
import functools
import json
import math
import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np

from deploykit import contract as contracts
from deploykit import fsutil, parity
from deploykit.artifact import Artifact
from deploykit.bundle import runtime_bom
from deploykit.errors import DeploykitError, MissingDependency, ModelLoadError, UsageError
from deploykit.text import one_line, printable, quoted
from deploykit.formats import Format, coreml_manifest_paths
from deploykit.layout import Layout

APPS = ("python", "web")
BUNDLE_FILE = fsutil.BUNDLE_FILE
# The bundled model is named by its detected format, never after the user's file: that name is free text and
# goes into the generated app (issue 26: a quote in a suffix ran code on the device).
MODEL_NAME = {Format.ONNX: "model.onnx", Format.ORT: "model.ort", Format.TFLITE: "model.tflite",
              Format.COREAI: "model.aimodel", Format.COREML: "model.mlpackage"}
FORMAT_OF = {name: fmt for fmt, name in MODEL_NAME.items()}
# Apple models are folders: the bundle lists each of their files (model.aimodel/main.mlirb, ...).
FOLDER_MODELS = frozenset({Format.COREAI, Format.COREML})
_MODEL_FILES = {Format.COREAI: ("metadata.json", "main.mlirb", "main.hash"), Format.COREML: ("Manifest.json",)}
MAX_SAMPLES = 1000                  # `package --samples` allows at most this many golden vectors
MAX_GOLDEN_BYTES = 2 * 1024**3      # what golden.npz may inflate to: far above 1000 samples of any model we bundle
# read by verify itself, so they must be listed and regular
_REQUIRED = ("contract.json", "golden.json")
# The record's version: 2 since bundles carry runtime-bom.json (required from 2 on). A version-1 bundle, packaged
# before, still verifies: the BOM is build information the app never reads, so its absence is no tampering.
BUNDLE_VERSION = 2
VERSIONS = (1, 2)


def required_files(info: dict) -> tuple:
    """The files a bundle of this record's version must list (the app's own come on top)."""
    return _REQUIRED + ((runtime_bom.BOM_FILE,) if info.get("bundle", 1) >= 2 else ())


def bom_problems(folder: Path, info: dict) -> list:
    """runtime_bom's check where the record's version has a BOM."""
    return runtime_bom.problems(folder, info) if info.get("bundle", 1) >= 2 else []
_APP_FILES = {"python": ("golden.npz", "app.py", "requirements.txt"), "web": ("golden.npz", "web.json")}


class Tampered(Exception):
    """One reason a bundle is not what `package` wrote (a problem of the verdict)."""


def is_bundle(path: "str | Path") -> bool:
    return (Path(path) / BUNDLE_FILE).is_file()


def golden_report(path: Path, inputs: list, outputs: list, tolerance, timeout: float,
                  runtime=None, contract: "dict | None" = None) -> parity.ParityReport:
    """The model at ``path`` run on golden inputs (through deploykit's runner, on ``runtime`` or the format's
    default) and compared with golden outputs. A model that names its tensors otherwise than the ``contract``
    (a Core AI asset out of its export's folder takes its own identifiers) is fed and read by position, as the
    app does."""
    artifact = Artifact.open(path, layout=Layout())
    ins, outs = _positions(contract, artifact)
    result = artifact.run([{ins.get(k, k): v for k, v in feeds.items()} for feeds in inputs], runtime=runtime,
                          timeout=timeout)
    back = {theirs: ours for ours, theirs in outs.items()}
    got = [{back.get(k, k): v for k, v in out.items()} for out in result.outputs]
    report = parity.compare(outputs, got, tolerance, "golden vectors", f"{path.parent.name}/{path.name}")
    report.notes.append(f"ran on {result.ran_on}")
    return report


def _positions(contract: "dict | None", artifact: Artifact) -> tuple:
    """({contract input: model input}, {contract output: model output}) paired by position, where the names differ
    and the counts agree (the same names are paired by name: a model may list them in another order)."""
    if contract is None:
        return {}, {}
    pairs = []
    for kind, names in (("inputs", artifact.spec.input_names), ("outputs", artifact.spec.output_names)):
        ours = [t["name"] for t in contract[kind]]
        pairs.append(dict(zip(ours, names)) if len(ours) == len(names) and set(ours) != set(names) else {})
    return tuple(pairs)


def verify_bundle(folder: "str | Path", timeout: float = 600.0, runtime: "str | None" = None,
                  arm_cpu: "str | None" = None) -> parity.ParityReport:
    """The bundle's model against its golden vectors, once the bundle passed every check above; else a failed
    report naming what was tampered with. By default on deploykit's runner (what `app.py selftest` does on a
    device); on an emulated ARM runtime (``litert-arm64``, ``onnxruntime-arm64``) it is the bundle's own
    ``app.py selftest``, run by an arm64 Python with only the bundle's requirements (``bundle.arm_selftest``)."""
    folder = Path(folder)
    info, problems = _tampering(folder)
    if not problems:
        problems = _changed(folder, info["files"])
    if not problems:
        try:
            contract = _contract(folder, info)
            inputs, outputs, tolerance = _golden(folder, contract)
        except Tampered as exc:
            problems = [str(exc)]
    if problems:
        model = info.get("model") if isinstance(info.get("model"), str) else "?"
        return parity.ParityReport("golden vectors", f"{folder.name}/{quoted(model)[1:-1]}", 0,
                                   parity.PRESETS["fp32"], problems=[f"tampered: {p}" for p in problems])
    entry = _runtime_for(info, runtime)
    _refuse_if_it_cannot_run(folder, info, entry)
    if entry is not None and entry.emulates:
        from deploykit.bundle.arm_selftest import selftest_on_arm

        report = selftest_on_arm(folder, info, tolerance, entry.name, arm_cpu, timeout)
    else:
        # A web bundle is checked where it will run: its browser runtime, in headless Chromium.
        chosen = entry.name if entry is not None else info["runtime"] if info["app"] == "web" else None
        report = golden_report(folder / info["model"], inputs, outputs, tolerance, timeout, chosen, contract)
    report.notes.append("contract: " + "; ".join(contracts.summary(contract)))
    return with_bom_checked(report, folder, info)


def with_bom_checked(report: parity.ParityReport, folder: Path, info: dict) -> parity.ParityReport:
    """The runtime-bom.json check comes last: a model that was changed is named by what it breaks (its contract,
    its golden vectors); a BOM for another model fails a bundle that passed everything else."""
    if report.passed:
        report.problems.extend(f"tampered: {problem}" for problem in bom_problems(folder, info))
    return report


def _refuse_if_it_cannot_run(folder: Path, info: dict, entry) -> None:
    """A bundle whose model cannot run on this machine (Core ML off macOS) is never passed: once its files are
    found unchanged, the runtime's problem is raised (exit 3), as `verify SOURCE MODEL` raises it."""
    from deploykit.registry import runtime_for, runtime_problem

    if info["app"] == "web" or FORMAT_OF[info["model"]] not in FOLDER_MODELS:     # those runtimes say it themselves
        return
    problem = runtime_problem(entry or runtime_for(FORMAT_OF[info["model"]]), "to run the bundle's model")
    if problem is not None:
        raise MissingDependency(f"{folder.name}: its files are unchanged since packaging, but its golden vectors "
                                f"were not run: {problem.message}", problem.remedy)


def _runtime_for(info: dict, runtime: "str | None"):
    """The registry entry of the runtime asked for (None: the bundle's own), refused when it cannot run this
    bundle: another format's runtime, or an ARM one for a web app (which has no app.py to run)."""
    if runtime is None:
        return None
    from deploykit.registry import runtime_entry

    entry = runtime_entry(runtime)
    fmt = FORMAT_OF[info["model"]]
    if entry is None or fmt not in entry.formats:
        from deploykit.registry import RUNTIMES

        names = [e.name for e in RUNTIMES if fmt in e.formats]
        raise UsageError(f"--runtime {runtime!r} does not run the bundle's {info['model']}",
                         f"use {' or '.join(names)}")
    if info["app"] == "web" and entry.name != info["runtime"]:
        raise UsageError(f"a web bundle runs in the browser ({info['runtime']}), not on {entry.name}",
                         f"verify it without --runtime, or package it with --app python for {entry.name}")
    return entry


def _changed(folder: Path, files: dict) -> list:
    changed = [name for name, digest in files.items() if fsutil.sha256_of(folder / name) != digest]
    return [f"changed since packaging: {', '.join(changed)}"] if changed else []


# What `verify BUNDLE` checks before it reads or runs anything in a bundle: that the app can only run what verify
# checks. A bundle ships into other people's apps (issue 26), and app.py runs whatever lies beside it and loads its
# fixed model, so verify refuses a file not listed in deploykit-bundle.json (a dropped-in numpy.py) and any link; a
# listed path that resolves outside the bundle (``../../…`` would be read and hashed) or is no regular file (a FIFO
# or /dev/zero would block verify); a manifest ``model`` other than the one the app loads.

def _tampering(folder: Path) -> tuple:
    """(the manifest as a dict, the problems found); no problem means the listed files are the bundle's regular
    files, all inside it, and the manifest's model is the one the app loads."""
    info, problems = _manifest(folder)
    files = info.get("files")
    if problems or not isinstance(files, dict):
        return info, problems or [f"{BUNDLE_FILE} lists no files (expected name: sha256 pairs)"]
    problems += _listed(folder, files)
    problems += _unlisted(folder, files)
    if not problems:          # app.py / web.json are read only once known to be regular files inside
        problems += _model(folder, info, files)
    fmt = FORMAT_OF.get(info.get("model"))
    inside = [f"{info['model']}/{name}" for name in _MODEL_FILES.get(fmt, ())]
    missing = [name for name in required_files(info) + _APP_FILES[info["app"]] + tuple(inside) if name not in files]
    if missing:
        problems.append(f"not listed in {BUNDLE_FILE}: {', '.join(missing)}")
    return info, problems


def _manifest(folder: Path) -> tuple:
    """deploykit-bundle.json as `package` writes it: {"bundle": 2, "app", "model", "runtime", "files"}."""
    path = folder / BUNDLE_FILE
    if path.is_symlink() or not stat.S_ISREG(os.lstat(path).st_mode):
        return {}, [f"{BUNDLE_FILE} is a link or not a regular file"]
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):     # ValueError: also an int past the digit limit
        return {}, [f"{BUNDLE_FILE} is not valid JSON"]
    if not isinstance(info, dict):
        return {}, [f"{BUNDLE_FILE} is not a JSON object"]
    files = info.get("files")
    wrong = [key for key, ok in (("bundle", info.get("bundle") in VERSIONS and type(info.get("bundle")) is int),
                                 ("app", info.get("app") in APPS),
                                 ("model", isinstance(info.get("model"), str)),
                                 ("runtime", contracts._text_ok(info.get("runtime"))),
                                 ("files", isinstance(files, dict) and all(
                                     isinstance(k, str) and isinstance(v, str) for k, v in files.items())))
             if not ok]
    if wrong:
        return {}, [f"{BUNDLE_FILE} has no valid {', '.join(wrong)} (a bundle record is bundle: 1 or 2, app, model, "
                    "runtime and files: name -> sha256)"]
    return info, []


def _listed(folder: Path, files: dict) -> list:
    """Listed names that lie outside the bundle (resolved, so a link or ``..`` cannot leave it) or are no regular
    file. Checked with lstat: nothing is opened, so a FIFO or device cannot block."""
    root, problems = folder.resolve(), []
    for name in files:
        path = folder / name
        if "\0" in name or Path(name).is_absolute() or root not in path.resolve().parents:
            problems.append(f"listed path outside the bundle: {_listed_name(name)}")
            continue
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            problems.append(f"listed but missing: {_listed_name(name)}")
            continue
        if not stat.S_ISREG(mode):
            problems.append(f"listed but not a regular file (a link, FIFO, device or folder): {_listed_name(name)}")
    return problems


def _listed_name(name) -> str:
    """A name from the bundle's record as a verdict shows it: printable, one line, at most 200 characters."""
    return one_line(printable(str(name)), 200)


def _unlisted(folder: Path, files: dict) -> list:
    """Links anywhere in the bundle, and files its manifest does not list (os.walk does not follow links)."""
    problems = []
    for relative, _path, kind in fsutil.tree_entries(folder):
        if kind == "link":
            problems.append(f"a link in the bundle: {_listed_name(relative)}")
        elif relative not in files and relative != BUNDLE_FILE:
            problems.append(f"not listed in {BUNDLE_FILE}: {_listed_name(relative)}")
    return problems


def _model(folder: Path, info: dict, files: dict) -> list:
    """The manifest's model must be the one the app loads: app.py's MODEL_FILE, or web.json's model."""
    model = info.get("model")
    loaded = _loaded_by_app(folder, files)
    # A folder model is its listed files (each a regular file inside, checked above), under a real folder.
    listed = model in files or FORMAT_OF.get(model) in FOLDER_MODELS and \
        any(name.startswith(f"{model}/") for name in files) and (folder / model).is_dir()
    if model not in tuple(MODEL_NAME.values()) or not listed or loaded != model:
        return [f"the manifest names the model {quoted(model)}, but the app loads "
                f"{_listed_name(loaded) if loaded else 'no model verify can name'}"]
    return []


def _loaded_by_app(folder: Path, files: dict):
    """The model file the bundle's app loads, read from its own code or config (both listed, so hashed)."""
    try:
        if "app.py" in files:
            tree = ast.parse((folder / "app.py").read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MODEL_FILE"
                                                        for t in node.targets) \
                        and isinstance(node.value, ast.BinOp) and isinstance(node.value.right, ast.Constant):
                    return node.value.right.value
        elif "web.json" in files:
            config = json.loads((folder / "web.json").read_text(encoding="utf-8"))
            return config.get("model") if isinstance(config, dict) else None
    except (OSError, ValueError, SyntaxError, AttributeError, RecursionError, MemoryError):
        return None
    return None


# Once every listed file is the one recorded, what verify reads must still have the shape `package` writes: the
# record itself can be rewritten with new sha256s by whoever edited the files.

def _json(folder: Path, name: str):
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise Tampered(f"{name} is not valid JSON") from None


def _contract(folder: Path, info: dict) -> dict:
    """contract.json, a valid contract whose labels files hold one label per class, and the very contract the
    model carries in its metadata (what an Android or iOS app reads instead of contract.json)."""
    try:
        contract = contracts.validate(_json(folder, "contract.json"))
    except DeploykitError as exc:
        raise Tampered(f"contract.json is {exc.message}") from None
    for output in contract["outputs"]:
        if output["labels"]:
            _labels(folder, info["files"], output)
    model = info["model"]
    try:
        from deploykit.tflite_metadata import read_carried

        carried = _apple_carried(folder / model, FORMAT_OF[model]) if FORMAT_OF[model] in FOLDER_MODELS \
            else read_carried(str(folder / model), FORMAT_OF[model])
    except DeploykitError as exc:
        raise Tampered(f"{model} cannot be read: {exc.message}") from None
    except (ValueError, RecursionError):
        raise Tampered(f"the contract {model} carries is not valid JSON") from None
    if carried != contract:
        raise Tampered(f"the contract {model} carries is not contract.json" if carried is not None
                       else f"{model} carries no contract")
    if info["app"] == "web":
        from deploykit.registry import browser_runtime_for

        if info["runtime"] != browser_runtime_for(FORMAT_OF[model]).name:
            raise Tampered(f"{BUNDLE_FILE} names the runtime {quoted(info['runtime'])}, not the browser "
                           f"runtime of {model}")
    return contract


# The contract inside an Apple model sits where Apple's tools show creator metadata: Core AI's metadata.json
# (creatorDefinedMetadata, what coreai-core's AIModelAssetMetadata.set_custom writes) and Core ML's
# user-defined metadata (Metadata.userDefined in the spec: Xcode's model page, MLModelMetadataKey.creatorDefinedKey).

def _apple_carried(model: Path, fmt: Format):
    """The parsed contract the Apple model folder carries (None when it carries none)."""
    if fmt == Format.COREAI:
        try:
            metadata = json.loads((model / "metadata.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            raise Tampered(f"{model.name}/metadata.json cannot be read as UTF-8") from None
        custom = metadata.get("creatorDefinedMetadata") if isinstance(metadata, dict) else None
        text = custom.get(contracts.ONNX_KEY) if isinstance(custom, dict) else None
    else:
        spec = coreml_spec_name(model)
        if spec is None:
            raise Tampered(f"{model.name}/Manifest.json does not name the model's spec")
        text = _coreml_user_defined((model / spec).read_bytes()).get(contracts.ONNX_KEY)
    return json.loads(text) if isinstance(text, str) else None


def coreml_spec_name(package: Path) -> "str | None":
    """The spec file of a Core ML package, relative to it: what Manifest.json's root item names under Data/
    (None for a manifest that names none, or any path that would leave the package)."""
    try:
        return coreml_manifest_paths(package)[0]
    except ModelLoadError:
        return None


def coreml_with_contract(spec: bytes, text: str) -> bytes:
    """The spec with ``deploykit.contract`` in its user-defined metadata. The entry is appended as a Model message
    holding only description.metadata.userDefined: protobuf merges repeated embedded messages and a map's last
    entry wins, so every byte Core ML wrote stays as it was (no coremltools needed: it imports TensorFlow and torch)."""
    model_class = _coreml_metadata_schema()
    extra = model_class()
    extra.description.metadata.userDefined[contracts.ONNX_KEY] = text
    return spec + extra.SerializeToString()


def _coreml_user_defined(spec: bytes) -> dict:
    from google.protobuf.message import DecodeError

    try:
        return dict(_coreml_metadata_schema().FromString(spec).description.metadata.userDefined)
    except (DecodeError, RecursionError, ValueError):
        raise Tampered("the Core ML spec is not a protobuf Core ML can read") from None


@functools.lru_cache(maxsize=1)
def _coreml_metadata_schema():
    """The message class of Core ML's Model as far as description.metadata.userDefined (field numbers of
    coremltools' Model.proto: Model.description 2, ModelDescription.metadata 100, Metadata.userDefined 100); every
    other field is kept as an unknown field."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        raise MissingDependency.for_package("protobuf", "apple", "to read a Core ML spec") from None
    field = descriptor_pb2.FieldDescriptorProto
    schema = descriptor_pb2.FileDescriptorProto(name="deploykit_coreml_metadata.proto", package="deploykit.coreml",
                                                syntax="proto3")
    metadata = schema.message_type.add(name="Metadata")
    entry = metadata.nested_type.add(name="UserDefinedEntry")
    entry.options.map_entry = True
    for name, number in (("key", 1), ("value", 2)):
        entry.field.add(name=name, number=number, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    metadata.field.add(name="userDefined", number=100, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
                       type_name=".deploykit.coreml.Metadata.UserDefinedEntry")
    description = schema.message_type.add(name="ModelDescription")
    description.field.add(name="metadata", number=100, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=".deploykit.coreml.Metadata")
    model = schema.message_type.add(name="Model")
    model.field.add(name="description", number=2, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                    type_name=".deploykit.coreml.ModelDescription")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("deploykit.coreml.Model"))


def _labels(folder: Path, files: dict, output: dict) -> None:
    name, classes = output["labels"], (output["shape"] or [None])[-1]
    if name not in files:
        raise Tampered(f"the contract names the labels file {name}, which the bundle does not list")
    try:
        labels = (folder / name).read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError):
        raise Tampered(f"{name} is not UTF-8 text") from None
    if isinstance(classes, int) and len(labels) != classes:
        raise Tampered(f"{name} holds {len(labels)} labels for the {classes} classes of {output['name']}")
    if any(len(label) > contracts.MAX_TEXT for label in labels):
        raise Tampered(f"{name} holds a label over {contracts.MAX_TEXT} characters")


def _golden(folder: Path, contract: dict) -> tuple:
    """(inputs, outputs, tolerance) from golden.json and golden.npz, each array of a tensor the contract names, in
    a numeric dtype and the contract's shape."""
    golden = _json(folder, "golden.json")
    samples = golden.get("samples") if isinstance(golden, dict) else None
    if type(samples) is not int or not 1 <= samples <= MAX_SAMPLES:
        raise Tampered(f"golden.json's samples is not a whole number from 1 to {MAX_SAMPLES}")
    tolerance = _tolerance(golden.get("tolerance"))
    specs = {kind: {t["name"]: t for t in contract[f"{kind}s"]} for kind in ("input", "output")}
    wanted = {f"{kind}/{i}/{name}" for kind in specs for i in range(samples) for name in specs[kind]}
    inputs, outputs = [{} for _ in range(samples)], [{} for _ in range(samples)]
    arrays = read_golden(folder, wanted, "one array per input and output of each golden sample")
    for key, value in arrays.items():
        kind, index, name = key.split("/", 2)
        _check_array(key, value, specs[kind][name])
        (inputs if kind == "input" else outputs)[int(index)][name] = value
    return inputs, outputs, tolerance


def read_golden(folder: Path, wanted: set, what: str) -> dict:
    """golden.npz's arrays by name, refused as tampered unless it is a plain archive (no pickles, not inflating past
    MAX_GOLDEN_BYTES) holding exactly ``wanted`` (``what`` says in words what it must hold)."""
    try:
        with zipfile.ZipFile(folder / "golden.npz") as archive:
            if sum(member.file_size for member in archive.infolist()) > MAX_GOLDEN_BYTES:
                raise Tampered(f"golden.npz inflates to over {MAX_GOLDEN_BYTES:,} bytes")
        with np.load(folder / "golden.npz", allow_pickle=False) as data:
            if set(data.files) != wanted:
                raise Tampered(f"golden.npz does not hold {what}")
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, zipfile.LargeZipFile):
        raise Tampered("golden.npz is not an archive of plain numeric arrays") from None


def _check_array(key: str, value: np.ndarray, spec: dict) -> None:
    shape = spec["shape"]
    fits = len(value.shape) == len(shape) and all(not isinstance(d, int) or d < 0 or d == got
                                                   for d, got in zip(shape, value.shape))
    if value.dtype.kind not in "biuf" or not fits:
        raise Tampered(f"golden.npz's {quoted(key)} is {value.dtype} {value.shape}, not numbers of the "
                       f"contract's shape {tuple(shape)}")


def _tolerance(recorded) -> parity.Tolerance:
    """golden.json's tolerance: the fields of parity.Tolerance, finite non-negative numbers."""
    fields = {"atol", "rtol", "min_cosine", "max_mismatch", "scale_by_reference", "preset"}
    numbers = ("atol", "rtol", "min_cosine", "max_mismatch")
    if not isinstance(recorded, dict) or set(recorded) != fields or not all(
            contracts._number_ok(recorded[k]) and recorded[k] >= 0 and math.isfinite(recorded[k]) for k in numbers) \
            or type(recorded["scale_by_reference"]) is not bool or not contracts._text_ok(recorded["preset"]) \
            or not re.fullmatch(r"[\w.+-]+", recorded["preset"]):
        raise Tampered("golden.json's tolerance is not the tolerance package writes (atol, rtol, min_cosine, "
                       "max_mismatch: numbers >= 0; scale_by_reference: true or false; preset: a name)")
    return parity.Tolerance(**recorded)
