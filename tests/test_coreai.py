"""Apple Core AI: `.aimodel` detection, the torch → Core AI edge (coreai-torch), the coreai runtime (coreai-core's
CPU runtime, a reference runtime on Linux) in verify, chains, inspect and bench, fp16, dynamic batch, and the
errors (an op Core AI cannot lower, a shape the asset does not take, a damaged asset).
Tests that export are `slow` (4-12 s each) and `coreai` + `torch`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploykit import registry
from deploykit.errors import ModelLoadError, UsageError
from deploykit.exporting import routing
from deploykit.formats import Format, detect
from tests.conftest import assert_clean_error, run_cli


def exporting(test):
    """A test that runs coreai-torch: `slow`, `coreai`, `torch`."""
    for mark in (pytest.mark.slow, pytest.mark.coreai, pytest.mark.torch):
        test = mark(test)
    return test


def _fake_asset(folder: Path) -> Path:
    folder.mkdir()
    (folder / "metadata.json").write_text('{"assetVersion": "2.0"}')
    (folder / "main.mlirb").write_bytes(b"ML\xefR" + bytes(32))
    return folder


def test_an_aimodel_folder_is_detected_by_content_not_name(tmp_path):
    assert detect(_fake_asset(tmp_path / "model.bundle")) == Format.COREAI
    (tmp_path / "fake.aimodel").mkdir()
    (tmp_path / "fake.aimodel" / "metadata.json").write_text("{}")     # no program beside it
    with pytest.raises(ModelLoadError, match="holds no known model") as info:
        detect(tmp_path / "fake.aimodel")
    assert "Core AI .aimodel" in info.value.remedy


def test_coreai_is_a_target_from_torch_sources_with_fp16_only():
    assert registry.target_format("coreai") == Format.COREAI
    for src in (Format.TORCHSCRIPT, Format.EXPORTED_PROGRAM, Format.STATE_DICT, Format.PYTHON_FACTORY):
        assert [e.name for e in routing.select_routes(src, Format.COREAI, None)[0]] == ["torch_to_coreai"]
    assert routing.quantize_modes(Format.COREAI) == ("fp16",)
    with pytest.raises(UsageError, match="int8 is not available for --to coreai") as info:
        routing.select_routes(Format.EXPORTED_PROGRAM, Format.COREAI, None, "int8")
    assert "fp16" in info.value.remedy
    with pytest.raises(UsageError, match="no conversion from onnx to coreai"):
        routing.select_routes(Format.ONNX, Format.COREAI, None)


def test_the_summary_signature_is_parsed_with_dynamic_dims():
    from runtimes.coreai import _tensor

    spec = _tensor("image", "NDArray (Float32, 1 × ? × 224 × 224)")
    assert (spec.name, spec.shape, spec.dtype) == ("image", (1, None, 224, 224), "float32")
    assert _tensor("ids", "NDArray (Int32, 8)").dtype == "int32"
    with pytest.raises(ModelLoadError, match="not a numeric NDArray"):
        _tensor("pixels", "PixelBuffer (BGRA, 224 × 224)")


def test_coreai_lowering_errors_name_the_op():
    from converters.torch_to_coreai import _conversion_error

    error = _conversion_error(ValueError("The exported program contains unsupported ATen ops: aten.sort.default. "
                                         "Use register_torch_lowering() to provide a custom lowering for these ops."))
    assert "no lowering for aten.sort.default" in error.message and "--to onnx" in error.remedy
    other = _conversion_error(RuntimeError("something\nelse"))
    assert "RuntimeError: something else" in other.message


def test_a_reference_runtime_is_flagged_and_never_the_production_headline(tmp_path):
    from deploykit.benchmark.cases import REFERENCE_ROWS, BenchOptions, headline, plan

    assert REFERENCE_ROWS == ("coreai",)
    cases, skipped = plan([str(_fake_asset(tmp_path / "m.aimodel"))], BenchOptions())
    rows = cases + [dict(s, row=s["runtime"]) for s in skipped]
    assert [r["row"] for r in rows] == ["coreai"]
    assert all(c.get("reference") for c in cases)

    def row(name, p50, **extra):
        return {"row": name, "model": f"m.{name}", "options": {"threads": 1}, "batch": None, "peak_rss_bytes": 1,
                "time_to_first_result_s": 1.0, "latency_ms": {"p50": p50}, **extra}

    # Core AI 'faster' than ONNX Runtime here would still not be the production row.
    head = headline([row("torch", 10.0), row("coreai", 1.0, reference=True), row("onnxruntime", 5.0)])
    assert head["production"].startswith("onnxruntime") and head["speedup"] == 2.0
    assert headline([row("torch", 10.0), row("coreai", 1.0, reference=True)]) is None


def test_the_seed_story_gives_a_reference_row_no_speedup():
    from deploykit.demo.seed_story import with_speedups

    table = with_speedups({"rows": [{"model": "m", "runtime": "torch", "p50_ms": 10.0},
                                    {"model": "m", "runtime": "onnxruntime", "p50_ms": 2.0},
                                    {"model": "m", "runtime": "coreai (reference runtime, Linux CPU)",
                                     "p50_ms": 400.0, "reference": True}]})
    assert table["rows"][1]["speedup_vs_torch"] == 5.0
    assert "speedup_vs_torch" not in table["rows"][2]


@pytest.fixture(scope="module")
def aimodel(exported):
    """The seed's two-layer net (torch.export) exported once to Core AI for this module's runner tests."""
    result = exported("two_layer_net.pt2", "coreai")
    assert result.passed, result.parity
    return result


@exporting
@pytest.mark.parametrize("source", ["mobilenet_v2.pt2", "two_layer_custom_relu.pt2", "two_layer_net.pt",
                                    "tiny_transformer.pt2"])
def test_samples_export_to_coreai_and_pass_fp32_parity(samples_dir, exported, source):
    """torch.export programs, the custom autograd Function and a TorchScript archive (TS → ExportedProgram)."""
    result = exported(source, "coreai")
    assert result.passed and result.parity.tolerance.preset == "fp32"
    assert max(o.max_abs for o in result.parity.outputs) < 1e-4
    assert min(o.cosine for o in result.parity.outputs) > 0.99999
    stored = json.loads(Path(result.manifest).read_text())
    assert [hop["edge"] for hop in stored["route"]] == ["torch_to_coreai"]
    assert stored["artifact"]["format"] == "coreai" and Path(result.artifact, "main.mlirb").is_file()
    assert any("Core AI program:" in note for hop in stored["route"] for note in hop["notes"])


@exporting
def test_fp16_is_judged_at_the_fp16_preset_with_float32_io(samples_dir, tmp_path):
    from deploykit import api

    # The seed's custom autograd Function in half precision (MobileNetV2's fp16 row is in bench/apple_targets.py).
    result = api.export(str(samples_dir / "two_layer_custom_relu.pt2"), "coreai", str(tmp_path / "t16.aimodel"),
                        quantize=api.QuantizeOptions("fp16"))
    assert result.passed and result.parity.tolerance.preset == "fp16"
    assert 1e-4 < max(o.max_abs for o in result.parity.outputs) < 0.1      # float16 arithmetic shows, within fp16
    info = api.inspect(result.artifact)
    assert "Float16" in info["details"]["compute_types"]
    assert [t["dtype"] for t in info["signature"]["inputs"] + info["signature"]["outputs"]] == ["float32"] * 2


@exporting
def test_dynamic_batch_is_verified_at_batch_3(tmp_path):
    from deploykit import api

    result = api.export("sample_models.two_layer:two_layer_net", "coreai", str(tmp_path / "d.aimodel"),
                        dynamic_batch=True)
    assert result.passed
    assert any("batch 3" in note for hop in result.route for note in hop["notes"])
    assert api.inspect(result.artifact)["signature"]["inputs"][0]["shape"][0] is None


@exporting
def test_chain_pt2_onnx_tflite_aimodel_verifies_in_one_report(samples_dir, exported):
    files = [exported("mobilenet_v2.pt2", to).artifact for to in ("onnx", "tflite", "coreai")]
    proc = run_cli("verify", str(samples_dir / "mobilenet_v2.pt2"), *files, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = json.loads(proc.stdout)["comparisons"]
    assert len(reports) == 5 and all(r["passed"] for r in reports)       # 3 vs the source, 2 hop to hop
    coreai = [r for r in reports if r["candidate"].endswith(".aimodel (coreai)")
              and r["reference"].endswith(".pt2 (exported_program)")][0]
    assert any("ran on coreai" in note for note in coreai["notes"])


@exporting
def test_inspect_and_bench_show_the_asset_and_flag_the_reference_runtime(aimodel):
    info = json.loads(run_cli("inspect", aimodel.artifact, "--json").stdout)
    assert info["format"] == "coreai" and info["nodes"] > 10 and "batch_matmul" in info["ops"]
    assert info["signature"]["inputs"][0]["shape"] == [64, 1000] and info["details"]["functions"] == ["main"]
    proc = run_cli("bench", aimodel.artifact, "--iterations", "3", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    bench = json.loads(proc.stdout)
    assert [c["row"] for c in bench["cases"]] == ["coreai"] and bench["cases"][0]["reference"] is True
    assert any("reference runtime" in note and "not device time" in note for note in bench["notes"])


@exporting
def test_a_shape_the_static_asset_does_not_take_names_the_expected_shape(aimodel):
    from deploykit.artifact import Artifact

    with pytest.raises(UsageError, match=r"has shape \[3, 1000\], the Core AI model takes \[64, 1000\]"):
        Artifact.open(aimodel.artifact).run([{"x": np.zeros((3, 1000), np.float32)}])


@exporting
def test_an_op_core_ai_cannot_lower_is_named_exit_4(tmp_path):
    import torch

    class Sorts(torch.nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=1)[0]

    torch.export.save(torch.export.export(Sorts(), (torch.rand(2, 8),)), str(tmp_path / "sorts.pt2"))
    proc = run_cli("export", str(tmp_path / "sorts.pt2"), "--to", "coreai", "-o", str(tmp_path / "s.aimodel"))
    assert_clean_error(proc, 4, "coreai-torch has no lowering for aten.sort.default")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sorts.pt2"]       # nothing left behind


@exporting
def test_a_damaged_asset_is_one_line_exit_2(aimodel, tmp_path):
    import shutil

    broken = tmp_path / "broken.aimodel"
    shutil.copytree(aimodel.artifact, broken)
    (broken / "main.mlirb").write_bytes((broken / "main.mlirb").read_bytes()[:40])
    assert_clean_error(run_cli("inspect", str(broken)), 2, "Core AI cannot read the asset")


@exporting
def test_a_field_model_mtcnn_onet_exports_to_coreai_with_its_three_heads(tmp_path):
    """facenet-pytorch 2.6.0's MTCNN ONet (MIT, the wheel's own module code and weights; PReLU, ceil-mode pooling,
    a permute before its dense layers): box, landmarks and face probability all within the fp32 preset."""
    from bench.field_torch import FACENET, FACENET_MODULE, build_mtcnn
    from deploykit import api
    from tests.field import field_file

    source = build_mtcnn(field_file(FACENET, FACENET_MODULE), field_file(FACENET, "facenet_pytorch/data/onet.pt"))
    result = api.export(str(source), "coreai", str(tmp_path / "onet.aimodel"))
    assert result.passed and result.parity.tolerance.preset == "fp32"
    assert sorted(tuple(o.shape) for o in result.parity.outputs) == [(1, 2), (1, 4), (1, 10)]
    assert min(o.cosine for o in result.parity.outputs) > 0.99999


@exporting
def test_a_scalar_input_stays_a_scalar(tmp_path):
    """A 0-d input (a gain, a sample rate) reaches Core AI as a 0-d array (np.ascontiguousarray made it [1])."""
    import torch

    class Scales(torch.nn.Module):
        def forward(self, x, scale):
            return x * scale + 1

    torch.export.save(torch.export.export(Scales(), (torch.rand(2, 3), torch.tensor(2.0))), str(tmp_path / "s.pt2"))
    assert run_cli("export", str(tmp_path / "s.pt2"), "--to", "coreai", "-o", str(tmp_path / "s.aimodel")).returncode == 0
    proc = run_cli("verify", str(tmp_path / "s.pt2"), str(tmp_path / "s.aimodel"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["passed"]


@exporting
def test_data_dependent_control_flow_is_refused_with_its_line_named(samples_dir, tmp_path):
    proc = run_cli("export", "sample_models.dynamic:dynamic_gate", "--weights",
                   str(samples_dir / "dynamic_gate.weights.pt"), "--to", "coreai", "-o", str(tmp_path / "g.aimodel"))
    assert_clean_error(proc, 4, "data-dependent control flow at dynamic.py:23", "coreai-torch's exporter")
    assert not list(tmp_path.iterdir())
