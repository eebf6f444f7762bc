"""A sidecar manifest may pick the tolerance preset only when it records the very artifact and source bytes."""
import json

import numpy as np
import pytest

from deploykit import api
from deploykit.fsutil import sha256_of

pytestmark = pytest.mark.onnxruntime


def _add_model(path, offset: float) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(np.full((1, 64), offset, np.float32), "c")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_a_forged_precision_beside_a_damaged_artifact_does_not_pass(tmp_path):
    source = _add_model(tmp_path / "source.onnx", 0.0)
    damaged = _add_model(tmp_path / "damaged.onnx", 0.01)       # fails fp32, would pass the int8 preset
    forged = {"precision": "int8"}
    (tmp_path / "damaged.onnx.deploykit.json").write_text(json.dumps(forged))
    report = api.verify(source, [damaged])
    assert not report.passed
    assert any("judged with the fp32 preset" in note for note in report.reports[0].notes)

    # The same file with a manifest that records both hashes: the int8 preset applies, and the output says why.
    honest = {"precision": "int8", "artifact": {"sha256": sha256_of(damaged)}, "source": {"sha256": sha256_of(source)}}
    (tmp_path / "damaged.onnx.deploykit.json").write_text(json.dumps(honest))
    report = api.verify(source, [damaged])
    assert report.passed, report.reports[0].summary()
    assert any("records this artifact's and this source's sha256" in note for note in report.reports[0].notes)
