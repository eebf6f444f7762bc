"""The e2e matrix: every sample model x every PyTorch source format -> ONNX, verified."""
import json

import numpy as np
import pytest

from deploykit import api, manifest
from deploykit.errors import ConversionError, OutputExistsError
from deploykit.fsutil import sha256_of
from sample_models import SAMPLES

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime]

TORCH = [s for s in SAMPLES if s.framework == "torch"]
FILES = [(s.name, f"{s.name}.pt2") for s in TORCH if s.exportable] + [(s.name, f"{s.name}.pt") for s in TORCH if s.torchscript]


@pytest.mark.slow
@pytest.mark.parametrize("sample, source", FILES, ids=[f for _s, f in FILES])
def test_every_sample_file_exports_and_verifies(exported, sample, source):
    result = exported(source)
    assert result.passed, result.parity.summary()
    assert result.parity.samples >= 5
    out = result.parity.outputs[0]
    assert out.max_abs < 1e-3 and out.cosine > 0.99999
    data = json.loads(open(result.manifest).read())
    assert data["artifact"]["sha256"] == sha256_of(result.artifact)
    assert data["route"][0]["edge"] == "torch_to_onnx"
    assert data["versions"]["torch"] and data["versions"]["onnxruntime"]
    assert data["signature"]["inputs"][0]["name"]


# MobileNetV2 is left out of this row only to keep the suite fast: its factory path is the same code.
@pytest.mark.slow
@pytest.mark.parametrize("sample", [s for s in TORCH if s.exportable and s.name != "mobilenet_v2"],
                         ids=lambda s: s.name)
def test_factory_plus_weights_exports(samples_dir, tmp_path, sample):
    result = api.export(sample.factory, "onnx", str(tmp_path / "m.onnx"),
                        load=api.load_options(weights=str(samples_dir / f"{sample.name}.weights.pt")))
    assert result.passed
    source = json.loads(open(result.manifest).read())["source"]
    assert source["format"] == "python_factory"
    assert source["weights"]["sha256"] == sha256_of(samples_dir / f"{sample.name}.weights.pt")


@pytest.mark.slow
def test_dynamic_graph_fails_with_the_construct_named_and_leaves_nothing(samples_dir, tmp_path):
    out = tmp_path / "dyn.onnx"
    with pytest.raises(ConversionError) as info:
        api.export("sample_models.dynamic:dynamic_gate", "onnx", str(out),
                   load=api.load_options(weights=str(samples_dir / "dynamic_gate.weights.pt")))
    assert info.value.exit_code == 4
    assert "data-dependent control flow at dynamic.py" in info.value.message
    assert "x.sum() > 0" in info.value.message and "torch.cond" in info.value.remedy
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_scripted_control_flow_is_kept_as_an_onnx_if(exported):
    import onnx

    result = exported("dynamic_gate.pt")
    assert result.passed
    ops = {n.op_type for n in onnx.load(result.artifact).graph.node}
    assert "If" in ops


@pytest.mark.slow
def test_existing_output_needs_force(exported, samples_dir):
    first = exported("two_layer_net.pt2")
    with pytest.raises(OutputExistsError):
        api.export(str(samples_dir / "two_layer_net.pt2"), "onnx", first.artifact)
    before = sha256_of(first.artifact)
    again = api.export(str(samples_dir / "two_layer_net.pt2"), "onnx", first.artifact, force=True)
    assert again.passed and before


@pytest.mark.slow
def test_dynamic_batch_runs_at_another_batch_size(samples_dir, tmp_path):
    import onnxruntime as ort

    result = api.export(str(samples_dir / "tiny_transformer.pt"), "onnx", str(tmp_path / "t.onnx"),
                        dynamic_batch=True, optimize=False)
    assert result.passed
    session = ort.InferenceSession(result.artifact, providers=["CPUExecutionProvider"])
    assert not isinstance(session.get_inputs()[0].shape[0], int)
    ids = np.random.default_rng(0).integers(0, 1000, size=(4, 32))
    assert session.run(None, {"ids": ids})[0].shape == (4, 10)
    assert any("batch 3" in note for note in json.loads(open(result.manifest).read())["route"][0]["notes"])


@pytest.mark.slow
def test_token_id_inputs_are_drawn_in_the_embedding_range(exported):
    signature = json.loads(open(exported("tiny_transformer.pt2").manifest).read())["signature"]
    assert signature["inputs"][0]["value_range"] == [0, 1000]
    assert signature["inputs"][0]["dtype"] == "int64"


class _GRUNet:
    @staticmethod
    def build():
        import torch

        class GRUNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.gru = torch.nn.GRU(16, 24, batch_first=True)
                self.head = torch.nn.Linear(24, 5)

            def forward(self, x):
                out, _hidden = self.gru(x)
                return self.head(out[:, -1])

        torch.manual_seed(3)
        return GRUNet().eval(), (torch.randn(2, 7, 16),)


def _transformer_encoder():
    import torch

    torch.manual_seed(4)
    layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.0)
    return torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval(), \
        (torch.randn(1, 12, 32),)


@pytest.mark.slow
@pytest.mark.parametrize("builder", [_GRUNet.build, _transformer_encoder], ids=["gru", "transformer_encoder"])
@pytest.mark.parametrize("kind", ["torchscript", "exported_program"])
def test_models_not_written_for_deploykit(tmp_path, builder, kind):
    """Library architectures built ad hoc, saved by plain torch calls, no deploykit signature file."""
    import torch

    model, example = builder()
    path = tmp_path / "model.bin"
    if kind == "torchscript":
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))
    else:
        torch.export.save(torch.export.export(model, example), str(path))
    result = api.export(str(path), "onnx", str(tmp_path / "model.onnx"))
    assert result.passed, result.parity.summary()
    report = api.verify(str(path), [result.artifact])
    assert report.passed


@pytest.mark.slow
def test_manifest_is_beside_the_artifact(exported):
    result = exported("two_layer_net.pt2")
    assert manifest.read(result.artifact)["artifact"]["path"].endswith(".onnx")
