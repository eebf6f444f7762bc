"""TFLite / TensorFlow: the e2e matrix sample x route x runtime, layouts, chain verify, Keras sources."""
import json

import pytest

from deploykit import api
from deploykit.errors import ConversionError, ModelLoadError, UsageError
from deploykit.introspect import inspect_model

pytestmark = [pytest.mark.torch, pytest.mark.tensorflow, pytest.mark.litert, pytest.mark.onnxruntime]

# (source file, --via, first edge expected). Every supported cell of the README's support table.
TORCH_TO_TFLITE = [
    ("two_layer_net.pt2", "litert", "torch_to_tflite"),
    ("two_layer_net.pt2", "onnx", "torch_to_onnx"),
    ("two_layer_custom_relu.pt2", "litert", "torch_to_tflite"),
    ("mobilenet_v2.pt2", "litert", "torch_to_tflite"),
    ("mobilenet_v2.pt2", "onnx", "torch_to_onnx"),
    ("tiny_transformer.pt2", "litert", "torch_to_tflite"),
    ("dynamic_gate.pt", None, "torch_to_onnx"),
]


def _manifest(result) -> dict:
    return json.loads(open(result.manifest).read())


@pytest.mark.slow
@pytest.mark.parametrize("source, via, first_edge", TORCH_TO_TFLITE, ids=[f"{s}-{v}" for s, v, _ in TORCH_TO_TFLITE])
def test_torch_samples_to_tflite(exported, source, via, first_edge):
    result = exported(source, "tflite", via)
    assert result.passed, result.parity.summary()
    data = _manifest(result)
    assert data["route"][0]["edge"] == first_edge
    assert data["parity"]["outputs"][0]["cosine"] > 0.99999
    assert any("ran on litert (XNNPACK)" in note for note in data["parity"]["notes"])


@pytest.mark.slow
def test_onnx2tf_layout_is_recorded_and_applied(exported):
    data = _manifest(exported("mobilenet_v2.pt2", "tflite", "onnx"))
    assert data["layout"]["inputs"] == {"image": [0, 2, 3, 1]}
    assert data["signature"]["inputs"][0]["shape"] == [1, 224, 224, 3]
    assert data["signature"]["inputs"][0]["layout"] == "NHWC"
    assert [hop["edge"] for hop in data["route"]] == ["torch_to_onnx", "onnx_to_tflite"]
    assert all(hop["parity_vs_source"].startswith("PASS") for hop in data["route"])


@pytest.mark.slow
def test_litert_keeps_nchw_and_narrows_token_ids(exported):
    data = _manifest(exported("mobilenet_v2.pt2", "tflite", "litert"))
    assert data["layout"] == {"inputs": {}, "outputs": {}}
    assert data["signature"]["inputs"][0]["layout"] == "NCHW"
    data = _manifest(exported("tiny_transformer.pt2", "tflite", "litert"))
    assert data["signature"]["inputs"][0]["dtype"] == "int32"
    assert any("int32" in note for note in data["route"][0]["notes"])


@pytest.mark.slow
def test_feature_map_outputs_are_compared_in_the_source_layout(tmp_path, monkeypatch):
    import torch

    (tmp_path / "fm.py").write_text(
        "import torch\nclass F(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        torch.manual_seed(0)\n        self.conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)\n"
        "    def forward(self, image):\n        return torch.relu(self.conv(image))\n"
        "    def example_inputs(self):\n        return (torch.rand(1, 3, 20, 12),)\n"
        "def build():\n    return F().eval()\n")
    import os
    # On PYTHONPATH: the factory is imported in a child (issue 26), which sees the environment, not sys.path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    for keep in (False, True):
        out = tmp_path / f"fm_{keep}.tflite"
        result = api.export("fm:build", "tflite", str(out), via="onnx", keep_layout=keep)
        layout = _manifest(result)["layout"]
        assert list(layout["outputs"].values()) == [[0, 3, 1, 2]]
        assert bool(layout["inputs"]) is not keep
    report = api.verify("fm:build", [str(tmp_path / "fm_False.tflite"), str(tmp_path / "fm_True.tflite")])
    assert [r.passed for r in report.reports] == [True, True, True]
    assert torch


