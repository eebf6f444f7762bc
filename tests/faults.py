"""Planting faults at a known layer of a converted model, to prove that --locate finds them.

Each helper writes a damaged copy: an ONNX initializer scaled, a TFLite constant's bytes changed in
place in the flatbuffer (found by its values, so no schema is needed), or a quantization scale changed.
The jobs at the end fail inside a child of the harness (an abort, as a framework's loader does).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def damage_onnx_weight(src: Path, dst: Path, name: str, factor: float = 1.05) -> None:
    """Copy ``src`` with the initializer ``name`` multiplied by ``factor``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), name))
            onnx.save(model, str(dst))
            return
    raise AssertionError(f"{src} has no initializer {name}")


def onnx_initializer(path: Path, name: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name == name)


def tflite_constants(path: Path) -> dict:
    """{tensor name: (values, details)} of every constant tensor of a .tflite file."""
    from runtimes.litert import tflite_view

    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                     experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    view, index_of = tflite_view(interpreter)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    return {name: (interpreter.get_tensor(index_of[name]).copy(), details[index_of[name]]) for name in view.constants}


def tflite_weight_like(path: Path, values: np.ndarray, rtol: float = 1e-4) -> np.ndarray:
    """The .tflite constant holding ``values`` up to layout and rounding (a folded BatchNorm rounds differently)."""
    wanted = np.sort(np.asarray(values, np.float32).ravel())
    for value, _detail in tflite_constants(path).values():
        if value.size == wanted.size and value.dtype == np.float32 and np.allclose(
                np.sort(value.ravel()), wanted, rtol=rtol, atol=1e-6):
            return value
    raise AssertionError(f"{path} holds no constant like the {values.shape} weight")


def replace_bytes(src: Path, dst: Path, old: bytes, new: bytes) -> None:
    """Copy ``src`` with the one occurrence of ``old`` replaced by ``new`` (same length)."""
    data = src.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1, f"{len(old)} bytes occur {data.count(old)} times"
    dst.write_bytes(data.replace(old, new))


def damage_tflite_weight(src: Path, dst: Path, values: np.ndarray, factor: float = 1.05) -> None:
    """Copy ``src`` with the float32 constant whose bytes are ``values`` multiplied by ``factor``."""
    values = np.ascontiguousarray(values, np.float32)
    replace_bytes(src, dst, values.tobytes(), (values * np.float32(factor)).tobytes())


def damage_tflite_scale(src: Path, dst: Path, tensor: str, factor: float = 2.0) -> None:
    """Copy ``src`` with the quantization scales of the tensor named ``tensor`` multiplied by ``factor``."""
    _value, detail = tflite_constants(src)[tensor]
    scales = np.ascontiguousarray(detail["quantization_parameters"]["scales"], np.float32)
    replace_bytes(src, dst, scales.tobytes(), (scales * np.float32(factor)).tobytes())


# --- Faults inside a child process (jobs for deploykit.child.run_child) ---------------------------------------------
_CALLS = []     # this process's earlier calls: a reused child keeps it from job to job


def abort_job(request: dict, arrays: dict) -> dict:
    """What a framework loader does on a file it cannot handle (a failed C++ assertion): abort the process."""
    import os

    os.abort()


def pid_job(request: dict, arrays: dict) -> dict:
    """Which process ran the job, and how many jobs that process has run."""
    import os

    _CALLS.append(request)
    return {"pid": os.getpid(), "calls": len(_CALLS)}
