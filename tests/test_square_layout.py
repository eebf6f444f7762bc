"""A square-input ONNX CNN (C = H = W) through onnx2tf: its input shape reads the same NCHW and NHWC, so the exporter
cannot read onnx2tf's permutation from the shapes; it knows onnx2tf's rule (every 3-D/4-D/5-D input channels-last
unless a keep_* option names it), records that permutation, and verify reads it from the manifest. Before, the
square input was recorded unpermuted and every TFLite route failed parity (issue 27)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deploykit.layout import axis_order

NCHW_TO_NHWC = [0, 2, 3, 1]
NHWC_TO_NCHW = [0, 3, 1, 2]


def test_the_converters_rule_settles_a_square_map_and_only_a_tie():
    assert axis_order((1, 8, 8, 8), (1, 8, 8, 8)).ambiguous                 # verify of a foreign file: said
    told = axis_order((1, 8, 8, 8), (1, 8, 8, 8), prefer=NCHW_TO_NHWC)
    assert told.perm == NCHW_TO_NHWC and not told.ambiguous and "converter" in told.note
    kept = axis_order((1, 8, 8, 8), (1, 8, 8, 8), prefer=[0, 1, 2, 3])     # a keep_* input: the source's order
    assert kept.perm is None and not kept.ambiguous
    dynamic = axis_order(("b", "c", "h", "w"), (-1, -1, -1, -1), prefer=NCHW_TO_NHWC)   # nothing known: a tie too
    assert dynamic.perm == NCHW_TO_NHWC
    # Where the shapes decide, they decide: a preference they contradict is not taken.
    assert axis_order((1, 3, 16, 16), (1, 3, 16, 16), prefer=NCHW_TO_NHWC).perm is None
    assert axis_order((1, 3, 16, 16), (1, 16, 16, 3), prefer=[0, 1, 2, 3]).perm == NCHW_TO_NHWC


@pytest.mark.parametrize("start, goal, perm", [
    ((1, 128, 2), (2, 1, 128), [2, 0, 1]),           # a stacked state written on the last axis
    ((1, 128, 2), (2, "batch", 128), [2, 0, 1]),     # a named dim matches what is left
    ((1, 1, 8, 64), (8, 1, 1, 64), [2, 0, 1, 3]),    # size-1 axes: any order moves the same data
    ((2, 3, 3), (3, 2, 3), None),                    # two orders that move data differently
    ((3, 4), (5, 3), None)])
def test_an_order_other_than_channels_last_is_taken_only_when_one_fits(start, goal, perm):
    """The cases the exporter's own search (converters.onnx_to_tflite._only_permutation, now gone) was tested on."""
    assert axis_order(start, goal).perm == perm


def _tensor(name: str, *shape) -> SimpleNamespace:
    return SimpleNamespace(name=name, shape=tuple(shape))


def test_the_exporter_records_onnx2tfs_rule_for_square_tensors_and_says_so():
    from converters.onnx_to_tflite import _perms

    notes = []
    source, written = [_tensor("x", 1, 8, 8, 8), _tensor("ids", 1, 8)], [_tensor("x", 1, 8, 8, 8), _tensor("ids", 1, 8)]
    assert _perms(source, written, notes) == {"x": NCHW_TO_NHWC}
    assert len(notes) == 1 and notes[0].startswith("input x (1,8,8,8) reads the same"), notes
    assert _perms(source, written, [], kept={"x"}) == {}                   # --keep-layout: onnx2tf left it NCHW
    assert _perms([_tensor("y", 1, 3, 3, 3)], [_tensor("y", 1, 3, 3, 3)], [], outputs=True) == {"y": NHWC_TO_NCHW}


def _square_cnn(path: Path, size: int) -> str:
    """x [1, S, S, S] → Conv → Relu → Conv → features [1, S, S, S] and GlobalAveragePool → pooled [1, S]: channels,
    height and width all S, weights seeded; a 1-pixel-padded conv keeps the map square."""
    from tests.test_foreign_layout import _cnn

    return _cnn(path, channels=size, size=size, kernels=size, seed=27, scale=0.4)


def _assert_not_degenerate(source: str, size: int) -> None:
    """The source's outputs vary with the input and across positions: a transposed feed cannot pass by chance."""
    import onnxruntime as ort

    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    first, second = (session.run(None, {"x": rng.standard_normal((1, size, size, size)).astype(np.float32)})
                     for _ in range(2))
    assert first[0].std() > 0.1 and np.abs(first[0] - second[0]).max() > 0.1
    assert np.abs(first[0] - np.transpose(first[0], NCHW_TO_NHWC)).max() > 0.1     # not symmetric in its axes


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
@pytest.mark.parametrize("size", [8, 3])
def test_a_square_input_cnn_exports_to_tflite_and_verifies(tmp_path, size):
    from deploykit import api

    source = _square_cnn(tmp_path / "square.onnx", size)
    _assert_not_degenerate(source, size)
    exported = api.export(source, "tflite", str(tmp_path / "square.tflite"))   # before: every route failed parity
    assert exported.passed, exported.parity.summary()
    manifest = json.loads(Path(exported.manifest).read_text())
    assert manifest["route"][-1]["edge"] == "onnx_to_tflite"
    assert manifest["layout"] == {"inputs": {"x": NCHW_TO_NHWC}, "outputs": {"features": NHWC_TO_NCHW}}
    assert any("reads the same" in note for hop in manifest["route"] for note in hop.get("notes", [])), manifest
    report = api.verify(source, [exported.artifact]).reports[0]
    assert report.passed, report.summary()
    assert not any("inferred" in note or "ambiguous" in note for note in report.notes), report.notes   # manifest's


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_a_square_input_kept_channels_first_records_no_input_permutation(tmp_path):
    from deploykit import api

    source = _square_cnn(tmp_path / "square.onnx", 8)
    exported = api.export(source, "tflite", str(tmp_path / "kept.tflite"), keep_layout=True)
    assert exported.passed, exported.parity.summary()
    layout = json.loads(Path(exported.manifest).read_text())["layout"]
    assert layout["inputs"] == {} and layout["outputs"] == {"features": NHWC_TO_NCHW}
    assert api.verify(source, [exported.artifact]).reports[0].passed
