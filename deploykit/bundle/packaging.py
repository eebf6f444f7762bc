"""`deploykit package`: a folder an engineer copies to a device — the model with its contract inside, the
contract as JSON, labels, golden vectors from the source framework, and a runtime-only app that proves itself.

    bundle/
      model.onnx | model.ort | model.tflite   the artifact with the contract inside (ONNX metadata_props, kept in
                                  the .ort's own metadata_props, or TFLite Metadata with the labels packed in);
                                  re-run on the golden vectors, since its bytes changed
      model.aimodel/ | model.mlpackage/   an Apple folder model, every file of it listed (the contract in Core AI's
                                  metadata.json / Core ML's user-defined metadata); a Core ML package cannot run off
                                  macOS, so its bundle is written only with keep_unverified, marked unverified
      contract.json               what the app feeds and reads (deploykit.contract)
      labels.txt                  with --labels
      golden.npz, golden.json     inputs and the source's outputs, in the artifact's layout; the tolerance preset
      app.py, requirements.txt    `python app.py selftest` / `predict`; numpy + one runtime (+ Pillow for images)
      runtime-bom.json            what the app's runtime must contain: operators (and types) for a selective
                                  build, and the readiness tables (deploykit.bundle.runtime_bom; the app never reads it)
      deploykit-bundle.json       what made it, and the sha256 of every file

Golden vectors need the source model: it is found through the artifact's manifest (its sha256 must still
match) or given with ``source``.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from deploykit import contract as contracts
from deploykit import fsutil, manifest
from deploykit.artifact import Artifact
from deploykit.bundle import runtime_bom
# verify BUNDLE lives in bundle_check; its names stay importable from here (api, tests and docs use them)
from deploykit.bundle.bundle_check import (APPS, BUNDLE_FILE, BUNDLE_VERSION, FOLDER_MODELS, MODEL_NAME, _tampering,  # noqa: F401
                                           coreml_spec_name, coreml_with_contract, golden_report, is_bundle,
                                           verify_bundle)
from deploykit.checking.checker import int8_feeds, make_checker, trusted_manifest
from deploykit.errors import ParityError, UsageError
from deploykit.formats import Format, coreml_manifest_paths
from deploykit.model import LoadOptions, load_model
from deploykit.options import PRECISION_OF, VerifyOptions
from deploykit.registry import browser_runtime_for, require, resolve, runtime_for

# An .ort (ONNX Runtime Mobile's form, the only one a minimal ONNX Runtime build loads) runs on onnxruntime too.
RUNTIME_OF = {Format.ONNX: ("onnxruntime", "onnxruntime"), Format.ORT: ("onnxruntime", "onnxruntime"),
              Format.TFLITE: ("litert", "ai-edge-litert"),
              Format.COREAI: ("coreai", "coreai-core"), Format.COREML: ("coreml", "coremltools")}
# What coreai-core writes into an .aimodel: main.hash is the sha256 of main.mlirb (checked before packaging).
COREAI_FILES = ("metadata.json", "main.mlirb", "main.hash")
WEB_FORMATS = frozenset({Format.ONNX, Format.TFLITE})


@dataclass
class PackageOptions:
    """What the bundle says beyond the artifact: labels, normalisation, task, how many golden vectors."""

    app: str = "python"
    labels: Optional[str] = None           # text file, one class name per line, in class order
    normalize: Optional[str] = None        # unit | imagenet | symmetric | mean=..,std=.. (image inputs)
    task: Optional[str] = None             # classify | embed | raw (inferred when not given)
    samples: int = 8                       # golden vectors
    source: Optional[str] = None           # the source model, when the artifact's manifest does not name it
    keep_unverified: bool = False          # write the bundle of a model no runtime here can run (Core ML off macOS)
    verify: VerifyOptions = field(default_factory=VerifyOptions)

    @functools.cached_property
    def choices(self) -> "contracts.ContractChoices":
        return contracts.ContractChoices(labels_file=self.labels, normalize=self.normalize, task=self.task)

    def __post_init__(self) -> None:
        self.choices      # a bad --labels, --normalize or --task fails here, before anything runs
        if self.app not in APPS:
            raise UsageError(f"unknown --app {self.app!r}", f"use {', '.join(APPS)} (Android/iOS apps read the "
                             "contract from the model's metadata)")
        if not isinstance(self.samples, int) or not 1 <= self.samples <= 1000:
            raise UsageError(f"--samples must be between 1 and 1000 for golden vectors (got {self.samples!r})",
                             "e.g. --samples 8")


def package(artifact_path: str, output: str, options: PackageOptions, force: bool = False) -> dict:
    """Write the bundle of ``artifact_path`` into the folder ``output`` (atomically); returns its description."""
    folder_files = model_folder_files(artifact_path) if Path(artifact_path).is_dir() else None
    artifact = Artifact.open(artifact_path)
    if artifact.format not in RUNTIME_OF:
        raise UsageError(f"{artifact_path} is a {artifact.format.value}; bundles carry .onnx, .ort, .tflite, "
                         ".aimodel or .mlpackage models", "export to onnx, ort, tflite or coreai first")
    if options.app == "web" and artifact.format not in WEB_FORMATS:
        # deploykit's onnxruntime-web runner loads .onnx only, so a web bundle of an .ort could not be verified
        raise UsageError(f"a web bundle runs .onnx or .tflite models in the browser, not {artifact.format.value}",
                         "package the .onnx it was converted from with --app web, or this one with --app python"
                         if artifact.format == Format.ORT else "package it with --app python")
    if artifact.format in FOLDER_MODELS:
        _check_folder_model(artifact_path, artifact.format, folder_files)
    unverified = _unverified_reason(artifact, options.app, options.keep_unverified)
    recorded = manifest.read(artifact_path) or {}
    source_hash: dict = {}       # the source is hashed once, for both checks
    source = _source(artifact_path, recorded, options, source_hash)
    # As in verify: the manifest's precision picks the preset only if it records these very files.
    stored, _why = trusted_manifest(artifact, source, source_hash)
    # The user's choices now, else those recorded at export ("editable later").
    choices = options.choices.over(contracts.ContractChoices.from_dict(recorded.get("contract_choices")))
    out = Path(output).absolute()
    if fsutil.overlaps(out, artifact_path) or (Path(str(source.path)).exists() and fsutil.overlaps(out, source.path)):
        raise UsageError(f"the bundle folder {out} holds the artifact or its source", "choose another -o")
    with fsutil.parents_removed_on_failure(out):
        fsutil.prepare_output(out, force, directory=True)
        return _package(artifact, source, stored, choices, out, options, force, unverified)


def _unverified_reason(artifact: Artifact, app: str, keep: bool) -> str:
    """Why the bundle's model cannot be checked against its golden vectors here ('' when it can): its runtime
    cannot run on this machine (Core ML off macOS). Refused unless kept, as export refuses such a model; a missing
    package is no such reason (exit 3, install it)."""
    if app == "web":                    # checked on its browser runtime
        return ""
    entry = runtime_for(artifact.format)
    require(entry.requires, "to check the bundle's model against its golden vectors")
    reason = resolve(entry.check)() if entry.check else ""
    if reason and not keep:
        raise UsageError(f"{artifact.path} cannot be checked against its golden vectors here: {reason}",
                         "pass --keep-unverified to write the bundle marked unverified (exit 6; `python app.py "
                         "selftest` checks it where its runtime runs), or package it there")
    return reason


def _package(artifact: Artifact, source, stored: dict, choices, out: Path, options: PackageOptions,
             force: bool, unverified: str = "") -> dict:
    labels = list(choices.labels) if choices.labels else None
    precision = stored.get("precision") or "fp32"
    verify = VerifyOptions(**{**options.verify.__dict__, "samples": options.samples,
                              "precision": options.verify.precision or artifact_precision(precision)})
    golden_inputs, golden_outputs, tolerance = golden_vectors(source, artifact, verify, stored)
    contract = contracts.build(contracts.with_source_ranges(artifact.spec, source.spec), task=choices.task,
                               labels=labels, normalize=choices.normalize,
                               calibration_normalize=_calibration_normalize(stored),
                               probabilities=_probabilities(golden_outputs, artifact))
    with fsutil.staging_dir(out.parent) as stage:
        folder = stage / out.name
        folder.mkdir()
        model_file = _write_model(artifact, folder, contract, labels)
        if not unverified:
            _check_bundle_model(folder / model_file, golden_inputs, golden_outputs, tolerance, verify,
                                browser_runtime_for(artifact.format).name if options.app == "web" else None, contract)
        _write_files(folder, artifact, model_file, contract, labels, golden_inputs, golden_outputs, tolerance, source,
                     options.app, verify.timeout, unverified)
        fsutil.publish([(folder, out)], force=force)
    return describe_bundle(out)


def _source(artifact_path: str, stored: dict, options: PackageOptions, source_hash: dict):
    """The source model: given, or the one the manifest names, if its file is still the one that was exported."""
    recorded = stored.get("source") or {}
    path = options.source or recorded.get("path")
    if not path:
        raise UsageError(f"{artifact_path} has no deploykit manifest naming its source, and golden vectors are the "
                         "source's outputs", "give the source model with --source MODEL (or export the artifact "
                         "with `deploykit export`)")
    if not options.source and recorded.get("sha256"):
        source_hash["sha256"] = fsutil.sha256_of(path)
    if not options.source and recorded.get("sha256") and source_hash["sha256"] != recorded["sha256"]:
        raise UsageError(f"the source recorded in {artifact_path}'s manifest ({path}) is missing or has changed",
                         "give the source model with --source MODEL")
    weights = (recorded.get("weights") or {}).get("path") if not options.source else None
    return load_model(path, LoadOptions(weights=weights, timeout=options.verify.timeout))


def artifact_precision(precision: str) -> str:
    """The tolerance preset of an artifact of this --quantize precision."""
    return PRECISION_OF.get(precision, precision) if precision in PRECISION_OF else "fp32"


def golden_vectors(source, artifact: Artifact, verify: VerifyOptions, stored: Optional[dict] = None) -> tuple:
    """(inputs, outputs, tolerance): seeded feeds (plus --inputs) in the artifact's layout, and the *source's*
    outputs for them, permuted and named as the artifact returns them. An int8 artifact gets the feeds verify
    judges it on (normal and uniform: int8 clips what its calibration never saw)."""
    checker = make_checker(source, verify)
    chosen = _calibration_golden(source, stored or {}, verify.samples) or \
        int8_feeds(source, stored or {}, replace(verify, precision=None))
    keyed = [((chosen[0], i), f) for i, f in enumerate(chosen[1])] if chosen else checker.feeds(verify.samples)
    references = checker.reference.outputs_for(keyed)
    layout = artifact.layout
    inputs = [checker.feeds_for(artifact, feeds, layout) for _key, feeds in keyed]
    names = artifact.spec.output_names
    inputs = [{name: _as_input_dtype(value, artifact, name) for name, value in feeds.items()} for feeds in inputs]
    outputs = []
    for reference in references:
        if len(reference) != len(names):
            raise UsageError(f"the source returns {len(reference)} outputs and {artifact.label} {len(names)}",
                             "package an artifact of this source")
        renamed = dict(zip(names, reference.values())) if set(reference) != set(names) else reference
        outputs.append({name: _inverse_permute(value, layout.output_perms.get(name))
                        for name, value in renamed.items()})
    return inputs, outputs, checker.tolerance


def _calibration_golden(source, stored: dict, samples: int) -> Optional[tuple]:
    """A quantized artifact's golden inputs come from the data it was calibrated with (held-out items first), when
    that data is still there: it is judged on its distribution, as export judged it, not on random inputs it clips."""
    from deploykit.exporting.calibration import calibration_feeds

    calibration = stored.get("calibration") or {}
    data = calibration.get("source")
    if stored.get("precision") in (None, "fp32") or not isinstance(data, str) or data == "random" \
            or not Path(data).exists():
        return None
    used, held_out, _warning = calibration_feeds(source.spec, data, int(calibration.get("samples") or 1),
                                                 calibration.get("normalize") or "unit")
    return ("calibration data", (held_out + used)[:samples])


def _as_input_dtype(value: np.ndarray, artifact: Artifact, name: str) -> np.ndarray:
    """Golden inputs in the dtype the artifact declares (an int64 source id fed to an int32 ONNX input), except
    floats for a quantized input: the app quantizes those with the tensor's own scale."""
    declared = {t.name: t.dtype for t in artifact.spec.inputs}.get(name)
    if declared is None or value.dtype.kind == "f" and np.dtype(declared).kind in "iu":
        return value
    return value.astype(declared)


