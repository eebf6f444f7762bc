import pytest

from deploykit import api
from deploykit.errors import MissingDependency, UsageError
from deploykit.introspect import doctor, inspect_model

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime]


@pytest.mark.slow
def test_inspect_onnx_and_torch_agree_on_the_signature(exported, samples_dir):
    onnx_info = inspect_model(exported("mobilenet_v2.pt2").artifact)
    torch_info = inspect_model(str(samples_dir / "mobilenet_v2.pt2"))
    assert onnx_info["signature"]["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert torch_info["signature"]["inputs"] == onnx_info["signature"]["inputs"]
    assert onnx_info["ops"]["Conv"] == 52 and onnx_info["bytes"] > 8_000_000
    assert torch_info["parameters"] == 2_236_682
    assert 2_150_000 < onnx_info["parameters"] < 2_236_682     # BatchNorm folded into the convs
    ts_info = inspect_model(str(samples_dir / "two_layer_net.pt"))
    assert ts_info["ops"]["aten::linear"] == 2


def test_doctor_reports_routes_without_importing(monkeypatch):
    info = doctor()
    assert info["routes"][0]["available"] and info["python"]


def test_missing_dependency_is_exit_3_with_an_install_hint(monkeypatch, samples_dir, tmp_path):
    from deploykit import registry

    real = registry.missing_packages
    hidden = ("onnxscript", "litert_torch")
    monkeypatch.setattr(registry, "missing_packages", lambda req: [p for p in req if p in hidden] or real(req))
    with pytest.raises(MissingDependency) as info:
        api.export(str(samples_dir / "two_layer_net.pt2"), "onnx", str(tmp_path / "x.onnx"))
    assert info.value.exit_code == 3 and "deploykit[torch]" in info.value.remedy


@pytest.mark.slow
def test_unsupported_target_route_is_a_usage_error(exported, tmp_path):
    with pytest.raises(UsageError, match="already onnx"):
        api.export(exported("two_layer_net.pt2").artifact, "onnx", str(tmp_path / "x.onnx"))
    with pytest.raises(UsageError, match="unknown target"):
        api.export(exported("two_layer_net.pt2").artifact, "tensorrt", str(tmp_path / "x.ml"))


@pytest.mark.slow
@pytest.mark.executorch
def test_demo_runs_end_to_end_with_the_research_vs_production_table(tmp_path):
    from deploykit.demo.run import run_demo

    result = run_demo(str(tmp_path / "demo"), echo=False)
    assert result["passed"], result
    assert result["steps"][-2]["expected_failure"]["exit_code"] == 4
    story = result["steps"][-1]
    from deploykit.demo.seed_story import REFERENCE_LABEL, reference_targets

    runtimes = ("torch", "onnxruntime", "litert", "executorch") + ((REFERENCE_LABEL,) if reference_targets() else ())
    assert {(r["model"], r["runtime"]) for r in story["rows"]} == \
        {(m, r) for m in ("two_layer_net", "mobilenet_v2") for r in runtimes}
    for row in story["rows"]:      # Core AI's Linux CPU path: verified, timed, never a speed-up
        assert bool(row.get("reference")) == (row["runtime"] == REFERENCE_LABEL)
        assert not row.get("reference") or "speedup_vs_torch" not in row
    for row in story["rows"]:
        assert row["p50_ms"] > 0 and row["size_bytes"] > 0 and row["cold_start_s"] > 0, row
        assert row["runtime"] == "torch" or (row["parity_passed"] and row["max_abs"] < 1e-3), row
    assert any(r["bindings_import_s"] for r in story["rows"] if r["runtime"] == "executorch")


def test_demo_folder_is_reused_but_a_users_folder_is_refused(tmp_path):
    from deploykit.demo.run import MARKER, _prepare_dir

    first = _prepare_dir(str(tmp_path / "demo"))
    (first / "two_layer_net.onnx").write_text("from the last run")
    assert _prepare_dir(str(tmp_path / "demo")) == first and (first / MARKER).exists()   # a second run may replace
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(UsageError, match="not made by"):
        _prepare_dir(str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "user data"
