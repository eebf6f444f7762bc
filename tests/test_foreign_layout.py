"""verify of a TFLite file deploykit did not write (issue 27, defect 8): no manifest records its layout, so each
input's and output's axis order is read from the two signatures (channels-last, or the one order the shapes allow),
stated in the report, and --layout overrides; a shape that reads the same both ways is said to be ambiguous."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploykit.layout import axis_order, inverse
from deploykit.options import VerifyOptions


@pytest.mark.parametrize("source, artifact, perm", [
    ((1, 3, 16, 16), (1, 16, 16, 3), [0, 2, 3, 1]),          # NCHW → NHWC
    ((1, 8, 100), (1, 100, 8), [0, 2, 1]),                     # NCW → NWC
    (("batch", 3, "h", "w"), (1, "?", "?", 3), [0, 2, 3, 1]),  # dynamic dims: the known channel count decides
    ((1, 3, 16, 16), (1, 3, 16, 16), None),                    # kept channels-first
    ((2, 1, 128), (1, 128, 2), [1, 2, 0]),                     # not channels-last, but only one order fits
    ((1, 10), (1, 10), None)])
def test_the_axis_order_is_read_from_the_shapes(source, artifact, perm):
    order = axis_order(source, artifact)
    assert order.perm == perm and not order.ambiguous


def test_a_square_map_is_ambiguous_and_left_as_it_is_unless_told():
    order = axis_order((1, 8, 8, 8), (1, 8, 8, 8))
    assert order.ambiguous and order.perm is None and "ambiguous" in order.note and "--layout" in order.note
    assert axis_order((1, 8, 8, 8), (1, 8, 8, 8), "channels-last").perm == [0, 2, 3, 1]
    assert axis_order((1, 3, 16, 16), (1, 16, 16, 3), "none").perm is None
    assert axis_order((1, 10), (1, 10), "channels-last") == axis_order((1, 10), (1, 10))     # nothing to move


def test_an_outputs_perm_takes_the_artifact_back():
    perm = axis_order((1, 8, 4, 5), (1, 4, 5, 8)).perm
    value = np.arange(160).reshape(1, 8, 4, 5)
    assert np.array_equal(np.transpose(np.transpose(value, perm), inverse(perm)), value)


def test_an_unknown_layout_choice_is_refused():
    from deploykit.errors import UsageError

    with pytest.raises(UsageError, match="unknown --layout 'nhwc'"):
        VerifyOptions(layout="nhwc")


def _cnn(path: Path, channels: int = 3, size: int = 16, kernels: int = 8, seed: int = 0, scale: float = 0.3) -> str:
    """x [1, C, H, W] → Conv → Relu → Conv → features [1, K, H, W] and GlobalAveragePool → pooled [1, K]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array((rng.standard_normal(s) * scale).astype(np.float32), n)
               for n, s in (("w1", (kernels, channels, 3, 3)), ("b1", (kernels,)), ("w2", (kernels, kernels, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["features"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("GlobalAveragePool", ["features"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["pooled"], name="flat")]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, kernels, size, size]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, kernels])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_a_channels_last_tflite_without_manifest_verifies_with_its_layout_inferred(tmp_path):
    from deploykit import api
    from deploykit.manifest import manifest_path

    source = _cnn(tmp_path / "cnn.onnx")
    exported = api.export(source, "tflite", str(tmp_path / "cnn.tflite"))
    assert exported.passed
    recorded = api.verify(source, [exported.artifact]).reports[0]        # its manifest records the layout
    assert recorded.passed and not any("inferred" in n for n in recorded.notes), recorded.notes
    manifest_path(Path(exported.artifact)).unlink()        # now a file deploykit did not write
    report = api.verify(source, [exported.artifact]).reports[0]
    # before: NCHW data fed to the NHWC file ("XNNPack delegate failed to reshape ... the artifact is broken")
    assert report.passed, report.summary()
    note = next(n for n in report.notes if n.startswith("layout inferred"))
    assert "input x (1,3,16,16)→(1,16,16,3) NCHW→NHWC" in note and "output features" in note, note
    from deploykit.errors import ParityError

    with pytest.raises(ParityError, match="failed to reshape"):     # --layout none feeds the source's layout: obeyed
        api.verify(source, [exported.artifact], options=VerifyOptions(layout="none"))


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_a_square_input_is_stated_ambiguous_and_layout_channels_last_resolves_it(tmp_path):
    import subprocess
    import sys

    from deploykit import api

    source = _cnn(tmp_path / "square.onnx", channels=8, size=8, kernels=8)      # H = W = C: [1, 8, 8, 8]
    # bare onnx2tf, in a process of its own: importing it sets this process's recursion limit to 2**31 - 1 and
    # TF_USE_LEGACY_KERAS, which changed what later tests on this worker saw
    subprocess.run([sys.executable, "-c", "import sys, onnx2tf; onnx2tf.convert(input_onnx_file_path=sys.argv[1], "
                    "output_folder_path=sys.argv[2], non_verbose=True)", source, str(tmp_path / "out")],
                   check=True, capture_output=True, timeout=600)
    foreign = str(tmp_path / "out" / "square_float32.tflite")          # onnx2tf's own file, no manifest
    report = api.verify(source, [foreign]).reports[0]
    note = next(n for n in report.notes if n.startswith("layout inferred"))
    assert "input x (1,8,8,8): ambiguous" in note and "--layout channels-last overrides" in note, note
    told = api.verify(source, [foreign], options=VerifyOptions(layout="channels-last")).reports[0]
    assert told.passed, told.summary()
    assert any(n.startswith("layout set by --layout channels-last: input x") for n in told.notes), told.notes