def _inverse_permute(value: np.ndarray, perm) -> np.ndarray:
    """The artifact's own layout of a source-layout output (the recorded perm maps artifact -> source)."""
    return np.transpose(value, np.argsort(perm)) if perm else value


def _calibration_normalize(stored: dict) -> Optional[str]:
    calibration = stored.get("calibration") or {}
    return calibration.get("normalize") if calibration.get("source") not in (None, "random") else None


def _probabilities(outputs: list, artifact: Artifact) -> Optional[bool]:
    """Whether the one 2-D output already holds probabilities (non-negative rows summing to 1)."""
    if len(artifact.spec.outputs) != 1 or not outputs:
        return None
    values = np.concatenate([np.asarray(o[artifact.spec.output_names[0]], np.float64) for o in outputs])
    if values.ndim != 2:
        return None
    return bool((values >= 0).all() and np.allclose(values.sum(axis=1), 1.0, atol=1e-3))


def _write_model(artifact: Artifact, folder: Path, contract: dict, labels_text: Optional[list]) -> str:
    """The model file in the bundle with the contract inside: ONNX metadata_props (in an .ort, the same entries in
    the ORT format's own metadata_props), or TFLite Metadata (with the labels and contract.json packed into the
    file)."""
    name = MODEL_NAME[artifact.format]
    if artifact.format in FOLDER_MODELS:
        _copy_folder_model(Path(artifact.path), folder / name, artifact.format, contract)
        return name
    if artifact.format == Format.ORT:
        from deploykit.ort_metadata import with_metadata

        fsutil.write_bytes_atomic(folder / name, with_metadata(Path(artifact.path).read_bytes(),
                                                               contracts.onnx_metadata(contract)))
        return name
    if artifact.format == Format.TFLITE:
        from deploykit.tflite_metadata import embed

        labels = _labels_of(contract, labels_text)
        fsutil.write_bytes_atomic(folder / name, embed(Path(artifact.path).read_bytes(), contract, labels,
                                                       Path(artifact.path).stem,
                                                       f"{contract['task']} model packaged by deploykit"))
        return name
    import onnx

    proto = onnx.load(artifact.path, load_external_data=True)
    props = contracts.onnx_metadata(contract)
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    fsutil.write_bytes_atomic(folder / name, proto.SerializeToString())     # what onnx.save writes (weights inline)
    return name