@pytest.mark.slow
@pytest.mark.serial
def test_route_all_builds_and_times_every_route(samples_dir, tmp_path):
    result = api.export(str(samples_dir / "two_layer_net.pt2"), "tflite", str(tmp_path / "m.tflite"), route="all")
    assert {r["route"] for r in result.to_dict()["routes"]} == {"torch_to_tflite", "torch_to_onnx → onnx_to_tflite"}
    assert all(r["passed"] and r["latency_ms_1thread"] > 0 for r in result.to_dict()["routes"])
    assert sum(r["chosen"] for r in result.to_dict()["routes"]) == 1
    assert len(_manifest(result)["routes"]) == 2


@pytest.mark.slow
def test_unsupported_cells_fail_with_a_verdict(samples_dir, tmp_path):
    with pytest.raises(UsageError, match="goes via 'litert'") as usage:
        api.export(str(samples_dir / "mobilenet_v2.pt"), "tflite", str(tmp_path / "a.tflite"), via="litert")
    assert "use --via one of onnx" in usage.value.remedy
    # The TorchScript exporter writes GELU as Erf, which onnx2tf keeps as a TensorFlow (Flex) op.
    with pytest.raises(ConversionError, match="FlexErf"):
        api.export(str(samples_dir / "tiny_transformer.pt"), "tflite", str(tmp_path / "t.tflite"))
    with pytest.raises(ConversionError, match="data-dependent control flow") as info:
        api.export("sample_models.dynamic:dynamic_gate", "tflite", str(tmp_path / "b.tflite"),
                   load=api.load_options(weights=str(samples_dir / "dynamic_gate.weights.pt")))
    assert info.value.exit_code == 4 and "torch.cond" in info.value.remedy
    with pytest.raises(ConversionError, match="dynamic batch"):
        api.export(str(samples_dir / "two_layer_net.pt2"), "tflite", str(tmp_path / "c.tflite"), via="litert",
                   dynamic_batch=True)
    assert not list(tmp_path.glob("*.tflite"))


@pytest.mark.slow
@pytest.mark.parametrize("source, target", [
    ("keras_two_layer_net.keras", "tflite"), ("keras_two_layer_net.keras", "onnx"),
    ("keras_two_layer_net.keras", "saved_model"), ("keras_two_layer_net.h5", "tflite"),
    ("keras_mobilenet_v2.keras", "tflite"), ("keras_mobilenet_v2.keras", "onnx"),
])
def test_keras_samples_to_every_target(exported, keras_samples_dir, source, target):
    result = exported(source, target, None, keras_samples_dir)
    assert result.passed, result.parity.summary()
    assert _manifest(result)["layout"] == {"inputs": {}, "outputs": {}}


@pytest.mark.slow
def test_chain_verify_keras_to_onnx_tflite_saved_model(exported, keras_samples_dir):
    artifacts = [exported("keras_two_layer_net.keras", t, None, keras_samples_dir).artifact
                 for t in ("onnx", "tflite", "saved_model")]
    report = api.verify(str(keras_samples_dir / "keras_two_layer_net.h5"), artifacts, options=api.VerifyOptions(samples=3))
    assert len(report.reports) == 5 and report.passed
    assert "hop" in report.reports[2].notes[-1]


@pytest.mark.slow
def test_saved_model_source_and_tflite_back_to_onnx(exported, keras_samples_dir, tmp_path):
    saved = exported("keras_two_layer_net.keras", "saved_model", None, keras_samples_dir).artifact
    back = api.export(saved, "onnx", str(tmp_path / "from_saved_model.onnx"))
    assert back.passed and _manifest(back)["route"][0]["edge"] == "keras_to_onnx"
    tflite = exported("keras_mobilenet_v2.keras", "tflite", None, keras_samples_dir).artifact
    onnx_again = api.export(tflite, "onnx", str(tmp_path / "from_tflite.onnx"))
    assert onnx_again.passed and _manifest(onnx_again)["route"][0]["edge"] == "tflite_to_onnx"


