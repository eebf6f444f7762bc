"""Every hop of a route ends in a typed outcome, shown in the route table and kept in the manifest."""
import numpy as np
import pytest

from deploykit import parity

from deploykit.exporting import routing
from deploykit.conversion import ExportOptions
from deploykit.errors import Outcome, ParityError
from deploykit.formats import Format
from deploykit.model import LoadedModel
from deploykit.registry import ConverterEdge
from deploykit.spec import ModelSpec, TensorSpec

SOURCE = LoadedModel("source.pt2", Format.EXPORTED_PROGRAM,
                     ModelSpec((TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 2)),)))


class FakeChecker:
    """Stands in for the export's checker: a canned verdict, or a runtime failure."""

    def __init__(self, verdict):
        self.verdict = verdict

    def check(self, candidate, samples, batch=None, layout=None, tolerance=None, feeds=None, locate=False):
        if isinstance(self.verdict, Exception):
            raise self.verdict
        values = np.array([[0.5, -1.5]], np.float32)
        reference = [{"y": values}]
        got = [{"y": values * (1.0 if self.verdict else -1.0)}]
        return parity.compare(reference, got, parity.PRESETS["fp32"])


def _run(tmp_path, target: str, verdict=True) -> routing.RouteRun:
    edge = ConverterEdge("fake_edge", frozenset({Format.EXPORTED_PROGRAM}), Format.ONNX, f"tests.fake_edges:{target}",
                         ())
    return routing.run_route([edge], SOURCE, tmp_path / "m.onnx", ExportOptions(), FakeChecker(verdict))


@pytest.mark.parametrize("target, verdict, outcome", [
    ("raises", True, Outcome.CONVERT_FAILED),
    ("missing", True, Outcome.MISSING_DEPENDENCY),
    ("writes_garbage", True, Outcome.ARTIFACT_LOAD_FAILED),
    ("writes_ok", ParityError("running m.onnx crashed with SIGSEGV", "x"), Outcome.ARTIFACT_RUN_FAILED),
    ("writes_ok", False, Outcome.MISMATCH),
    ("writes_ok", True, Outcome.OK),
])
def test_each_failure_has_its_outcome_in_the_route_table(tmp_path, target, verdict, outcome):
    run = _run(tmp_path, target, verdict)
    table = run.to_dict()
    assert (run.outcome, table["outcome"]) == (outcome, outcome.value)
    assert table["passed"] is (outcome == Outcome.OK)
    assert table["hops"][-1]["outcome"] == outcome.value
    if outcome == Outcome.OK:
        assert table["hops"][0]["artifact_sha256"] == run.artifact.sha256 and len(run.artifact.sha256) == 64
    else:
        assert table["error"] and table["hops"][-1]["artifact_sha256"] is None


def test_a_failed_route_names_its_outcome_in_the_verdict(tmp_path):
    from deploykit.errors import ConversionError

    runs = [_run(tmp_path, "writes_garbage"), _run(tmp_path, "raises")]
    with pytest.raises(ConversionError, match="every route failed"):
        routing.choose(runs, route_all=False)
    assert [r.to_dict()["outcome"] for r in runs] == ["ARTIFACT_LOAD_FAILED", "CONVERT_FAILED"]


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 2), 2.0, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def fake_route_export(tmp_path, monkeypatch):
    """api.export over one fake edge that copies the ONNX source: the whole pipeline, no converter run."""
    from deploykit import api

    edge = ConverterEdge("fake_copy", frozenset({Format.ONNX}), Format.ONNX, "tests.fake_edges:copies", ())
    monkeypatch.setattr(routing, "select_routes", lambda *args, **kwargs: [[edge]])
    source = _tiny_onnx(tmp_path / "tiny.onnx")
    run = lambda **options: api.export(str(source), "onnx", str(tmp_path / "out" / "tiny.onnx"), **options)  # noqa: E731
    run.source = str(source)
    return run


@pytest.mark.onnxruntime
def test_an_export_reads_its_source_format_once(fake_route_export, monkeypatch):
    import sys

    from deploykit import formats

    detected = []
    original = formats.detect

    def counting(path):
        detected.append(str(path))
        return original(path)

    for module in [m for name, m in sys.modules.items() if name.startswith("deploykit") and m is not None]:
        if getattr(module, "detect", None) is original:
            monkeypatch.setattr(module, "detect", counting)
    result = fake_route_export()
    assert result.passed
    assert detected.count(fake_route_export.source) == 1, detected


@pytest.mark.onnxruntime
def test_the_export_result_holds_objects_and_its_dict_is_the_manifests(fake_route_export):
    import json
    import pickle

    from deploykit.parity import ParityReport

    result = fake_route_export()
    assert isinstance(result.parity, ParityReport) and isinstance(result.chosen, routing.RouteRun)
    assert result.runs == [result.chosen] and result.unverified is False
    data = json.loads(json.dumps(result.to_dict(), default=str))
    manifest = json.loads(open(result.manifest).read())
    assert data["route"] == manifest["route"] and data["routes"] == manifest["routes"]
    assert data["parity"] == manifest["parity"] and data["parity"]["passed"] is True
    again = pickle.loads(pickle.dumps(result))       # the test suite keeps results between workers
    assert again.to_dict() == result.to_dict()


# --- Where a framework source is deserialized: never in the CLI process (issue 26) ------------------------------
_WATCHED = ("torch", "tensorflow", "keras", "litert_torch", "tf2onnx")
_REPORT_IMPORTS = ("import sys\nfrom deploykit.cli.commands import main\ntry:\n    main(sys.argv[1:])\n"
                   "except SystemExit as exc:\n    print('EXIT', exc.code)\n"
                   f"print('IMPORTED', sorted(m for m in {_WATCHED!r} if m in sys.modules))\n")


def _cli_imports(*args: str, cwd) -> tuple:
    """(exit code, the heavy frameworks the CLI process itself imported) for one command."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-P", "-c", _REPORT_IMPORTS, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = done.stdout.splitlines()
    code = next(line.split()[1] for line in lines if line.startswith("EXIT "))
    return int(code), next(line for line in lines if line.startswith("IMPORTED ")), done.stderr


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
def test_a_pytorch_source_is_never_deserialized_in_the_cli_process(samples_dir, tmp_path):
    """inspect, export (torch.onnx needs the live module) and verify of a .pt2 and a TorchScript file: torch is
    imported only in children, so a file that crashes torch's loader cannot end the CLI."""
    pt2, script = samples_dir / "two_layer_net.pt2", samples_dir / "two_layer_net.pt"
    for args in (["inspect", str(pt2)], ["export", str(pt2), "--to", "onnx", "-o", "a.onnx"],
                 ["export", str(script), "--to", "onnx", "-o", "b.onnx"], ["verify", str(pt2), "a.onnx"]):
        code, imported, stderr = _cli_imports(*args, cwd=tmp_path)
        assert (code, imported) == (0, "IMPORTED []"), (args, stderr[-2000:])


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.litert
def test_a_keras_source_is_never_deserialized_in_the_cli_process(keras_samples_dir, tmp_path):
    source = keras_samples_dir / "keras_two_layer_net.keras"
    for args in (["inspect", str(source)], ["export", str(source), "--to", "tflite", "-o", "k.tflite"]):
        code, imported, stderr = _cli_imports(*args, cwd=tmp_path)
        assert (code, imported) == (0, "IMPORTED []"), (args, stderr[-2000:])
