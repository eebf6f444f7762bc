"""Write the sample models as files: TorchScript, torch.export program, state_dict, inputs; a causal LM as a folder."""
from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import numpy as np

from deploykit import fsutil
from deploykit.errors import UsageError
from deploykit.quiet import captured_output
from sample_models import SAMPLES, SampleModel


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(sample: SampleModel) -> tuple:
    """The trained (or calibrated) model and what its preparation reported."""
    model = _resolve(sample.factory)()
    info = _resolve(sample.prepare)(model) if sample.prepare else {}
    return (model.eval() if hasattr(model, "eval") else model), info


def output_paths(sample: SampleModel, out_dir: Path) -> dict:
    if sample.framework == "causal_lm":
        return {"folder": out_dir / sample.name}
    if sample.framework == "tensorflow":
        return {"keras": out_dir / f"{sample.name}.keras", "h5": out_dir / f"{sample.name}.h5",
                "inputs": out_dir / f"{sample.name}.inputs.npz"}
    paths = {"weights": out_dir / f"{sample.name}.weights.pt", "inputs": out_dir / f"{sample.name}.inputs.npz"}
    if sample.torchscript:
        paths["torchscript"] = out_dir / f"{sample.name}.pt"
    if sample.exportable:
        paths["exported_program"] = out_dir / f"{sample.name}.pt2"
    return paths


def build_sample(sample: SampleModel, out_dir: Path, force: bool = False) -> dict:
    """Build one sample and write its files atomically; returns a description of what was written."""
    out_dir = Path(out_dir)
    paths = output_paths(sample, out_dir)
    if sample.framework == "causal_lm":
        return _build_folder(sample, paths["folder"], force)
    for path in paths.values():
        fsutil.prepare_output(path, force)
    if sample.framework == "tensorflow":
        return _build_keras(sample, paths, out_dir, force)
    import torch

    from deploykit.torch_signature import SPEC_EXTRA_FILE

    model, info = build_model(sample)
    example = model.example_inputs()
    with fsutil.staging_dir(out_dir) as stage, captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        staged = {key: stage / path.name for key, path in paths.items()}
        spec = _signature(model, example)
        if sample.exportable:
            torch.export.save(torch.export.export(model, example), str(staged["exported_program"]))
        if sample.torchscript:
            # Tracing would bake in one branch of a data-dependent `if`; scripting keeps it.
            scripted = torch.jit.trace(model, example) if sample.exportable else torch.jit.script(model)
            torch.jit.save(scripted, str(staged["torchscript"]), _extra_files={SPEC_EXTRA_FILE: json.dumps(spec)})
        torch.save(model.state_dict(), str(staged["weights"]))
        np.savez(staged["inputs"], **{t["name"]: e.numpy() for t, e in zip(spec["inputs"], example)})
        fsutil.publish([(staged[key], paths[key]) for key in paths])
    params = sum(p.numel() for p in model.parameters())
    return {"name": sample.name, "description": sample.description, "parameters": int(params),
            "factory": sample.factory, "files": {k: str(v) for k, v in paths.items()}, "preparation": info,
            **_data(sample, out_dir, force)}


def _build_keras(sample: SampleModel, paths: dict, out_dir: Path, force: bool) -> dict:
    from sample_models.keras_models import example_inputs

    model, info = build_model(sample)
    with fsutil.staging_dir(out_dir) as stage, captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        staged = {key: stage / path.name for key, path in paths.items()}
        model.save(str(staged["keras"]))
        model.save(str(staged["h5"]))          # the legacy HDF5 format, still common in the wild
        np.savez(staged["inputs"], **example_inputs(model))
        fsutil.publish([(staged[key], paths[key]) for key in paths])
    return {"name": sample.name, "description": sample.description, "parameters": int(model.count_params()),
            "factory": sample.factory, "files": {k: str(v) for k, v in paths.items()}, "preparation": info,
            **_data(sample, out_dir, force)}


def _build_folder(sample: SampleModel, target: Path, force: bool) -> dict:
    """A causal-LM sample: a Hugging Face folder written by its module's ``write_folder(model, folder)``."""
    module = importlib.import_module(sample.factory.partition(":")[0])
    _check_folder_target(target, force, module.FILES)
    model, info = build_model(sample)
    with fsutil.staging_dir(target.parent) as stage, captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.write_folder(model, stage / target.name)
        fsutil.publish([(stage / target.name, target)], force)
    params = sum(p.numel() for p in model.parameters())
    return {"name": sample.name, "description": sample.description, "parameters": int(params),
            "factory": sample.factory, "files": {"folder": str(target)}, "preparation": info}


def _check_folder_target(target: Path, force: bool, names: tuple) -> None:
    """--force replaces a sample folder only when it holds nothing but the sample's own files (never a user's)."""
    if force and target.is_dir() and not target.is_symlink():
        extra = sorted(p.name for p in target.iterdir() if p.name not in names)
        if extra:
            raise UsageError(f"{target} holds {extra[0]}, which the {target.name} sample does not write: --force "
                             "replaces only a sample folder as deploykit left it",
                             "remove it yourself or choose another -o")
        return
    fsutil.prepare_output(target, force)


def _data(sample: SampleModel, out_dir: Path, force: bool) -> dict:
    """Calibration data that comes with the sample (in-distribution, unlike random inputs)."""
    return {"data": _resolve(sample.data)(out_dir, force)} if sample.data else {}


def _signature(model, example: tuple) -> dict:
    from deploykit.torch_signature import embedding_sizes, forward_arg_names, with_token_ranges
    from deploykit.spec import TensorSpec

    inputs = [TensorSpec(n, tuple(t.shape), str(t.dtype).replace("torch.", ""))
              for n, t in zip(forward_arg_names(model), example)]
    inputs = with_token_ranges(inputs, embedding_sizes(model))
    return {"inputs": [t.to_dict() for t in inputs], "outputs": []}


def build_samples(out_dir: "str | Path", names: tuple = (), force: bool = False) -> list:
    wanted = [s for s in SAMPLES if not names or s.name in names]
    return [build_sample(sample, Path(out_dir), force) for sample in wanted]
