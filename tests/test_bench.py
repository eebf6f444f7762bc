"""deploykit bench and the research-vs-production report."""
import json

import numpy as np
import pytest

from deploykit import api
from deploykit.benchmark.cases import BenchOptions, plan, summarize
from deploykit.errors import UsageError
from deploykit.machine import cpu_peak, install_footprint

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime, pytest.mark.litert]
QUICK = dict(warmup=2, iterations=15)


@pytest.fixture(scope="module")
def trio(exported, samples_dir):
    """A source and its ONNX and TFLite artifacts."""
    return [str(samples_dir / "two_layer_net.pt2"), exported("two_layer_net.pt2").artifact,
            exported("two_layer_net.pt2", "tflite", "litert").artifact]


@pytest.mark.slow
def test_plan_picks_the_rows_each_format_runs_and_explains_skips(trio):
    cases, skipped = plan(trio, BenchOptions(threads=(1, 2)))
    rows = {(c["format"], c["row"]) for c in cases}
    assert ("exported_program", "torch") in rows and ("onnx", "onnxruntime") in rows
    assert ("tflite", "litert") in rows and ("tflite", "litert_no_xnnpack") in rows
    assert {c["options"]["threads"] for c in cases} == {1, 2}
    gpu_rows = {s["runtime"]: s["reason"] for s in skipped}
    if gpu_rows:   # no GPU here: the GPU rows are skipped with the reason, never silently
        assert gpu_rows == {"torch_cuda": "no NVIDIA GPU on this machine",
                            "onnxruntime_cuda": "no NVIDIA GPU on this machine"}
    with pytest.raises(UsageError, match="unknown runtime"):
        plan(trio, BenchOptions(runtimes=("coreml",)))


@pytest.mark.slow
def test_mobile_profile_pins_litert_to_one_and_two_cores(trio):
    cases, _ = plan(trio, BenchOptions(profile="mobile"))
    assert [(c["row"], c["affinity"]) for c in cases] == [("litert", [0]), ("litert", [0, 1])]


def test_statistics_are_a_distribution_and_flag_wide_spread():
    raw = {"times_ms": [10.0] * 8 + [11.0, 30.0], "input_shapes": {"x": [4, 3]}, "peak_rss_bytes": 100,
           "rss_at_start_bytes": 40}
    result = summarize(dict(raw))
    assert result["latency_ms"]["p50"] == 10.0 and result["latency_ms"]["p99"] > 11
    assert result["latency_ms"]["iterations"] == 10 and result["rss_delta_bytes"] == 60
    assert result["throughput_per_s"] == pytest.approx(4 * 1000 / 12.1, rel=1e-3)
    assert result["noisy"] is True
    quiet = summarize({**raw, "times_ms": [10.0] * 10})
    assert quiet["noisy"] is False


