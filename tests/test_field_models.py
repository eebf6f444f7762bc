"""Behaviours field models need (issue 14): the user's shapes pin an ONNX source's dynamic dims in the graph the
converter receives. The ONNX here is built with onnx.helper in the form field exporters write (a symbolic sequence
axis), since deploykit's own exports pin their dims already."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploykit import api
from tests.conftest import assert_clean_error, run_cli


def _sequence_model(path: Path) -> Path:
    """x [1, seq, 16] → MatMul → Relu → mean over seq → y [1, 8]: one dynamic non-batch axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["y"], axes=[1], keepdims=0)], "sequence_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_input_shapes_pin_an_onnx_sources_dynamic_dims_for_onnx2tf(tmp_path):
    source = _sequence_model(tmp_path / "seq.onnx")
    proc = run_cli("export", str(source), "--to", "tflite", "-o", str(tmp_path / "none.tflite"))
    # Without a shape the error names the *source's* layout (before: the artifact's transposed one, after converting).
    assert_clean_error(proc, 2, "input 'x' has a dynamic dim at axis 1 (seq)", "--input x:1xNx16")
    result = api.export(str(source), "tflite", str(tmp_path / "pinned.tflite"), load=api.load_options(["x:1x32x16"]))
    assert result.passed, result.parity
    notes = [n for hop in json.loads(Path(result.manifest).read_text())["route"] for n in hop["notes"]]
    assert any("pinned" in n and "x[1]=32" in n for n in notes), notes
    assert result.opened.spec.inputs[0].shape in ((1, 32, 16), (1, 16, 32))     # onnx2tf may move channels last
