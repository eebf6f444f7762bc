"""Regression tests of the redesign: one answer for the same mistake, whichever door it comes through."""
import json
import math

import pytest

from deploykit import api
from deploykit.errors import UsageError
from deploykit.fsutil import sha256_of
from tests.conftest import assert_clean_error, run_cli

FAKE_TFLITE = b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64


def test_inspect_of_a_tflite_file_that_does_not_load_in_time_says_loading(tmp_path):
    """Was: "the litert converter did not finish within 120 s — raise --timeout, or try another route with --via"
    (no converter is involved; 120 s hard-coded; --timeout ignored; --via meaningless)."""
    model = tmp_path / "x.tflite"
    model.write_bytes(FAKE_TFLITE)
    proc = run_cli("inspect", str(model), "--timeout", "0.001")
    assert_clean_error(proc, 2, "loading x.tflite did not finish within 0.001 s", "--timeout")
    assert "converter" not in proc.stderr and "--via" not in proc.stderr


@pytest.mark.litert
def test_inspect_of_a_corrupt_tflite_file_is_a_load_error_from_the_child(tmp_path):
    model = tmp_path / "x.tflite"
    model.write_bytes(FAKE_TFLITE)
    proc = run_cli("inspect", str(model))
    assert_clean_error(proc, 2, "not a valid TFLite model")


@pytest.mark.parametrize("options, fragment", [
    (dict(device="tpu"), "unknown --device 'tpu'"),
    (dict(timeout=math.nan), "--timeout must be a positive number"),
    (dict(samples=0), "--samples must be at least 1"),
    (dict(precision="int4"), "unknown precision 'int4'"),
    (dict(atol=-1.0), "--atol must be a non-negative number"),
])
def test_verify_options_are_checked_where_they_are_made(options, fragment):
    """Was: api.verify(..., VerifyOptions(device="tpu")) silently ran on CPU; only the CLI checked."""
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace("'", "'")):
        api.VerifyOptions(**options)


@pytest.mark.parametrize("options, fragment", [
    (dict(iterations=0), "--iterations must be an integer >= 1"),
    (dict(warmup=-1), "--warmup must be an integer >= 0"),
    (dict(seconds=0.0), "--seconds must be a positive number"),
    (dict(threads=(0,)), "--threads takes positive integers"),
    (dict(runtimes=("tpu",)), "unknown runtime"),
    (dict(timeout=math.inf), "--timeout must be a positive number"),
])
def test_bench_options_are_checked_where_they_are_made(options, fragment):
    """Was: api.bench(..., BenchOptions(iterations=0)) died with IndexError (exit 5)."""
    with pytest.raises(UsageError, match=fragment):
        api.BenchOptions(**options)


def test_quantize_and_export_options_are_checked_in_the_api(tmp_path):
    with pytest.raises(UsageError, match="unknown --quantize 'int3'"):
        api.QuantizeOptions(mode="int3")
    with pytest.raises(UsageError, match="unknown --route 'best'"):
        api.export("sample_models.two_layer:two_layer_net", "onnx", str(tmp_path / "m.onnx"), route="best")
    with pytest.raises(UsageError, match="--opset 99 is outside"):
        api.export("sample_models.two_layer:two_layer_net", "onnx", str(tmp_path / "m.onnx"), opset=99)
    with pytest.raises(UsageError, match="--report on export needs --quantize all"):
        api.export("sample_models.two_layer:two_layer_net", "onnx", str(tmp_path / "m.onnx"), report=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["verify", "a.pt2", "b.onnx", "--device", "tpu"], "unknown --device 'tpu'"),
    (["bench", "a.onnx", "--iterations", "0"], "--iterations must be an integer >= 1"),
    (["bench", "a.onnx", "--threads", "0"], "--threads takes positive integers"),
    (["export", "a.pt2", "--route", "best"], "unknown --route 'best'"),
    (["export", "a.pt2", "--quantize", "int3"], "unknown --quantize 'int3'"),
    (["export", "a.pt2", "--timeout", "nan"], "--timeout must be a positive number"),
])
def test_the_cli_gives_the_apis_answer(args, fragment):
    assert_clean_error(run_cli(*args), 2, fragment)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_every_hop_hash_is_taken_when_the_hop_is_made(samples_dir, tmp_path):
    """Was: the manifest's per-hop artifact_sha256 was always null (hashed after the staging folder was gone)."""
    result = api.export(str(samples_dir / "two_layer_net.pt2"), "tflite", str(tmp_path / "m.tflite"), via="onnx")
    hops = json.loads(open(result.manifest).read())["route"]
    assert [h["edge"] for h in hops] == ["torch_to_onnx", "onnx_to_tflite"]
    assert all(h["outcome"] == "OK" and len(h["artifact_sha256"] or "") == 64 for h in hops)
    assert hops[-1]["artifact_sha256"] == sha256_of(result.artifact)
    assert json.loads(open(result.manifest).read())["artifact"]["sha256"] == sha256_of(result.artifact)
    assert result.opened.sha256 == sha256_of(result.artifact)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
@pytest.mark.litert
def test_an_unknown_input_name_gets_one_answer_for_every_format(samples_dir, keras_samples_dir, exported):
    """Was: four merges of --input with a signature; two rejected unknown names, two ignored them."""
    files = {"exported_program": samples_dir / "two_layer_net.pt2", "torchscript": samples_dir / "two_layer_net.pt",
             "onnx": exported("two_layer_net.pt2").artifact,
             "tflite": exported("two_layer_net.pt2", "tflite", "litert").artifact,
             "keras": keras_samples_dir / "keras_two_layer_net.keras"}
    answers = {}
    for kind, path in files.items():
        proc = run_cli("inspect", str(path), "--input", "nosuch:1x1000")
        assert_clean_error(proc, 2, "--input names nosuch but the model's inputs are", "name each --input after")
        answers[kind] = proc.stderr.split(" but ")[0]
    assert len(set(answers.values())) == 1, answers
