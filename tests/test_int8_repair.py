"""The int8 repair search (deploykit.transforms.int8_repair) on a scripted quantizer and check: its order, its budget, what it
records, and its verdict when nothing passes. The real thing (all-MiniLM-L6-v2, ONNX Runtime) is in bench/ and the
README; here every step is visible."""
from __future__ import annotations

from pathlib import Path

import pytest

from deploykit.transforms import int8_repair
from deploykit.conversion import ConversionResult, ExportOptions
from deploykit.errors import ConversionError, Outcome
from deploykit.parity import OutputResult, ParityReport, tolerance_for

# layer → (artifact node, the error it adds while quantized)
LAYERS = {"embed": ("n0", 0.01), "attn.q": ("n1", 0.02), "ffn.down": ("n2", 0.30), "attn.out": ("n3", 0.12),
          "head": ("n4", 0.05)}


class Scripted:
    """A quantizer and a check whose cosine falls with every quantized layer's error (and with the ops between
    layers when they are quantized too); ``needs`` = what must hold for a pass."""

    def __init__(self, passes):
        self.passes, self.settings, self.quantized = passes, None, []

    def quantize(self, settings):
        if settings.method == "entropy":
            raise ValueError("Too many bins for data range")
        self.settings = settings
        self.quantized.append(settings)

    def check(self, _path, _samples, locate=False):
        settings = self.settings
        report = ParityReport("source", "int8", 4, tolerance_for("int8"))
        error = sum(e for layer, (_n, e) in LAYERS.items() if layer not in settings.float_layers)
        error += 0.0 if settings.op_types else 0.5        # Softmax / mask Add quantized too
        passed = self.passes(settings)
        report.outputs.append(OutputResult("out", "out", status="pass" if passed else "fail", cosine=1 - error / 2))
        if locate and not passed:
            report.location = {"summary": "scripted", "rows": [{"layer": layer, "artifact_op": node, "relative_error": error,
                                         "growth": 0.0 if layer in settings.float_layers else error}
                                        for layer, (node, error) in LAYERS.items()]}
        return report


def _run(passes):
    scripted = Scripted(passes)
    result = ConversionResult(Path("m.onnx"), "onnx_quantize", "ort")
    failed = {"outputs": [{"cosine": 0.6}]}     # the plain min-max model: better than percentile's 0.5 here
    int8_repair.repair(result, scripted.check, ExportOptions(quantize="int8"), scripted.quantize, failed)
    return result, scripted


def test_a_calibration_method_that_passes_ends_the_search():
    result, scripted = _run(lambda s: s.method == "percentile")
    assert [s.method for s in scripted.quantized] == ["percentile"]
    assert result.kept_float == [] and "percentile" in result.notes[0]


def test_the_layers_adding_most_error_are_kept_float_and_the_set_is_bisected_down():
    result, scripted = _run(lambda s: {"ffn.down", "attn.out"} <= set(s.float_layers) and bool(s.op_types))
    assert result.kept_float == ["ffn.down", "attn.out"]
    assert scripted.settings.float_nodes == ("n2", "n3") and scripted.settings.op_types == int8_repair.WEIGHTED_OPS
    tools = [a["tool"] for a in result.attempts]
    assert tools[:3] == ["int8 repair: percentile", "int8 repair: entropy",
                         "int8 repair: minmax, weighted layers only"]          # best of the failed methods kept
    assert "the quantized model failed: ValueError" in result.attempts[1]["why"]     # entropy: recorded, search goes on
    assert len(scripted.quantized) <= int8_repair.MAX_ATTEMPTS
    assert "kept 2 layer(s) in float: ffn.down, attn.out" in result.notes[0]


def test_nothing_passes_within_the_budget_gives_a_verdict_with_the_best_attempt():
    with pytest.raises(ConversionError) as caught:
        _run(lambda s: False)
    error = caught.value
    assert error.outcome == Outcome.MISMATCH and "int8 fails its preset after" in error.message
    # percentile, entropy, weighted only, then 1, 2, 4 and all 5 layers float: every layer tried, then a verdict
    assert "after 8 quantization(s); the best (minmax, weighted layers only, 5 layer(s) float)" in error.message
    assert "--quantize dynamic" in error.remedy