@pytest.mark.slow
def test_xnnpack_switch_and_inspect(exported, samples_dir):
    artifact = exported("mobilenet_v2.pt2", "tflite", "litert").artifact
    report = api.verify(str(samples_dir / "mobilenet_v2.pt2"), [artifact],
                        options=api.VerifyOptions(samples=1, xnnpack=False))
    assert report.passed and any("no delegate" in n for n in report.reports[0].notes)
    info = inspect_model(artifact)
    assert info["format"] == "tflite" and info["signature"]["inputs"][0]["shape"] == [1, 3, 224, 224]


@pytest.mark.slow
def test_corrupt_tflite_is_a_load_error(exported, tmp_path):
    data = open(exported("two_layer_net.pt2", "tflite", "litert").artifact, "rb").read()
    (tmp_path / "cut.tflite").write_bytes(data[:64])
    with pytest.raises(ModelLoadError):
        inspect_model(str(tmp_path / "cut.tflite"))


@pytest.mark.slow
def test_reference_architectures_not_written_for_deploykit(tmp_path):
    """A Keras application with random weights -> ONNX (tf2onnx) -> TFLite (onnx2tf). (torch's
    nn.TransformerEncoder -> TFLite through litert-torch, the same model with the same seed: its fp32 row in
    test_quantize.py::test_every_precision_of_a_reference_architecture[tflite], which exports it anyway.)"""
    import keras

    keras.utils.set_random_seed(0)
    from sample_models.keras_models import calibrate_batchnorm

    keras.utils.set_random_seed(0)
    # Logits, not softmax (a random classifier's probabilities are uniform and prove nothing), and
    # BatchNorm statistics from random images (else eval-mode BN leaves activations near zero).
    app = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(96, 96, 3), classes=10,
                                         classifier_activation=None)
    calibrate_batchnorm(app)
    app.save(tmp_path / "mnv3.keras")
    onnx_file = api.export(str(tmp_path / "mnv3.keras"), "onnx", str(tmp_path / "mnv3.onnx"))
    assert onnx_file.passed
    back = api.export(onnx_file.artifact, "tflite", str(tmp_path / "mnv3.tflite"))
    assert back.passed, back.parity.summary()
    report = api.verify(str(tmp_path / "mnv3.keras"), [onnx_file.artifact, back.artifact])
    assert report.passed


@pytest.mark.slow
def test_torch_to_saved_model_through_onnx2tf(exported):
    result = exported("two_layer_net.pt2", "saved_model")
    assert result.passed
    assert [hop["edge"] for hop in _manifest(result)["route"]] == ["torch_to_onnx", "onnx_to_saved_model"]
    assert inspect_model(result.artifact)["format"] == "saved_model"


@pytest.mark.slow
def test_hostile_onnx_names_export_verify_and_come_back_in_the_artifact(tmp_path):
    """Inputs "x:0", "ünï", outputs "class scores", "scores(1)", intermediates "a<b>", "a b"/"a;b"/"a_b" (colliding
    once cleaned), weights "1st": onnx2tf failed on them (exit 4); now renamed on its copy, exported, verified, and
    the .tflite, its manifest and contract name them as the source does (onnx2tf's own names were Identity, ...)."""
    from tests.conftest import run_cli
    from tests.hostile.builders import HOSTILE_INPUTS, HOSTILE_OUTPUTS, hostile_names_onnx

    source, artifact = hostile_names_onnx(tmp_path / "m.onnx"), tmp_path / "m.tflite"
    export = run_cli("export", str(source), "--to", "tflite", "-o", str(artifact))
    assert export.returncode == 0, export.stderr[-2000:]
    verify = run_cli("verify", str(source), str(artifact), "--json")
    assert verify.returncode == 0, verify.stderr[-2000:]
    comparison = json.loads(verify.stdout)["comparisons"][0]
    assert [o["name"] for o in comparison["outputs"]] == list(HOSTILE_OUTPUTS), comparison
    assert not any("by position" in note for note in comparison["notes"]), comparison["notes"]
    data = json.loads((tmp_path / "m.tflite.deploykit.json").read_text())
    for section in (data["signature"], data["contract"], inspect_model(str(artifact))["signature"]):
        assert [t["name"] for t in section["inputs"]] == list(HOSTILE_INPUTS), section
        assert [t["name"] for t in section["outputs"]] == list(HOSTILE_OUTPUTS), section
    assert any("renamed 11 tensor name(s)" in n for hop in data["route"] for n in hop["notes"]), data["route"]
