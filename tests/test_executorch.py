"""ExecuTorch: `.pte` detection, the torch → ExecuTorch edge (XNNPACK, portable fallback named), quantization,
the runner in the child harness, the bench row, and the private lean import path guarded against a move.
Tests that export are `slow` (20-60 s each: exir's import and lowering) and `executorch`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from deploykit import api, registry

from deploykit.exporting import routing
from deploykit.errors import UsageError
from deploykit.formats import Format, detect
from tests.conftest import assert_clean_error, run_cli

PTE_HEAD = b"<\x00\x00\x00ET12eh00 \x00\x00\x00"   # what exir writes: root offset, identifier, extended header


def exporting(test):
    """A test that runs exir (seconds to minutes): `slow`, `executorch`, `torch`."""
    for mark in (pytest.mark.slow, pytest.mark.executorch, pytest.mark.torch):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def pte(exported):
    """The seed's two-layer net (TorchScript) exported once to .pte for this module's runner tests: once per run,
    shared by both workers (it was once per worker, the second time inside the `serial` CLI test, ~10 s alone)."""
    result = exported("two_layer_net.pt", "executorch")
    assert result.passed, result.parity
    return result


def test_pte_is_detected_by_content_not_name(tmp_path):
    (tmp_path / "model.bin").write_bytes(PTE_HEAD + bytes(64))
    assert detect(tmp_path / "model.bin") == Format.EXECUTORCH
    (tmp_path / "fake.pte").write_bytes(b"not a program at all")
    with pytest.raises(Exception, match="unknown model format"):
        detect(tmp_path / "fake.pte")


def test_executorch_is_a_target_with_quantized_routes_from_torch_only():
    assert registry.target_format("executorch") == Format.EXECUTORCH
    for src in (Format.TORCHSCRIPT, Format.EXPORTED_PROGRAM, Format.STATE_DICT):
        routes = routing.select_routes(src, Format.EXECUTORCH, None)
        assert [e.name for e in routes[0]] == ["torch_to_executorch"]
    assert [e.name for e in routing.select_routes(Format.EXPORTED_PROGRAM, Format.EXECUTORCH, None, "int8")[0]] == \
        ["torch_to_executorch"]          # int8 keeps float inputs and outputs: no --io-dtype needed
    assert routing.quantize_modes(Format.EXECUTORCH) == ("dynamic", "int8")
    with pytest.raises(UsageError, match="fp16 is not available for --to executorch") as info:
        routing.select_routes(Format.EXPORTED_PROGRAM, Format.EXECUTORCH, None, "fp16")
    assert "dynamic or int8" in info.value.remedy
    with pytest.raises(UsageError, match="no conversion from onnx to executorch"):
        routing.select_routes(Format.ONNX, Format.EXECUTORCH, None)


def test_bench_plans_an_executorch_row_and_states_the_binding_cost(tmp_path):
    from deploykit.benchmark.cases import BenchOptions, _bindings_notes, plan

    (tmp_path / "m.pte").write_bytes(PTE_HEAD + bytes(64))
    cases, skipped = plan([str(tmp_path / "m.pte")], BenchOptions())
    rows = [c["row"] for c in cases] + [s["runtime"] for s in skipped]
    assert rows == ["executorch"]
    notes = _bindings_notes([{"row": "executorch", "bindings_import_s": 2.5},
                             {"row": "executorch", "bindings_import_s": 3.25}, {"row": "litert"}])
    assert len(notes) == 1 and "executorch up to 3.2 s" in notes[0] and "C++ runtime" in notes[0]
    assert _bindings_notes([{"row": "litert"}]) == []


@pytest.mark.executorch
def test_the_private_lean_import_path_still_exists():
    """The runner imports ExecuTorch's C++ extension directly (2.6 s instead of 10 s through exir). When a new
    ExecuTorch moves it, this fails loudly — the runner would silently fall back to the slow public path."""
    from runtimes import executorch

    module, seconds, path = executorch.bindings()
    assert path == "lean", f"{executorch.LEAN_MODULE} moved: update runtimes/executorch.py"
    for name in ("_load_program", "_unsafe_reset_threadpool", "_get_operator_names", "Verification"):
        assert hasattr(module, name), f"ExecuTorch's extension lost {name}: update runtimes/executorch.py"
    assert seconds > 0


@pytest.mark.executorch
def test_a_corrupt_program_is_one_line_with_exit_2(tmp_path):
    (tmp_path / "cut.pte").write_bytes(PTE_HEAD + bytes(40))
    assert_clean_error(run_cli("inspect", str(tmp_path / "cut.pte")), 2, "ExecuTorch cannot load the program")


def test_export_help_names_the_executorch_target():
    proc = run_cli("export", "--help")
    assert proc.returncode == 0 and "executorch" in proc.stdout


@exporting
@pytest.mark.parametrize("source", ["two_layer_custom_relu.pt2", "mobilenet_v2.pt2", "tiny_transformer.pt2"])
def test_samples_export_to_pte_and_pass_fp32_parity(samples_dir, tmp_path, source):
    result = api.export(str(samples_dir / source), "executorch", str(tmp_path / "m.pte"))
    assert result.passed and result.parity.tolerance.preset == "fp32", result.parity
    placement = result.opened.details["delegation"]
    assert placement["delegate_calls"].get("XnnpackBackend", 0) >= 1
    notes = [n for hop in result.route for n in hop["notes"]]
    assert any(n.startswith("XNNPACK took ") for n in notes), notes
    if source == "tiny_transformer.pt2":      # XNNPACK 1.5 has no layer norm or embedding: named, with counts
        assert "aten::native_layer_norm.out" in placement["portable_ops"]
        assert any("native_layer_norm" in w and "no support" in w for w in result.warnings), result.warnings
    else:
        assert placement["portable_ops"] == {}, placement       # fully delegated
        assert any("fully delegated" in n for n in notes)
    assert [t.name for t in result.opened.spec.inputs] == \
        [t["name"] for t in json.loads(Path(result.manifest).read_text())["signature"]["inputs"]]


@exporting
def test_torchscript_source_runs_in_the_child_runner_with_threads(pte):
    from deploykit.artifact import Artifact
    from deploykit.harness import Timing
    from deploykit.runner import RunnerOptions

    artifact = Artifact.open(pte.artifact)
    assert artifact.format == Format.EXECUTORCH and artifact.spec.inputs[0].name == "x"     # named from its manifest
    feeds = {"x": np.random.default_rng(0).standard_normal((64, 1000), dtype=np.float32)}
    result = artifact.run([feeds], RunnerOptions(threads=1), timing=Timing(2, 5))
    assert result.runtime == "executorch" and result.outputs[0]["output"].shape == (64, 10)
    assert "XnnpackBackend: 1 call" in result.providers[0] and result.latency_ms["p50"] > 0


@exporting
@pytest.mark.serial
def test_verify_and_bench_cli_on_a_pte(pte, samples_dir, tmp_path):
    proc = run_cli("verify", str(samples_dir / "two_layer_net.pt"), pte.artifact, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    comparison = json.loads(proc.stdout)["comparisons"][0]
    assert comparison["passed"] and any("ran on executorch" in n for n in comparison["notes"])
    proc = run_cli("bench", pte.artifact, "--iterations", "5", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    (case,) = data["cases"]
    assert case["row"] == "executorch" and case["bindings_import_s"] > 0 and case["peak_rss_bytes"] > 0
    assert case["cold_start_s"] > case["bindings_import_s"] - 0.5
    assert any("Python binding" in note for note in data["notes"])
    proc = run_cli("inspect", pte.artifact, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ops"] == {"XnnpackBackend": 1}


@exporting
def test_flatbuffer_reading_matches_executorchs_own_deserializer(pte):
    """The runner reads delegation with `flatbuffers` (exir's deserializer costs 10 s to import); the schema slots
    it uses must agree with exir's reading of the same file."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    from runtimes.executorch import delegation

    parsed = deserialize_pte_binary(Path(pte.artifact).read_bytes())
    plan = getattr(parsed, "program", parsed).execution_plan[0]
    kinds = [type(i.instr_args).__name__ for i in plan.chains[0].instructions]
    ours = delegation(pte.artifact)
    assert ours["delegate_calls"] == {d.id: kinds.count("DelegateCall") for d in plan.delegates}
    assert sum(ours["portable_ops"].values()) == kinds.count("KernelCall")


@exporting
def test_trained_mobilenet_int8_keeps_its_answers_on_held_out_images(samples_dir, tmp_path):
    folder = samples_dir / "shapes"
    result = api.export(str(samples_dir / "mobilenet_v2.pt2"), "executorch", str(tmp_path / "m.int8.pte"),
                        quantize=api.QuantizeOptions(mode="int8", calibration=str(folder), samples=32))
    assert result.passed, result.parity.summary()
    assert json.loads(Path(result.manifest).read_text())["calibration"]["held_out"] == 100
    assert "compared on 64 held-out calibration sample(s)" in result.parity.notes
    output = result.parity.outputs[0]
    assert output.top1_agreement >= 0.9 and output.cosine >= 0.98, output
    assert Path(result.artifact).stat().st_size < 0.4 * Path(samples_dir / "mobilenet_v2.weights.pt").stat().st_size


PORTABLE_FACTORY = '''
import torch

class CumsumHead(torch.nn.Module):
    """A linear layer XNNPACK takes, then a cumsum it has no support for (left to a portable kernel)."""
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 8)
    def forward(self, x):
        return torch.cumsum(self.linear(x), dim=1)

class SortHead(CumsumHead):
    """sort: outside XNNPACK, and without a kernel in ExecuTorch's prebuilt portable library."""
    def forward(self, x):
        return torch.sort(self.linear(x), dim=1)[0]

def cumsum_head():
    torch.manual_seed(0)
    return CumsumHead().eval()

def sort_head():
    torch.manual_seed(0)
    return SortHead().eval()
'''


@exporting
def test_an_op_xnnpack_cannot_take_falls_back_and_is_named(tmp_path, monkeypatch):
    (tmp_path / "portable_models.py").write_text(PORTABLE_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))     # this process, and the converter and runner children:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    load = api.load_options(["x:4x16:float32"])
    result = api.export("portable_models:cumsum_head", "executorch", str(tmp_path / "c.pte"), load=load)
    assert result.passed, result.parity
    assert result.opened.details["delegation"]["portable_ops"] == {"aten::cumsum.out": 1}
    (warning,) = [w for w in result.warnings if "portable kernels" in w]
    assert "aten.cumsum.default: XNNPACK has no support for this op" in warning
    with pytest.raises(Exception, match=r"no kernel for aten::sort\.values"):
        api.export("portable_models:sort_head", "executorch", str(tmp_path / "s.pte"), load=load)
    assert not (tmp_path / "s.pte").exists()


@exporting
def test_dynamic_quantization_and_cli_errors(samples_dir, tmp_path):
    result = api.export(str(samples_dir / "two_layer_net.pt2"), "executorch", str(tmp_path / "d.pte"),
                        quantize=api.QuantizeOptions(mode="dynamic"))
    assert result.passed, result.parity
    assert any("XNNPACKQuantizer" in n for hop in result.route for n in hop["notes"])
    proc = run_cli("export", str(samples_dir / "two_layer_net.pt2"), "--to", "executorch", "--quantize", "fp16",
                   "-o", str(tmp_path / "f.pte"))
    assert_clean_error(proc, 2, "--quantize fp16 is not available for --to executorch")
    proc = run_cli("export", str(samples_dir / "two_layer_net.pt2"), "--to", "executorch", "--dynamic-batch",
                   "-o", str(tmp_path / "b.pte"))
    assert proc.returncode != 0 and "fixed batch" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b.pte").exists()