# --- end to end: a model whose plain int8 fails, repaired by the export itself ---

def _outlier_model(folder: Path) -> tuple:
    """fc1 has one unit 2000 above the rest, which fc2 ignores: per-tensor int8 activations keep the outlier and
    round away the units that matter — plain int8 fails, whatever the calibration method."""
    import numpy as np
    import torch

    torch.manual_seed(0)

    class Outlier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 8)
            with torch.no_grad():
                self.fc1.weight[0] *= 0
                self.fc1.bias[0] = 2000.0
                self.fc2.weight[:, 0] = 0

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    source = folder / "outlier.pt2"
    torch.export.save(torch.export.export(Outlier().eval(), (torch.randn(1, 32),)), str(source))
    calibration = folder / "outlier.calibration.npz"
    np.savez(calibration, x=np.random.default_rng(0).standard_normal((64, 1, 32)).astype(np.float32))
    return source, calibration


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
def test_an_int8_onnx_export_that_fails_is_repaired_and_says_what_stayed_float(tmp_path):
    import json

    from deploykit import api

    source, calibration = _outlier_model(tmp_path)
    with pytest.raises(ConversionError, match="does not match the source"):      # --no-repair: as before
        api.export(str(source), "onnx", str(tmp_path / "plain.onnx"),
                   quantize=api.QuantizeOptions("int8", calibration=str(calibration), repair=False))
    result = api.export(str(source), "onnx", str(tmp_path / "repaired.onnx"),
                        quantize=api.QuantizeOptions("int8", calibration=str(calibration)))
    assert result.passed
    hop = json.loads(Path(result.manifest).read_text())["route"][-1]
    assert hop["kept_float"] and set(hop["kept_float"]) <= {"fc1", "fc2"}
    repairs = [a for a in hop["attempts"] if a["tool"].startswith("int8 repair")]
    assert repairs and repairs[-1]["ok"] and len(repairs) < int8_repair.MAX_ATTEMPTS
    assert any(n.startswith("int8 repaired after") for n in hop["notes"])


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.tensorflow
def test_a_full_integer_tflite_the_search_cannot_fix_ends_in_a_verdict(tmp_path):
    """With int8 inputs and outputs (--io-dtype int8, where 16x8 is not tried: it keeps float I/O) TFLite quantizes
    tensors, not ops: the outlier activation between fc1 and fc2 stays int8 whichever layers the
    QuantizationDebugger keeps in float, so the search ends — with the best attempt named, nothing written. (With
    float I/O the same model passes in 16x8: tests/test_int16x8.py.)"""
    from deploykit import api

    source, calibration = _outlier_model(tmp_path)
    with pytest.raises(ConversionError, match=r"int8 fails its preset after \d+ quantization\(s\)") as caught:
        api.export(str(source), "tflite", str(tmp_path / "m.tflite"),
                   quantize=api.QuantizeOptions("int8", calibration=str(calibration), io_dtype="int8"))
    assert "best" in caught.value.message and "cosine" in caught.value.message
    assert not list(tmp_path.glob("m.tflite*"))


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
def test_quantize_all_shows_int8_before_and_after_repair_as_rows(tmp_path):
    from deploykit import api

    source, calibration = _outlier_model(tmp_path)
    table = api.export(str(source), "onnx", str(tmp_path / "m.onnx"),
                       quantize=api.QuantizeOptions("all", calibration=str(calibration))).to_dict()
    rows = {row["precision"]: row for row in table["precisions"]}
    before = rows["int8 before repair"]
    assert not before["passed"] and "FAIL" in before["error"]
    after = next(row for name, row in rows.items() if name.startswith("int8 (") and "layer(s) float)" in name)
    assert after["passed"] and after["kept_float"] and after["bytes"] > 0 and after["latency_ms"] > 0
    assert before["superseded"]           # the table's verdict counts the repaired row, not the one it replaced
    assert table["passed"] == all(r["passed"] for r in table["precisions"] if not r.get("superseded"))