@pytest.mark.slow
@pytest.mark.serial
def test_bench_measures_every_field_in_child_processes(trio):
    result = api.bench(trio, BenchOptions(runtimes=("torch", "onnxruntime", "litert", "litert_no_xnnpack"), **QUICK))
    assert len(result["cases"]) == 4 and not any("error" in c for c in result["cases"])
    for case in result["cases"]:
        for key in ("model_load_s", "cold_start_s", "first_inference_ms", "throughput_per_s", "peak_rss_bytes",
                    "rss_delta_bytes", "size_bytes", "providers", "os_threads", "gflops_per_s", "fraction_of_peak"):
            assert case[key] is not None, key
        assert case["latency_ms"]["iterations"] == 15
        assert case["latency_ms"]["min"] <= case["latency_ms"]["p50"] <= case["latency_ms"]["p99"]
    by_row = {c["row"]: c for c in result["cases"]}
    assert by_row["litert"]["providers"] == ["XNNPACK"]
    assert by_row["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    flops = result["flops"]
    assert flops[trio[0]]["flops"] == flops[trio[1]]["flops"] == 2 * 64 * (1000 * 100 + 100 * 10)
    assert "of its source" in flops[trio[2]]["method"]
    assert result["headline"]["research"].startswith("torch") and result["headline"]["speedup"] > 0
    # the "delegated" column: measured here, one readiness per artifact file, "—" for the research row
    litert = by_row["litert"]["delegated"]
    assert litert["text"] == "XNNPACK 2/2 nodes · 100% of FLOPs · 1 partition"
    assert (litert["supported"], litert["total"], litert["partitions"], litert["flop_share"]) == (2, 2, 1, 1.0)
    assert litert["predicted"].startswith("GPU delegate: YES")
    assert by_row["litert_no_xnnpack"]["delegated"]["text"] == "XNNPACK off: 2 nodes on builtin kernels"
    assert by_row["onnxruntime"]["delegated"]["text"] == "CPU EP: all nodes"
    assert "NNAPI YES" in by_row["onnxruntime"]["delegated"]["predicted"]
    assert by_row["torch"]["delegated"] == {"text": "—", "why": "a research framework: its own kernels, no delegate"}
    assert sorted(result["delegation"]["artifacts"]) == sorted(trio[1:])
    # fully delegated: a finding here can only be a row slower than torch (timing-dependent), never a coverage gap
    assert all("slower than torch (delegated: " in f for f in result["delegation"]["findings"])


@pytest.mark.slow
@pytest.mark.serial
def test_report_is_self_contained_with_plots_and_parity(trio, tmp_path):
    result = api.bench(trio, BenchOptions(runtimes=("torch", "onnxruntime", "litert"), **QUICK),
                       report_dir=str(tmp_path / "report"))
    report = result["report"]
    page = open(report["html"]).read()
    assert page.count("data:image/png;base64,") == 5 and "production vs research" in page
    # beside latency: the std column, then what ran where (measured) and what a phone's accelerator would take
    assert "<th>std ms</th><th>delegated (measured here)</th><th>phone accelerator (predicted)</th>" in page
    rows = {cells[1]: cells for cells in (row.split("</td><td>") for row in page.split("<tr><td>")[1:])}
    assert rows["litert"][8:10] == ["XNNPACK 2/2 nodes · 100% of FLOPs · 1 partition",
                                    "GPU delegate: YES (2/2 nodes · 1 partition · 100% of FLOPs)"]
    assert rows["torch"][8:10] == ["—", "—"] and rows["onnxruntime"][8] == "CPU EP: all nodes"
    for png in report["plots"].values():
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    data = json.loads(open(report["json"]).read())
    assert data["parity"]["passed"] and "max error" in data["headline_text"]
    assert data["footprint"]["litert"]["bytes"] < data["footprint"]["torch"]["bytes"]
    with pytest.raises(Exception, match="already exists"):
        api.bench(trio[:1], BenchOptions(runtimes=("torch",), **QUICK), report_dir=str(tmp_path / "report"))


@pytest.mark.serial
def test_machine_peak_and_footprint_are_measured_not_assumed():
    peak = cpu_peak()
    assert peak["fp32_lanes"] in (4, 8, 16) and "lanes" in peak["assumption"]
    numpy_only = install_footprint(("numpy",))
    assert numpy_only["bytes"] > 1_000_000 and numpy_only["distributions"] == ["numpy"]
    assert install_footprint(("no-such-package",))["not_installed"] == ["no-such-package"]


@pytest.mark.slow
@pytest.mark.serial
def test_cli_bench_json_and_report_errors(trio, tmp_path):
    from tests.conftest import assert_clean_error, run_cli

    proc = run_cli("bench", trio[1], "--runtime", "onnxruntime", "--iterations", "5", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["cases"][0]["row"] == "onnxruntime"
    assert data["cases"][0]["delegated"]["text"] == "CPU EP: all nodes"
    (tmp_path / "bench.json").write_text(proc.stdout)
    proc = run_cli("report", str(tmp_path / "bench.json"), "-o", str(tmp_path / "r"))
    assert proc.returncode == 0 and (tmp_path / "r" / "report.html").exists()
    (tmp_path / "bad.json").write_text("{}")
    assert_clean_error(run_cli("report", str(tmp_path / "bad.json")), 2, "not the expected deploykit result")
    assert_clean_error(run_cli("bench", trio[1], "--threads", "0"), 2, "--threads takes positive integers")
    assert_clean_error(run_cli("bench", trio[1], "--profile", "phone"), 2, "unknown --profile")


@pytest.mark.slow
def test_batch_sizes_need_a_dynamic_batch(samples_dir, tmp_path):
    fixed = api.export(str(samples_dir / "tiny_transformer.pt2"), "onnx", str(tmp_path / "fixed.onnx")).artifact
    dynamic = api.export(str(samples_dir / "tiny_transformer.pt"), "onnx", str(tmp_path / "dyn.onnx"),
                         dynamic_batch=True).artifact
    result = api.bench([fixed, dynamic], BenchOptions(runtimes=("onnxruntime",), batches=(4,), delegation=False,
                                                       **QUICK))
    by_model = {c["model"]: c for c in result["cases"]}
    assert "fixed batch of 1" in by_model[fixed]["error"]
    assert by_model[dynamic]["input_shapes"]["ids"] == [4, 32]
    assert by_model[dynamic]["throughput_per_s"] > 0


@pytest.mark.onnxruntime
@pytest.mark.serial
def test_a_case_reports_its_own_peak_memory_not_its_parents(tmp_path):
    """Was: ru_maxrss survives exec on Linux, so a bench started from a 600 MB Python (torch loaded) reported
    600 MB for every ONNX Runtime case. The child's VmHWM is its own."""
    from tests.hostile import builders

    ballast = bytearray(400 * 2**20)          # the parent holds 400 MiB, touched
    ballast[::4096] = b"\1" * len(ballast[::4096])
    model = builders.tiny_onnx(tmp_path / "m.onnx")
    result = api.bench([str(model)], BenchOptions(runtimes=("onnxruntime",), iterations=3, warmup=0,
                                                  delegation=False))
    assert result["cases"][0]["peak_rss_bytes"] < 300 * 2**20, result["cases"][0]["peak_rss_bytes"]
    del ballast


def test_input_shapes_pin_a_dynamic_dim_of_every_model_in_the_sources_format(tmp_path):
    """`bench m.onnx q.onnx --input x:3x4`: an ONNX model with a dynamic dim (and its quantized copy, same names
    and layout) runs at the user's shape instead of failing on the dynamic dim."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deploykit import api

    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], [weight])
    for name in ("a.onnx", "b.onnx"):
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / name)
    result = api.bench([str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx")],
                       api.BenchOptions(runtimes=("onnxruntime",), warmup=1, iterations=3, delegation=False),
                       load=api.load_options(["x:3x4"]))
    assert [c.get("error") for c in result["cases"]] == [None, None]
    assert [c["input_shapes"] for c in result["cases"]] == [{"x": [3, 4]}] * 2


@pytest.mark.torch
@pytest.mark.slow      # no conversion, but a torch child and a trained sample: ~20 s the quick loop need not pay
@pytest.mark.serial
def test_a_factory_source_is_benchmarked_with_its_weights(samples_dir):
    """`bench pkg.mod:factory --weights w.pt --input ...`: what a matrix cell of a factory model times."""
    from deploykit import api

    result = api.bench(["sample_models.two_layer:two_layer_net"],
                       api.BenchOptions(runtimes=("torch",), warmup=1, iterations=3),
                       load=api.load_options(["x:64x1000"], str(samples_dir / "two_layer_net.weights.pt")))
    [case] = result["cases"]
    assert "error" not in case and case["input_shapes"] == {"x": [64, 1000]} and case["model"].endswith(":two_layer_net")


def _timed(row: str, p50: float, delegated=None, model: str = "m.tflite", threads: int = 1) -> dict:
    case = {"row": row, "model": model, "format": "tflite", "batch": None, "options": {"threads": threads},
            "latency_ms": {"p50": p50}}
    return {**case, **({"delegated": delegated} if delegated else {})}


def test_the_delegated_cell_of_each_row_says_what_ran_where_or_dash():
    """Measured tables give the text; rows without one get "—" and the reason, a failed probe too (no error)."""
    from deploykit.benchmark import delegation

    xnnpack = {"runtime": "litert", "target": "XNNPACK (CPU)", "measured": True, "verdict": "PARTIAL",
               "supported": 164, "total": 222, "unit": "nodes", "partitions": 17, "flop_share": 0.996,
               "share": 164 / 222, "summary": "164/222 nodes · 17 partitions · 99.6% of FLOPs · PARTIAL", "source": "s"}
    gpu = {**xnnpack, "target": "GPU delegate", "measured": False, "verdict": "NO",
           "summary": "150/222 nodes · 9 partitions · NO"}
    cell = delegation.cell("litert", {"tables": [xnnpack, gpu]})
    assert cell["text"] == "XNNPACK 164/222 nodes · 99.6% of FLOPs · 17 partitions"     # never rounded up to 100%
    assert cell["predicted"] == "GPU delegate: NO (150/222 nodes · 9 partitions)"
    et = {"runtime": "executorch", "target": "delegates (XnnpackBackend ×2)", "measured": True, "verdict": "PARTIAL",
          "supported": 2, "total": 5, "unit": "instructions", "partitions": 2, "flop_share": None, "share": 0.4,
          "summary": "", "source": "s"}
    assert delegation.cell("executorch", {"tables": [et], "delegate_backends": ["XnnpackBackend"]})["text"] == \
        "XnnpackBackend 2 calls, 3 portable ops"
    assert delegation.cell("onnxruntime", None)["text"] == "CPU EP: all nodes"      # an .ort file: no probe needed
    failed = delegation.cell("litert", {"error": "ONNX Runtime's checker 9.9 printed output deploykit cannot read"})
    assert failed["text"] == "—" and "cannot read" in failed["why"]
    for row in ("torch", "tensorflow", "coreai", "onnxruntime-web", "litert-js", "litert-arm64"):
        assert delegation.cell(row, {"tables": [xnnpack]})["text"] == "—", row
    assert delegation.text({"row": "litert"}) == "—"        # a bench JSON written before the column existed


def test_a_slow_or_partly_delegated_production_row_is_named_in_the_headline():
    from deploykit.benchmark import delegation
    from deploykit.benchmark.cases import RESEARCH_ROWS
    from deploykit.benchmark.report import headline_text

    partial = {"text": "XNNPACK 164/222 nodes · 99.6% of FLOPs · 17 partitions", "measured": True, "supported": 164,
               "total": 222, "unit": "nodes", "partitions": 17, "flop_share": 0.996, "share": 164 / 222}
    rows = [_timed("torch", 2.0, model="m.pt2"), _timed("litert", 1.0, partial),
            _timed("onnxruntime", 3.0, {"text": "CPU EP: all nodes", "measured": True}, model="m.onnx"),
            _timed("litert", 9.0, partial, threads=2),          # no research row at 2 threads: not compared
            _timed("litert-js", 5.0)]                           # a browser row: the headline's browser column
    found = delegation.findings(rows, RESEARCH_ROWS, ("litert-js",))
    assert found == [
        "litert (m.tflite, 1 thread(s)): 17 XNNPACK partitions, 26% of nodes, <1% of FLOPs on LiteRT's builtin kernels",
        "onnxruntime (m.onnx, 1 thread(s)): 1.50× slower than torch (delegated: CPU EP: all nodes)",
        "litert (m.tflite, 2 thread(s)): 17 XNNPACK partitions, 26% of nodes, <1% of FLOPs on LiteRT's builtin "
        "kernels"]
    text = headline_text({"headline": None, "delegation": {"findings": found[:1]}}, None)
    assert text.endswith(". " + found[0])


def test_the_column_probes_each_artifact_once_with_the_pinned_dims(monkeypatch):
    """Two thread counts and two LiteRT rows of one file: one readiness, not one per row; --input reaches it."""
    from deploykit import readiness as readiness_pkg
    from deploykit.benchmark import delegation
    from deploykit.readiness import Coverage, Readiness

    calls = []

    def fake(path, load):
        calls.append((path, [s.name for s in load.input_specs], load.timeout))
        return Readiness(path=path, format="tflite", tables=(Coverage(
            runtime="litert", target="XNNPACK (CPU)", source="s", verdict="ALL", measured=True, supported=2, total=2,
            partitions=1, flop_share=1.0),))

    monkeypatch.setattr(readiness_pkg, "readiness", fake)
    rows = [_timed(row, 1.0, threads=t) for row in ("litert", "litert_no_xnnpack") for t in (1, 2)]
    rows += [_timed("torch", 2.0, model="m.pt2"), {**_timed("litert", 1.0, model="bad.tflite"), "error": "x"}]
    load = api.load_options(["x:1x4"]).to_dict()
    found = delegation.add_columns(rows, {"m.tflite": load}, 30.0)
    assert calls == [("m.tflite", ["x"], 30.0)] and list(found) == ["m.tflite"]
    assert [r["delegated"]["text"] for r in rows[:5]] == ["XNNPACK 2/2 nodes · 100% of FLOPs · 1 partition"] * 2 + [
        "XNNPACK off: 2 nodes on builtin kernels"] * 2 + ["—"]
    assert "delegated" not in rows[5]
