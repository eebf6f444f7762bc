"""bench and matrix on emulated ARM cores (issue 28, items 4 and 6): an ARM bench row reports its parity with the
native runtime and never a latency; a matrix spec verifies its cells on an ARM runtime and core."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploykit import api
from deploykit.benchmark.cases import EMULATED_ROWS, BenchOptions, plan
from deploykit.errors import UsageError
from tests.hostile import builders


def test_default_bench_adds_no_arm_row_and_arm_cpu_needs_one(tmp_path):
    model = tmp_path / "m.onnx"
    builders.tiny_onnx(model)
    cases, skipped = plan([str(model)], BenchOptions())
    rows = {c["row"] for c in cases} | {s["runtime"] for s in skipped}
    assert "onnxruntime" in rows and not rows & set(EMULATED_ROWS)
    named, _ = plan([str(model)], BenchOptions(runtimes=("onnxruntime-arm64",), threads=(1, 2)))
    assert [c["row"] for c in named] == ["onnxruntime-arm64"]      # one case: threads change no parity
    with pytest.raises(UsageError, match="--arm-cpu picks the core of an emulated ARM row"):
        BenchOptions(arm_cpu="cortex-a53")
    with pytest.raises(UsageError, match="unknown --arm-cpu 'cortex-a55'") as refused:
        BenchOptions(runtimes=("onnxruntime-arm64",), arm_cpu="cortex-a55")
    assert "nearest qemu emulates is cortex-a53" in refused.value.remedy


@pytest.mark.arm
@pytest.mark.litert
@pytest.mark.onnxruntime
@pytest.mark.slow
def test_bench_arm_rows_show_parity_never_latency(exported, tmp_path, monkeypatch):
    from deploykit.benchmark import report

    plotted = []
    real_plot = report._plot_latency
    monkeypatch.setattr(report, "_plot_latency", lambda cases, fp: (plotted.extend(cases), real_plot(cases, fp))[1])
    tflite = exported("two_layer_net.pt2", "tflite").artifact
    onnx = exported("two_layer_net.pt2", "onnx").artifact
    result = api.bench([tflite, onnx], BenchOptions(runtimes=("litert", "litert-arm64", "onnxruntime-arm64"),
                                                    iterations=5, warmup=1, arm_cpu="cortex-a53"),
                       report_dir=str(tmp_path / "report"))
    rows = {(Path(c["model"]).suffix, c["row"]): c for c in result["cases"]}
    assert set(rows) == {(".tflite", "litert"), (".tflite", "litert-arm64"), (".onnx", "onnxruntime-arm64")}
    assert "latency_ms" in rows[(".tflite", "litert")]
    for key in ((".tflite", "litert-arm64"), (".onnx", "onnxruntime-arm64")):
        row = rows[key]
        assert "error" not in row, row
        assert row["emulated"] and row["latency"] == "emulated" and row["cpu"] == "cortex-a53"
        assert not {"latency_ms", "throughput_per_s", "gflops_per_s", "time_to_first_result_s"} & set(row)
        assert row["parity"]["against"] == key[1].removesuffix("-arm64")
        assert row["parity"]["max_abs"] < 1e-4 and row["parity"]["cosine"] > 0.99999, row["parity"]
    assert any("never a latency" in note for note in result["notes"])
    assert [c["row"] for c in plotted] == ["litert"]        # the latency plot never shows an emulated row
    page = Path(result["report"]["html"]).read_text()
    assert "Emulated ARM cores (parity, not latency)" in page and "cortex-a53" in page


@pytest.mark.arm
@pytest.mark.litert
@pytest.mark.torch
@pytest.mark.slow
def test_matrix_cell_is_verified_on_the_arm_core(samples_dir, tmp_path):
    from deploykit.matrix.run import run_matrix

    spec = tmp_path / "arm.toml"
    spec.write_text("\n".join(["[matrix]", 'targets = ["tflite"]', "bench = []", "samples = 2",
                               'verify_runtimes = ["litert-arm64"]', 'arm_cpu = "cortex-a53"', "",
                               "[[models]]", f"path = {json.dumps(str(samples_dir / 'two_layer_net.pt2'))}", ""]))
    result = run_matrix(str(spec), str(tmp_path / "out"), workers=1)
    assert result["summary_line"] == "1 passed, 0 failed, 0 unsupported", result["cells"]
    comparisons = result["cells"][0]["verify"]["comparisons"]
    on_arm = [c for c in comparisons if "litert-arm64" in json.dumps(c)]
    assert on_arm and all(c["passed"] for c in on_arm), comparisons
    assert "cortex-a53" in json.dumps(on_arm)


def test_matrix_spec_arm_cpu_is_checked_before_any_cell(tmp_path):
    from deploykit.matrix.spec import load_spec

    def spec(*lines):
        path = tmp_path / "s.toml"
        path.write_text("\n".join(["[matrix]", 'targets = ["tflite"]', *lines, "", "[[models]]",
                                   'factory = "sample_models.two_layer:two_layer_net"', ""]))
        return str(path)

    assert load_spec(spec('verify_runtimes = ["litert-arm64"]', 'arm_cpu = "Cortex-A53"')).arm_cpu == "cortex-a53"
    assert "arm_cpu" not in load_spec(spec('verify_runtimes = ["litert-arm64"]')).settings()  # old keys unchanged
    with pytest.raises(UsageError, match="verify_runtimes names no ARM runtime"):
        load_spec(spec('arm_cpu = "cortex-a53"'))
    with pytest.raises(UsageError, match=r"s.toml: \[matrix\] unknown --arm-cpu 'cortex-a55'"):
        load_spec(spec('verify_runtimes = ["onnxruntime-arm64"]', 'arm_cpu = "cortex-a55"'))
