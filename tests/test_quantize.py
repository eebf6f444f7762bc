"""Quantization: fp16 / dynamic / int8 for ONNX (ORT tools) and TFLite (TFLiteConverter), judged against the
float source with the precision's preset, with calibration data or a loud warning."""
import json

import numpy as np
import pytest

from deploykit import api
from deploykit.errors import UsageError

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime, pytest.mark.tensorflow, pytest.mark.litert]


def _manifest(result) -> dict:
    return json.loads(open(result.manifest).read())


def _calibration_npz(samples_dir, tmp_path, name="two_layer_net", count=16):
    rng = np.random.default_rng(5)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((count, 64, 1000)).astype(np.float32))
    return str(path)


@pytest.mark.parametrize("mode", ["fp16", "dynamic", "int8"])
def test_onnx_quantization_modes(samples_dir, tmp_path, mode):
    calibration = _calibration_npz(samples_dir, tmp_path) if mode == "int8" else None
    result = api.export(str(samples_dir / "two_layer_net.pt2"), "onnx", str(tmp_path / f"m.{mode}.onnx"),
                        quantize=api.QuantizeOptions(mode=mode, calibration=calibration, samples=8))
    assert result.passed, result.parity["summary"]
    data = _manifest(result)
    assert data["precision"] == mode and [h["edge"] for h in data["route"]] == ["torch_to_onnx", "onnx_quantize"]
    assert data["parity"]["tolerance"]["preset"] == {"fp16": "fp16"}.get(mode, "int8")
    size = open(result.artifact, "rb").seek(0, 2)
    assert size < {"fp16": 0.6, "dynamic": 0.35, "int8": 0.35}[mode] * 405_000   # fp32 weights: ~405 kB
    if mode == "int8":
        assert data["calibration"] == {"source": calibration, "samples": 8, "normalize": "unit"}
        assert not result.warnings
        # verify picks the int8 preset from the manifest; forcing fp32 shows the real difference
        assert api.verify(str(samples_dir / "two_layer_net.pt2"), [result.artifact]).passed
        strict = api.verify(str(samples_dir / "two_layer_net.pt2"), [result.artifact],
                            options=api.VerifyOptions(precision="fp32"))
        assert not strict.passed


def test_missing_calibration_warns_loudly_and_bad_calibration_fails(samples_dir, tmp_path):
    result = api.export(str(samples_dir / "two_layer_net.pt2"), "onnx", str(tmp_path / "r.onnx"),
                        quantize=api.QuantizeOptions(mode="int8", samples=4))
    assert any("random inputs" in w for w in result.warnings)
    assert any("random inputs" in w for w in _manifest(result)["warnings"])
    assert _manifest(result)["calibration"]["source"] == "random"
    with pytest.raises(UsageError, match="no such calibration"):
        api.export(str(samples_dir / "two_layer_net.pt2"), "onnx", str(tmp_path / "b.onnx"),
                   quantize=api.QuantizeOptions(mode="int8", calibration=str(tmp_path / "nope.npz")))
    with pytest.raises(UsageError, match="--quantize applies to"):
        api.export(str(samples_dir / "two_layer_net.pt2"), "saved_model", str(tmp_path / "sm"),
                   quantize=api.QuantizeOptions(mode="fp16"))
    assert not (tmp_path / "b.onnx").exists()


def test_image_folder_calibration(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    (tmp_path / "cnn.py").write_text(
        "import torch\nclass C(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        torch.manual_seed(0)\n        self.conv = torch.nn.Conv2d(3, 8, 3)\n"
        "        self.head = torch.nn.Linear(8, 5)\n"
        "    def forward(self, image):\n        return self.head(torch.relu(self.conv(image)).mean(dim=(2, 3)))\n"
        "    def example_inputs(self):\n        return (torch.rand(1, 3, 24, 24),)\n"
        "def build():\n    return C().eval()\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        result = api.export("cnn:build", "onnx", str(tmp_path / "cnn.int8.onnx"),
                            quantize=api.QuantizeOptions(mode="int8", calibration=str(folder), normalize="imagenet"))
    finally:
        sys.path.remove(str(tmp_path))
    assert result.passed and _manifest(result)["calibration"]["samples"] == 3


def test_keras_int8_tflite_with_int8_io(keras_samples_dir, tmp_path):
    result = api.export(str(keras_samples_dir / "keras_two_layer_net.keras"), "tflite", str(tmp_path / "k.tflite"),
                        quantize=api.QuantizeOptions(mode="int8", samples=32, io_dtype="int8"))
    assert result.passed, result.parity["summary"]
    assert _manifest(result)["signature"]["inputs"][0]["dtype"] == "int8"
    assert result.parity["outputs"][0]["cosine"] > 0.98


def test_torch_to_quantized_tflite_goes_through_a_saved_model(samples_dir, tmp_path):
    result = api.export(str(samples_dir / "two_layer_net.pt2"), "tflite", str(tmp_path / "t.fp16.tflite"),
                        quantize=api.QuantizeOptions(mode="fp16"))
    assert result.passed
    assert [h["edge"] for h in _manifest(result)["route"]] == ["torch_to_onnx", "onnx_to_saved_model",
                                                               "keras_to_tflite"]


def test_quantize_all_compares_every_precision(keras_samples_dir, tmp_path):
    from deploykit.precisions import export_all_precisions

    table = export_all_precisions(str(keras_samples_dir / "keras_two_layer_net.keras"), "tflite",
                                  str(tmp_path / "k.tflite"), api.QuantizeOptions(mode="", samples=16))
    rows = {r["precision"]: r for r in table["precisions"]}
    assert list(rows) == ["fp32", "fp16", "dynamic", "int8"] and table["passed"]
    assert rows["fp32"]["size_vs_fp32"] == 1.0
    assert 0.4 < rows["fp16"]["size_vs_fp32"] < 0.6
    assert rows["int8"]["size_vs_fp32"] < 0.35 and rows["dynamic"]["size_vs_fp32"] < 0.35
    assert all(r["latency_ms"] > 0 and r["cosine"] > 0.98 for r in rows.values())


def test_a_failed_precision_keeps_its_metrics_in_the_table(samples_dir, tmp_path, monkeypatch):
    from dataclasses import replace

    from deploykit import parity
    from deploykit.precisions import export_all_precisions

    # Impossible presets make every quantized precision fail: the table still shows why, in numbers.
    for name in ("fp16", "int8"):
        monkeypatch.setitem(parity.PRESETS, name, replace(parity.PRESETS[name], min_cosine=1.5))
    table = export_all_precisions(str(samples_dir / "two_layer_net.pt2"), "onnx", str(tmp_path / "m.onnx"),
                                  api.QuantizeOptions(mode="", samples=4))
    rows = {r["precision"]: r for r in table["precisions"]}
    assert rows["fp32"]["passed"] and not table["passed"]
    for mode in ("fp16", "dynamic", "int8"):
        assert not rows[mode]["passed"] and rows[mode]["cosine"] > 0.9 and rows[mode]["max_abs"] > 0, rows[mode]
    assert not (tmp_path / "m.int8.onnx").exists()