# An Apple model is a folder. The bundle carries each of its files, listed with its sha256 like any other; nothing
# in it is followed: a link inside is refused (its target would be copied, and hashed, as the model's).

def model_folder_files(path: "str | Path") -> list:
    """The relative names of the regular files in the model folder ``path``; a link or anything that is neither
    file nor folder inside is refused (exit 2), never followed."""
    names = []
    for relative, _entry, kind in fsutil.tree_entries(path):
        if kind == "link":
            raise UsageError(f"{path} holds a link, {relative!r}: a model folder's files are copied, never "
                             "followed", "replace the link by the file itself, or export the model again")
        if kind == "other":
            raise UsageError(f"{path} holds {relative!r}, which is not a regular file (a FIFO, device or "
                             "socket)", "remove it, or export the model again")
        names.append(relative)
    return names


def _check_folder_model(path: str, fmt: Format, files: list) -> None:
    """A complete Core AI asset (metadata.json, main.mlirb and main.hash, the sha256 of main.mlirb, as coreai-core
    writes them) or Core ML package (Manifest.json and the spec it names): else one line, exit 2."""
    if fmt == Format.COREAI:
        missing = [name for name in COREAI_FILES if name not in files]
        if missing:
            raise UsageError(f"{path} lacks {', '.join(missing)} (coreai-core writes {', '.join(COREAI_FILES)})",
                             "export the model again")
        if (Path(path) / "main.hash").read_bytes() != hashlib.sha256((Path(path) / "main.mlirb").read_bytes()).digest():
            raise UsageError(f"{path}/main.mlirb is not the program main.hash records (changed after coreai-core "
                             "wrote it)", "export the model again")
        return
    named = coreml_manifest_paths(path)       # a path outside the package: ModelLoadError, exit 2
    missing = [n for n in named if n not in files and not any(f.startswith(n + "/") for f in files)]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(missing)}, which its Manifest.json names", "export the model again")


