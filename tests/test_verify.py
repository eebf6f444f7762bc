import numpy as np
import pytest

from deploykit import api
from deploykit.errors import ParityError

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime]


def _tamper(src: str, dst, scale: float = 1.05) -> str:
    """A copy of an ONNX model with its largest weight scaled: a real, subtle mismatch."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(src)
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    biggest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(biggest) * scale, biggest.name))
    onnx.save(model, str(dst))
    return str(dst)


@pytest.mark.slow
def test_verify_passes_on_a_good_export_with_user_data(exported, samples_dir):
    result = exported("mobilenet_v2.pt2")
    report = api.verify(str(samples_dir / "mobilenet_v2.pt2"), [result.artifact],
                        options=api.VerifyOptions(samples=2, inputs_npz=str(samples_dir / "mobilenet_v2.inputs.npz")))
    assert report.passed
    comparison = report.to_dict()["comparisons"][0]
    assert comparison["samples"] == 3 and comparison["outputs"][0]["top1_agreement"] == 1.0


@pytest.mark.slow
def test_verify_catches_a_tampered_artifact(exported, samples_dir, tmp_path):
    bad = _tamper(exported("two_layer_net.pt2").artifact, tmp_path / "bad.onnx")
    report = api.verify(str(samples_dir / "two_layer_net.pt2"), [bad])
    assert not report.passed
    out = report.reports[0].outputs[0]
    assert out.status == "fail" and out.max_abs > 1e-3 and out.failing_samples


@pytest.mark.slow
def test_chain_report_compares_each_artifact_with_the_source_and_each_hop(exported, samples_dir, tmp_path):
    good = exported("two_layer_net.pt2").artifact
    bad = _tamper(good, tmp_path / "bad.onnx", scale=1.5)
    report = api.verify(str(samples_dir / "two_layer_net.pt"), [good, bad])
    passed = [r.passed for r in report.reports]
    assert passed == [True, False, False]          # good vs src, bad vs src, bad vs good
    assert "two_layer_net.pt" in report.reports[0].reference


@pytest.mark.slow
def test_onnx_source_runs_isolated_too(exported):
    artifact = exported("tiny_transformer.pt2").artifact
    assert api.verify(artifact, [artifact]).passed


@pytest.mark.slow
def test_custom_tolerance_can_make_verify_stricter(exported, samples_dir):
    artifact = exported("mobilenet_v2.pt2").artifact
    report = api.verify(str(samples_dir / "mobilenet_v2.pt2"), [artifact],
                        options=api.VerifyOptions(samples=1, atol=0.0, rtol=0.0))
    assert not report.passed                      # float reordering is never bit-exact
    assert report.reports[0].outputs[0].cosine > 0.99999


@pytest.mark.slow
def test_an_artifact_that_crashes_its_runtime_is_a_parity_error(tmp_path, monkeypatch, exported):
    from deploykit import child

    artifact = exported("two_layer_net.pt2").opened
    crasher = tmp_path / "crash.sh"
    crasher.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crasher.chmod(0o755)
    monkeypatch.setattr(child.sys, "executable", str(crasher))
    monkeypatch.setenv("DEPLOYKIT_ZYGOTE", "0")     # a child of its own, started from the crasher (forked children:
                                                    # tests/test_zygote.py crashes one)
    with pytest.raises(ParityError, match="running two_layer_net_pt2_torch_to_onnx.onnx crashed with SIGSEGV"):
        artifact.run([{"x": np.zeros((64, 1000), np.float32)}])


def test_onnxruntime_device_selection():
    from deploykit.errors import UsageError
    from runtimes.onnxruntime import providers_for

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert providers_for("auto")[-1] == "CPUExecutionProvider"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UsageError, match="CUDA"):
            providers_for("cuda")


@pytest.mark.slow
@pytest.mark.gpu
def test_verify_on_the_cuda_execution_provider(exported, samples_dir):
    report = api.verify(str(samples_dir / "tiny_transformer.pt2"), [exported("tiny_transformer.pt2").artifact],
                        options=api.VerifyOptions(device="cuda", precision="fp16"))
    assert report.passed
