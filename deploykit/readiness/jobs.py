"""The readiness probes, run in a child: a crafted model file may crash LiteRT or ONNX Runtime natively, and that
must end the child, not the CLI (DESIGN §4)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from deploykit.errors import UsageError
from deploykit.formats import Format


def probe_job(request: dict, arrays: dict) -> dict:
    """Child side of ``deploykit.readiness.readiness``: the tables of one artifact as plain data."""
    from deploykit.transforms.ort_format import skip_torch_helpers

    skip_torch_helpers()     # every ONNX probe imports onnxruntime.tools: not torch with it
    path, fmt = request["path"], Format(request["format"])
    if fmt == Format.TFLITE:
        from deploykit.readiness import tflite

        return tflite.probe(path)
    if fmt == Format.ONNX:
        return _onnx(path, request.get("pins") or {})
    if fmt == Format.ORT:
        from deploykit.transforms import ort_format

        return {"operators": ort_format.ort_file_operators(path),
                "notes": ["an .ort file holds the graph after ONNX Runtime's optimizations for one platform: the "
                          "NNAPI / CoreML partition checks read ONNX — run --readiness on the .onnx it was converted "
                          "from (deploykit export's manifest beside the .ort names it)"]}
    if fmt == Format.EXECUTORCH:
        from deploykit.model import LoadOptions, load_model
        from deploykit.readiness import executorch

        delegation = load_model(path, LoadOptions(), fmt).details.get("delegation") or {}
        return {"tables": [executorch.coverage(delegation).to_dict()],
                "operators": executorch.selected_operators(path, delegation),
                "tools": {"executorch": executorch.et_version()}}
    raise ValueError(f"no readiness probe for {fmt.value}")


def _onnx(path: str, pins: dict) -> dict:
    """The ONNX probe, on a copy with the --input dims pinned when the user gave them (the export's own pinning,
    shapes inferred downstream — ORT's make_input_shape_fixed refuses two dims that share one symbol)."""
    from deploykit.readiness import onnx as probe

    if not pins:
        return probe.probe(path)
    from deploykit.onnx_io import read_onnx
    from deploykit.transforms.onnx_prep import pin_dims

    model = read_onnx(path)
    pin_dims(model, {name: _open_dims(model.graph, name, shape) for name, shape in pins.items()})
    with tempfile.TemporaryDirectory(prefix="deploykit-readiness-") as tmp:
        pinned = Path(tmp) / Path(path).name
        pinned.write_bytes(model.SerializeToString())
        found = probe.probe(str(pinned))
    found["pinned"] = {name: list(shape) for name, shape in pins.items()}
    return found


def _open_dims(graph, name: str, shape: list) -> dict:
    """{axis: size} of the dims the file leaves open, after checking the pin against the input's rank and the dims
    the file fixes (a wrong --input is the user's to correct, in one line)."""
    value = next((v for v in graph.input if v.name == name), None)
    if value is None:
        names = ", ".join(repr(v.name) for v in graph.input)
        raise UsageError(f"--input names {name} but the model's inputs are {names}",
                         "name each --input after a model input")
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise UsageError(f"--input {name}:{'x'.join(map(str, shape))} has {len(shape)} dims but the model's "
                         f"{name} has {len(dims)}", "give one size per dim of the input")
    stored = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
              for d in value.type.tensor_type.shape.dim]
    for axis, (have, want) in enumerate(zip(stored, shape)):
        if have is not None and have != int(want):
            dims = "x".join("?" if d is None else str(d) for d in stored)
            raise UsageError(f"--input {name}:{'x'.join(map(str, shape))} sets dim {axis} to {want} but the model "
                             f"fixes it at {have} ({name}: {dims})", "give the model's own size for that dim")
    return {axis: int(want) for axis, (have, want) in enumerate(zip(stored, shape)) if have is None}
