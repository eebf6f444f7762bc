"""The int8 repair search (deploykit.int8_repair) on a scripted quantizer and check: its order, its budget, what it
records, and its verdict when nothing passes. The real thing (all-MiniLM-L6-v2, ONNX Runtime) is in bench/ and the
README; here every step is visible."""
from __future__ import annotations

from pathlib import Path

import pytest

from deploykit import int8_repair
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
