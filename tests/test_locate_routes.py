"""Planted faults: a converted sample damaged at a known layer (a weight in the ONNX file, a weight in the TFLite
flatbuffer, a wrong int8 quantization scale) must be located to that layer, in the source's names, through the
torch→ONNX, ONNX→TFLite (onnx2tf) and torch→TFLite (litert-torch) routes and their layout changes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from deploykit import api
from tests import faults

pytestmark = [pytest.mark.slow, pytest.mark.onnxruntime, pytest.mark.torch]

# sample → the layer damaged in it (its PyTorch module path)
DAMAGED = {"two_layer_net.pt2": "linear2", "mobilenet_v2.pt2": "features.6.block.1.0",
           "tiny_transformer.pt2": "layers.1.mlp.0"}
# litert-torch folds a pre-norm's LayerNorm scale into the Linear after it: that weight is W·diag(γ) in the file.
FOLDED_SCALE = {("tiny_transformer.pt2", "litert-torch"): "layers.1.norm2.weight"}
ROUTES = {"torch-onnx": ("onnx", None), "onnx2tf": ("tflite", "onnx"), "litert-torch": ("tflite", "litert")}


def _located(source, artifact, **options):
    result = api.verify(str(source), [str(artifact)], options=api.VerifyOptions(locate=True, **options))
    location = result.locations[0]
    assert not location.problems, location.problems
    return result, location


def _assert_located(location, layer: str) -> None:
    assert location.first_diverging is not None, location.summary()
    rows = location.rows
    assert rows[location.first_diverging].layer == layer, location.summary()
    assert all(r.status == "pass" for r in rows[:location.first_diverging]), location.summary()
    assert location.matched == len(rows), [r.layer for r in rows if r.status not in ("pass", "fail")]


def _onnx_weight(onnx_path, layer: str, torch_values: np.ndarray) -> tuple:
    """(initializer name, values) of ``layer``'s weight in an exported ONNX: by its PyTorch name, else by values."""
    import onnx
    from onnx import numpy_helper

    initializers = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    if f"{layer}.weight" in initializers:
        return f"{layer}.weight", initializers[f"{layer}.weight"]
    wanted = np.sort(torch_values.ravel())
    return next((name, v) for name, v in initializers.items()
                if v.size == wanted.size and np.allclose(np.sort(v.ravel()), wanted))


def _path(result) -> Path:
    return Path(result.artifact)


def _torch_weight(samples_dir, sample: str, layer: str) -> np.ndarray:
    import torch

    return torch.export.load(str(samples_dir / sample)).state_dict[f"{layer}.weight"].detach().numpy()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("sample", DAMAGED)
def test_a_damaged_weight_is_located_to_its_layer(sample, route, samples_dir, exported, tmp_path):
    layer, (to, via) = DAMAGED[sample], ROUTES[route]
    reference_onnx = _path(exported(sample))
    name, values = _onnx_weight(reference_onnx, layer, _torch_weight(samples_dir, sample, layer))
    if (sample, route) in FOLDED_SCALE:
        values = values * _torch_weight(samples_dir, sample, FOLDED_SCALE[sample, route].removesuffix(".weight"))
    artifact = _path(exported(sample, to, via))
    damaged = tmp_path / f"damaged{artifact.suffix}"
    if to == "onnx":
        faults.damage_onnx_weight(artifact, damaged, name)
    else:
        faults.damage_tflite_weight(artifact, damaged, faults.tflite_weight_like(artifact, values))
    shutil.copy(f"{artifact}.deploykit.json", f"{damaged}.deploykit.json")     # the recorded layout (NHWC)
    result, location = _located(samples_dir / sample, damaged)
    assert not result.passed
    _assert_located(location, layer)


@pytest.fixture(scope="module")
def int8_two_layer(samples_dir, exported):
    """The two-layer net's int8 export to a target, made when a test first asks for it, once per run (shared by
    the xdist workers: it was both targets on each worker, 15.7 s of setup twice)."""
    calibration = str(samples_dir / "two_layer_net.inputs.npz")
    return lambda to: _path(exported("two_layer_net.pt2", to, int8_calibration=calibration))


def test_a_wrong_int8_scale_is_located_in_qdq_onnx(int8_two_layer, samples_dir, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(int8_two_layer("onnx")))
    scale = next(t for t in model.graph.initializer if t.name == "linear2.weight_scale")
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(2), scale.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    _result, location = _located(samples_dir / "two_layer_net.pt2", tmp_path / "bad.onnx", precision="int8",
                                 samples=0, inputs_npz=str(samples_dir / "two_layer_net.inputs.npz"))
    _assert_located(location, "linear2")


def test_a_wrong_int8_scale_is_located_in_a_full_integer_tflite(int8_two_layer, samples_dir, exported, tmp_path):
    """The scale is found by name: onnx2tf names a weight the same in its float and (TFLiteConverter) int8 files."""
    artifact = int8_two_layer("tflite")
    float_tflite = _path(exported("two_layer_net.pt2", "tflite", "onnx"))
    _name, values = _onnx_weight(_path(exported("two_layer_net.pt2")), "linear2",
                                 _torch_weight(samples_dir, "two_layer_net.pt2", "linear2"))
    weight = faults.tflite_weight_like(float_tflite, values)
    name = next(n for n, (v, _d) in faults.tflite_constants(float_tflite).items() if v is not None
                and v.shape == weight.shape and np.array_equal(v, weight))
    faults.damage_tflite_scale(artifact, tmp_path / "bad.tflite", name)
    shutil.copy(f"{artifact}.deploykit.json", tmp_path / "bad.tflite.deploykit.json")
    _result, location = _located(samples_dir / "two_layer_net.pt2", tmp_path / "bad.tflite", precision="int8",
                                 samples=0, inputs_npz=str(samples_dir / "two_layer_net.inputs.npz"))
    _assert_located(location, "linear2")


def test_export_locate_names_the_first_layer_when_the_check_fails(samples_dir, tmp_path):
    """An impossible tolerance makes every route's check fail: with --locate, the error names where."""
    from tests.conftest import run_cli

    proc = run_cli("export", str(samples_dir / "two_layer_net.pt2"), "--to", "onnx", "-o", str(tmp_path / "m.onnx"),
                   "--atol", "1e-12", "--rtol", "0", "--via", "torch.onnx", "--locate", "--no-optimize")
    assert proc.returncode == 4, proc.stderr
    assert "first layer outside the fp32+custom preset: linear1" in proc.stderr
    assert not list(tmp_path.iterdir())          # nothing left after a failure
