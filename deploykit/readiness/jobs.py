"""The readiness probes, run in a child: a crafted model file may crash LiteRT or ONNX Runtime natively, and that
must end the child, not the CLI (DESIGN §4)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from deploykit.errors import UsageError
from deploykit.formats import Format


def probe_job(request: dict, arrays: dict) -> dict:
    """Child side of ``deploykit.readiness.readiness``: the tables of one artifact as plain data."""
    path, fmt = request["path"], Format(request["format"])
    if fmt == Format.TFLITE:
        from deploykit.readiness import tflite

        return tflite.probe(path)
    if fmt == Format.ONNX:
        return _onnx(path, request.get("pins") or {})
    if fmt == Format.EXECUTORCH:
        from deploykit.model import LoadOptions, load_model
        from deploykit.readiness import executorch

        delegation = load_model(path, LoadOptions(), fmt).details.get("delegation") or {}
        return {"tables": [executorch.coverage(delegation).to_dict()],
                "operators": executorch.selected_operators(path, delegation), "tools": {"executorch": executorch.et_version()}}
    raise ValueError(f"no readiness probe for {fmt.value}")


def _onnx(path: str, pins: dict) -> dict:
    """The ONNX probe, on a copy with the --input dims pinned when the user gave them (ORT's own
    make_input_shape_fixed, then its output-shape fix-up)."""
    from deploykit.readiness import onnx as probe

    if not pins:
        return probe.probe(path)
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    from deploykit.onnx_io import read_onnx

    model = read_onnx(path)
    ranks = {value.name: len(value.type.tensor_type.shape.dim) for value in model.graph.input}
    for name, shape in pins.items():
        if name not in ranks:
            raise UsageError(f"--input names {name} but the model's inputs are {', '.join(map(repr, ranks))}",
                             "name each --input after a model input")
        if ranks[name] != len(shape):
            raise UsageError(f"--input {name}:{'x'.join(map(str, shape))} has {len(shape)} dims but the model's "
                             f"{name} has {ranks[name]}", "give one size per dim of the input")
        make_input_shape_fixed(model.graph, name, [int(d) for d in shape])
    fix_output_shapes(model)
    with tempfile.TemporaryDirectory(prefix="deploykit-readiness-") as tmp:
        pinned = Path(tmp) / Path(path).name
        pinned.write_bytes(model.SerializeToString())
        found = probe.probe(str(pinned))
    found["pinned"] = {name: list(shape) for name, shape in pins.items()}
    return found