def _copy_folder_model(source: Path, target: Path, fmt: Format, contract: dict) -> None:
    """The model folder's files copied into the bundle, each opened without following a link (O_NOFOLLOW: a link
    that appeared since the check is refused), with the contract put where Apple's tools read creator metadata."""
    files = model_folder_files(source)
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(source / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise UsageError(f"{source}/{name} cannot be read ({exc.strerror})", "export the model again") from None
        with os.fdopen(handle, "rb") as read, fsutil.atomic_writer(target / name) as write:
            shutil.copyfileobj(read, write)
    text = json.dumps(contract, separators=(",", ":"))
    if fmt == Format.COREAI:
        metadata = _json_object(target / "metadata.json")
        custom = metadata.get("creatorDefinedMetadata")
        metadata["creatorDefinedMetadata"] = {**(custom if isinstance(custom, dict) else {}), contracts.ONNX_KEY: text}
        fsutil.write_text_atomic(target / "metadata.json", json.dumps(metadata, indent=2) + "\n")
    else:
        spec = target / coreml_spec_name(target)
        fsutil.write_bytes_atomic(spec, coreml_with_contract(spec.read_bytes(), text))


def _json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise UsageError(f"{path.name} of the model is not a JSON object", "export the model again")
    return value


def _labels_of(contract: dict, labels: Optional[list]) -> Optional[list]:
    return labels if any(o.get("labels") for o in contract["outputs"]) else None


def _check_bundle_model(path: Path, inputs: list, outputs: list, tolerance, verify, runtime: Optional[str],
                        contract: dict) -> None:
    """The bundle's model (whose bytes changed when metadata went in) reproduces the golden outputs — judged
    exactly as `verify BUNDLE` and `app.py selftest` will judge it; a web app's on its browser runtime."""
    report = golden_report(path, inputs, outputs, tolerance, verify.timeout, runtime, contract)
    if not report.passed:
        raise ParityError(f"the bundled model does not reproduce its golden vectors: {report.summary()}",
                          "verify the artifact against its source first (`deploykit verify`)",
                          details={"parity": report.to_dict()})


def _write_files(folder: Path, artifact: Artifact, model_file: str, contract: dict, labels, inputs: list,
                 outputs: list, tolerance, source, app: str = "python", timeout: float = 600.0,
                 unverified: str = "") -> None:
    arrays = {f"input/{i}/{k}": v for i, feeds in enumerate(inputs) for k, v in feeds.items()}
    arrays.update({f"output/{i}/{k}": v for i, out in enumerate(outputs) for k, v in out.items()})
    # Every file goes through fsutil (a mkstemp handle renamed into place): the staging folder is private, and
    # no write in deploykit follows a link (issue 26).
    with fsutil.atomic_writer(folder / "golden.npz") as handle:
        np.savez(handle, **arrays)
    golden = {"samples": len(inputs), "tolerance": dataclasses.asdict(tolerance),
              "source": {"path": str(source.path), "format": source.format.value}}
    fsutil.write_text_atomic(folder / "golden.json", json.dumps(golden, indent=2) + "\n")
    fsutil.write_text_atomic(folder / "contract.json", contracts.to_json(contract))
    if labels:
        fsutil.write_text_atomic(folder / "labels.txt", "\n".join(labels) + "\n")
    runtime, distribution = RUNTIME_OF[artifact.format]
    image = any(i.get("image") for i in contract["inputs"])
    if app == "web":
        from deploykit.bundle.web import runtime_version, write_web_app

        runtime = write_web_app(folder, model_file, artifact.format, inputs, outputs, tolerance,
                                f"{Path(str(source.path)).stem} ({contract['task']})", timeout)
        version = runtime_version(folder, runtime)
    else:
        fsutil.write_text_atomic(folder / "app.py", render_app(model_file, runtime, distribution, image, source.path))
        fsutil.write_text_atomic(folder / "requirements.txt", requirements(distribution, image))
        version = _version(distribution) or "unknown"
    # Staged with the rest, so it is listed below and published (or dropped) with the bundle.
    runtime_bom.write(folder, model_file, runtime, version, timeout, artifact.details.get("ops"))
    files = {f.relative_to(folder).as_posix(): fsutil.sha256_of(f) for f in sorted(folder.rglob("*")) if f.is_file()}
    record = {"bundle": BUNDLE_VERSION, "app": app, "model": model_file, "runtime": runtime, "files": files,
              "verified": not unverified}
    if unverified:        # written with keep_unverified: the golden vectors could not run where it was packaged
        record["unverified_reason"] = unverified
    fsutil.write_text_atomic(folder / BUNDLE_FILE, json.dumps(record, indent=2) + "\n")


def render_app(model_file: str, runtime: str, distribution: str, image: bool, source: str) -> str:
    """app.py from the shared template and the runtime's block (no deploykit import in either)."""
    templates = resources.files("deploykit.bundle") / "app_templates"
    block = (templates / f"runtime_{runtime}.py.txt").read_text()
    return (templates / "app.py.txt").read_text().format(
        model_file=model_file, runtime_block=block.strip(), runtime_distribution=distribution,
        pillow_note=", Pillow" if image else "", source=re.sub(r"[^\w.+-]", "_", Path(str(source)).name),
        predict_input="an image file, or an .npz with one array per input" if image else "an .npz (or .npy) with "
        "one array per input", deploykit_version=_version("deploykit") or "dev",
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))


