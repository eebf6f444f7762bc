"""The command as a user runs it: exit codes, one-line errors, no tracebacks, JSON output."""
import json

import numpy as np
import pytest

from tests.conftest import assert_clean_error, run_cli

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime]


@pytest.mark.slow
def test_export_verify_inspect_json_round_trip(samples_dir, tmp_path):
    out = tmp_path / "net.onnx"
    proc = run_cli("export", str(samples_dir / "two_layer_net.pt2"), "--to", "onnx", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["passed"] and data["artifact"] == str(out) and out.exists()
    proc = run_cli("verify", str(samples_dir / "two_layer_net.pt"), str(out), "--json", "--samples", "3")
    assert proc.returncode == 0 and json.loads(proc.stdout)["passed"]
    proc = run_cli("inspect", str(out), "--json")
    info = json.loads(proc.stdout)
    assert info["parameters"] == 101_110 and info["ops"]["Gemm"] == 2 and info["manifest"]["parity_passed"]


@pytest.mark.slow
def test_human_output_shows_the_metrics_table(samples_dir, tmp_path):
    proc = run_cli("export", str(samples_dir / "tiny_transformer.pt2"), "-o", str(tmp_path / "t.onnx"))
    assert proc.returncode == 0, proc.stderr
    for word in ("max_abs", "cosine", "top-1", "PASS", "exported"):
        assert word in proc.stdout


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty"), (b"PK\x03\x04junkjunkjunkjunkjunk", "truncated or corrupt"),
    (b"\x00\x01\x02\x03garbage", "unknown model format"), (b"\x08\x07\x12\x03abc\xff\xff", "not a valid ONNX"),
])
def test_bad_model_files_exit_2(cli, tmp_path, content, fragment):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    assert_clean_error(cli("export", str(path), "-o", str(tmp_path / "o.onnx")), 2, fragment)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.slow
def test_truncated_onnx_exits_2(samples_dir, tmp_path, exported):
    data = open(exported("two_layer_net.pt2").artifact, "rb").read()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    assert_clean_error(run_cli("inspect", str(tmp_path / "cut.onnx")), 2, "not a valid ONNX")


def test_usage_errors_exit_2(cli, samples_dir, tmp_path):
    src = str(samples_dir / "two_layer_net.pt2")
    assert_clean_error(cli("export", src, "--input", "x:64by1000"), 2, "bad shape")
    assert_clean_error(cli("export", src, "--to", "tensorrt"), 2, "unknown target")
    assert_clean_error(cli("export", src, "--input", "y:64x1000", "-o", str(tmp_path / "a.onnx")), 2,
                       "--input names y")
    np.savez(tmp_path / "wrong.npz", z=np.zeros((64, 1000), np.float32), w=np.zeros(3))
    assert_clean_error(cli("export", src, "--inputs", str(tmp_path / "wrong.npz"), "-o",
                               str(tmp_path / "b.onnx")), 2, "lacks input")
    assert_clean_error(cli("verify", src), 2, "no artifact to verify", "or a bundle folder alone")
    assert_clean_error(cli("verify", src, src, "--device", "tpu"), 2, "unknown --device")
    assert_clean_error(cli("export", src, "--quantize", "int8", "--report", str(tmp_path / "r")), 2,
                       "--report on export needs --quantize all")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_users_own_factory_needs_input_shapes(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())\n")
    # The factory's folder on PYTHONPATH, as the loader's remedy says: a child never searches the working directory.
    proc = run_cli("export", "mymodels:build", "-o", "m.onnx", cwd=tmp_path, extra_path=str(tmp_path))
    assert_clean_error(proc, 2, "does not record its input shapes", "--input")
    proc = run_cli("export", "mymodels:build", "-o", "m.onnx", "--input", "input:3x4", cwd=tmp_path,
                   extra_path=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.onnx").exists() and (tmp_path / "m.onnx.deploykit.json").exists()


def test_output_exists_and_unwritable_dir(cli, samples_dir, tmp_path):
    src = str(samples_dir / "two_layer_net.pt2")
    existing = tmp_path / "exists.onnx"
    existing.write_text("precious")
    assert_clean_error(cli("export", src, "-o", str(existing)), 2, "already exists", "--force")
    assert existing.read_text() == "precious"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_error(cli("export", src, "-o", str(blocker / "out.onnx")), 2, "is a file")
    assert_clean_error(cli("export", src, "-o", "/proc/deploykit-test/out.onnx"), 2, "output directory")


@pytest.mark.slow
def test_pickled_module_is_refused_unless_trusted(tmp_path):
    import torch

    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()), tmp_path / "whole.pt")
    proc = run_cli("export", str(tmp_path / "whole.pt"), "-o", str(tmp_path / "o.onnx"), "--input", "input:2x8")
    assert_clean_error(proc, 2, "arbitrary code", "--trust-pickle")
    proc = run_cli("export", str(tmp_path / "whole.pt"), "-o", str(tmp_path / "o.onnx"), "--input", "input:2x8",
                   "--trust-pickle")
    assert proc.returncode == 0, proc.stderr


def test_state_dict_alone_and_mismatched_weights(cli, samples_dir, tmp_path):
    weights = str(samples_dir / "two_layer_net.weights.pt")
    assert_clean_error(cli("export", weights), 2, "only weights", "--weights")
    proc = cli("export", "sample_models.transformer:tiny_transformer", "--weights", weights, "-o",
                   str(tmp_path / "x.onnx"))
    assert_clean_error(proc, 2, "does not fit the model")


@pytest.mark.slow
def test_dynamic_graph_exits_4_with_json_error(samples_dir, tmp_path):
    proc = run_cli("export", "sample_models.dynamic:dynamic_gate", "--weights",
                   str(samples_dir / "dynamic_gate.weights.pt"), "-o", str(tmp_path / "d.onnx"), "--json")
    assert_clean_error(proc, 4, "data-dependent control flow")
    assert json.loads(proc.stdout)["exit_code"] == 4


@pytest.mark.slow
def test_verify_failure_exits_1(samples_dir, exported, tmp_path):
    from tests.test_verify import _tamper

    bad = _tamper(exported("two_layer_net.pt2").artifact, tmp_path / "bad.onnx")
    proc = run_cli("verify", str(samples_dir / "two_layer_net.pt2"), bad)
    assert proc.returncode == 1 and "FAIL" in proc.stdout and "Traceback" not in proc.stderr


def test_doctor_and_samples_list(cli):
    proc = cli("doctor", "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and {r["edge"] for r in data["routes"]} >= {"torch_to_onnx"}
    # Every runtime runs here but Core ML, which predicts on macOS only (doctor says why: test_doctor_apple)
    assert all(r["available"] for r in data["runtimes"] if r["runtime"] != "coreml")
    proc = cli("samples", "list", "--json")
    assert {s["name"] for s in json.loads(proc.stdout)["samples"]} >= {"two_layer_net", "mobilenet_v2"}
    assert_clean_error(cli("samples", "build", "--only", "resnet"), 2, "unknown sample")
