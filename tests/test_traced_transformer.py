"""A saved torch.jit.trace of nn.TransformerEncoder, traced in eval mode *without* torch.no_grad() (issue 27, defect 9).

Such a trace records the unfused ops, but the archive keeps no intermediate shapes once saved and loaded, and the
TorchScript ONNX exporter then fails inside nn.MultiheadAttention ("ONNX export of transpose for tensor of unknown
rank"); torch's TorchScript → ExportedProgram converter took fixed shapes only ("Failed to decompose" with
--dynamic-batch) and gave a graph onnx2tf could not convert. The exporter now records every tensor's shape by
running the frozen graph once. A trace under torch.no_grad() records the fused fast-path op instead: it was refused,
and is now written out in plain ONNX ops; nested tensors (a padding mask, the encoder's default) stay refused.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from deploykit import api
from deploykit.constructs import UNKNOWN_RANK_REMEDY, unknown_rank_site

D_MODEL, SEQ = 32, 10
TRACE = '''
import contextlib
import sys
import torch

class Tagger(torch.nn.Module):
    def __init__(self, masked, nested, **layer):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True, **layer)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=nested)
        self.head = torch.nn.Linear(32, 5)
        self.masked = masked

    def forward(self, x, padding=None):
        return self.head(self.encoder(x, src_key_padding_mask=padding if self.masked else None))

torch.manual_seed(0)
kind = sys.argv[2]
masked, fused = "masked" in kind, kind.startswith("fused")
layer = dict(activation="gelu", norm_first=True) if "gelu" in kind else {}
model = Tagger(masked, nested="nested" in kind, **layer).eval()
example = (torch.randn(1, 10, 32),) + ((torch.arange(10).unsqueeze(0) >= 7,) if masked else ())
# Without torch.no_grad() the trace records the unfused ops; under it, PyTorch's fused fast path.
with torch.no_grad() if fused else contextlib.nullcontext():
    torch.jit.trace(model, example, check_trace=False).save(sys.argv[1])
'''
SHAPES_TOOL = "recorded shapes"


def _traced(tmp_path, kind: str = "plain") -> str:
    """The model traced in a fresh interpreter (as its author would), saved as TorchScript."""
    import subprocess
    import sys

    script, path = tmp_path / "trace.py", tmp_path / f"{kind}.pt"
    script.write_text(TRACE)
    subprocess.run([sys.executable, str(script), str(path), kind], check=True)
    return str(path)


def _onnx_outputs(path: str, feeds: dict) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def _torch_outputs(source: str, feeds: dict, names: list) -> np.ndarray:
    import torch

    module = torch.jit.load(source)
    with torch.no_grad():
        return module(*(torch.from_numpy(feeds[n]) for n in names)).numpy()


def _route_tools(result) -> str:
    return " ".join(hop["tool"] for hop in result.route)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["fixed", "dynamic_batch"])
def test_a_saved_trace_of_a_transformer_encoder_exports_to_onnx(tmp_path, dynamic_batch):
    """Before: the TorchScript exporter failed ("transpose for tensor of unknown rank") and, with --dynamic-batch,
    so did the TS → ExportedProgram converter ("Failed to decompose"): no ONNX at all."""
    source = _traced(tmp_path)
    result = api.export(source, "onnx", str(tmp_path / "t.onnx"), dynamic_batch=dynamic_batch,
                        load=api.load_options([f"x:1x{SEQ}x{D_MODEL}"]))
    assert result.passed, result.parity.summary()
    assert SHAPES_TOOL in _route_tools(result)
    rng = np.random.default_rng(7)                     # held-out inputs, at another batch when it is dynamic
    batch = 3 if dynamic_batch else 1
    first, second = (rng.standard_normal((batch, SEQ, D_MODEL)).astype(np.float32) for _ in range(2))
    outputs = [_onnx_outputs(result.artifact, {"x": x}) for x in (first, second)]
    assert outputs[0].shape == (batch, SEQ, 5)
    assert np.abs(outputs[0] - outputs[1]).max() > 0.1 and outputs[0].std() > 0.1    # not a constant model
    np.testing.assert_allclose(outputs[0], _torch_outputs(source, {"x": first}, ["x"]), atol=1e-4)


def _assert_the_mask_steers_the_output(artifact: str, source: str) -> None:
    """At batch 2, held-out data: masking the last positions changes the output (the mask is an input, not baked in),
    stays finite, and matches the TorchScript module."""
    x = np.random.default_rng(8).standard_normal((2, SEQ, D_MODEL)).astype(np.float32)
    padding = np.zeros((2, SEQ), dtype=bool)
    padding[0, 6:], padding[1, 3:] = True, True
    masked = _onnx_outputs(artifact, {"x": x, "padding": padding})
    unmasked = _onnx_outputs(artifact, {"x": x, "padding": np.zeros_like(padding)})
    assert np.isfinite(masked).all() and np.abs(masked - unmasked).max() > 0.01
    np.testing.assert_allclose(masked, _torch_outputs(source, {"x": x, "padding": padding}, ["x", "padding"]),
                               atol=1e-4)


MASKED_INPUTS = [f"x:1x{SEQ}x{D_MODEL}", f"padding:1x{SEQ}:bool"]


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
def test_the_key_padding_mask_stays_an_input_that_steers_the_output(tmp_path):
    source = _traced(tmp_path, "masked")
    result = api.export(source, "onnx", str(tmp_path / "m.onnx"), dynamic_batch=True,
                        load=api.load_options(MASKED_INPUTS))
    assert result.passed, result.parity.summary()
    assert SHAPES_TOOL in _route_tools(result)
    _assert_the_mask_steers_the_output(result.artifact, source)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.parametrize("kind", ["fused_masked", "fused_masked_gelu"])
def test_a_trace_through_the_fused_fast_path_exports_its_layers_op_by_op(tmp_path, kind):
    """Under torch.no_grad() the trace holds one fused op per layer (relu/post-norm, gelu/pre-norm); the TorchScript
    exporter writes it out in ONNX ops. Before: refused ("traced through PyTorch's fused fast path")."""
    import torch

    from deploykit.constructs import fused_fastpath_ops

    source = _traced(tmp_path, kind)
    assert fused_fastpath_ops(torch.jit.load(source)) == {"aten::_transformer_encoder_layer_fwd": 2}
    result = api.export(source, "onnx", str(tmp_path / "f.onnx"), dynamic_batch=True,
                        load=api.load_options(MASKED_INPUTS))
    assert result.passed, result.parity.summary()
    _assert_the_mask_steers_the_output(result.artifact, source)


@pytest.mark.slow
@pytest.mark.torch
def test_a_fused_trace_with_nested_tensors_is_refused_with_the_op_named(tmp_path):
    """A padding mask with nested tensors on (the encoder's default) traces aten::_nested_tensor_from_mask: no ONNX
    op stands for it, so the refusal names it (and no longer the encoder layer, which is converted)."""
    from deploykit.errors import ConversionError

    with pytest.raises(ConversionError, match=r"\(aten::_nested_tensor_from_mask ×1\)") as caught:
        api.export(_traced(tmp_path, "fused_masked_nested"), "onnx", str(tmp_path / "n.onnx"),
                   load=api.load_options(MASKED_INPUTS))
    assert "set_fastpath_enabled(False)" in caught.value.remedy and caught.value.exit_code == 4


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
@pytest.mark.parametrize("kind", ["plain", "fused_masked_gelu"])
def test_a_saved_trace_of_a_transformer_encoder_exports_to_tflite(tmp_path, kind):
    """Before: the plain trace's ONNX came from the TS → ExportedProgram converter and onnx2tf stopped on its rank-6
    Transpose; the fused one was refused."""
    inputs = MASKED_INPUTS if "masked" in kind else MASKED_INPUTS[:1]
    result = api.export(_traced(tmp_path, kind), "tflite", str(tmp_path / "t.tflite"), load=api.load_options(inputs))
    assert result.passed, result.parity.summary()
    assert (SHAPES_TOOL in _route_tools(result)) == (kind == "plain")


UNKNOWN_RANK_ERROR = ("SymbolicValueError: Unsupported: ONNX export of transpose for tensor of unknown rank.  [Caused by "
                      "the value '94 defined in (%94 : FloatTensor(device=cpu) = onnx::Unsqueeze(%92, %93), scope: "
                      "Enc::/torch.nn.modules.transformer.TransformerEncoder::enc/torch.nn.modules.transformer."
                      "TransformerEncoderLayer::layers.0/torch.nn.modules.activation.MultiheadAttention::self_attn # "
                      "/venv/torch/nn/functional.py:6233:0")


def test_a_tensor_of_unknown_rank_is_named_by_its_op_and_module():
    assert unknown_rank_site(UNKNOWN_RANK_ERROR) == "transpose in enc.layers.0.self_attn (MultiheadAttention)"
    assert unknown_rank_site("ONNX export of view for tensor of unknown rank. (no scope)").startswith("view (module")
    assert unknown_rank_site("RuntimeError: something else") == "" and unknown_rank_site(None) == ""


def test_when_every_exporter_fails_the_verdict_names_the_op_the_module_and_torch_export():
    from converters.torch_to_onnx import _raise_failure
    from deploykit.errors import ConversionError

    result = SimpleNamespace(attempts=[
        {"tool": "torchscript", "ok": False, "why": "SymbolicValueError: Unsupported: ONNX export of transpose"},
        {"tool": "torchscript+shapes", "ok": False, "why": "SymbolicValueError: Unsupported: ONNX export of transpose"},
        {"tool": "ts2ep+dynamo", "ok": False, "why": "ConversionError: Failed to decompose the FX graph"}])
    with pytest.raises(ConversionError) as caught:
        _raise_failure(result, None, [], unknown_rank_site(UNKNOWN_RANK_ERROR))
    message = str(caught.value)
    assert "transpose in enc.layers.0.self_attn (MultiheadAttention)" in message and "Failed to decompose" in message
    assert caught.value.remedy == UNKNOWN_RANK_REMEDY and "torch.export" in UNKNOWN_RANK_REMEDY