def requirements(distribution: str, image: bool, extra: tuple = ()) -> str:
    """Exact pins of what the app imports, as installed here (where the bundle was verified); ``extra``: more
    distributions it imports (tokenizers, for a text-generation app)."""
    wanted = ["numpy", distribution] + (["pillow"] if image else []) + list(extra)
    lines = []
    for name in wanted:
        # onnxruntime-gpu here still means the CPU package on the device, at the same version
        version = _version(name) or (_version("onnxruntime-gpu") if name == "onnxruntime" else None)
        if version is None:
            raise UsageError(f"{name} is not installed here, so the bundle's pin cannot be taken from what was "
                             "verified", f"pip install {name}")
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def _version(distribution: str) -> Optional[str]:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_bundle(folder: "str | Path") -> dict:
    folder = Path(folder)
    info = json.loads((folder / BUNDLE_FILE).read_text())
    contract = json.loads((folder / "contract.json").read_text())
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    requirements_file = folder / "requirements.txt"
    return {"bundle": str(folder), "model": info["model"], "runtime": info["runtime"], "bytes": size,
            "files": sorted(info["files"]) + [BUNDLE_FILE], "contract": contract,
            "runtime_requirements": requirements_file.read_text().split() if requirements_file.exists() else [],
            "app": info.get("app", "python"), "verified": info.get("verified") is not False,
            "unverified": info.get("verified") is False, "unverified_reason": info.get("unverified_reason"),
            "runtime_bom": runtime_bom.describe(folder)}
