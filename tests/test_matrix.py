"""`deploykit matrix`, the parts that convert nothing: the spec, cell keys, the store, retry budgets, verdicts,
the report, and whole runs whose cells are refused or fail at load (quick)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from deploykit.matrix import executors as matrix_exec

from deploykit.matrix import keys as matrix_keys
from deploykit.errors import ConversionError, UsageError
from deploykit.matrix.run import record_of, run_matrix, shown, summarize, summary_line
from deploykit.matrix.spec import load_spec
from deploykit.matrix.store import open_store, pack, unpack
from tests.conftest import assert_clean_error, run_cli

pytestmark = pytest.mark.onnxruntime


def _onnx(path: Path, scale: float = 2.0) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 2), scale, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _spec(folder: Path, text: str, name: str = "zoo.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_toml_and_yaml_give_the_same_cells_with_paths_relative_to_the_spec(tmp_path):
    _onnx(tmp_path / "a.onnx")
    (tmp_path / "x.npz").write_bytes(b"")
    toml = _spec(tmp_path, '[matrix]\ntargets = ["onnx", "tflite"]\nprecisions = ["fp32", "dynamic"]\n'
                           '[[models]]\npath = "a.onnx"\ninputs = ["x:1x4"]\ninputs_npz = "x.npz"\n'
                           'expect_fail = ["tflite/*"]\n')
    yaml = _spec(tmp_path, "matrix:\n  targets: [onnx, tflite]\n  precisions: [fp32, dynamic]\nmodels:\n"
                           "  - path: a.onnx\n    inputs: ['x:1x4']\n    inputs_npz: x.npz\n"
                           "    expect_fail: ['tflite/*']\n", "zoo.yaml")
    cells = [[(c.model.name, c.target, c.precision, c.expected_to_fail, c.model.options["inputs_npz"])
              for c in load_spec(str(p)).cells()] for p in (toml, yaml)]
    assert cells[0] == cells[1]
    assert [c[1:4] for c in cells[0]] == [("onnx", "fp32", False), ("onnx", "dynamic", False),
                                          ("tflite", "fp32", True), ("tflite", "dynamic", True)]
    assert cells[0][0][4] == str(tmp_path / "x.npz")


@pytest.mark.parametrize("text, fragment", [
    ('[matrix]\nprecisions = ["fp32"]\n[[models]]\npath = "a.onnx"\n', "targets is missing"),
    ('[matrix]\ntargets = ["tensorrt"]\n[[models]]\npath = "a.onnx"\n', "unknown target 'tensorrt'"),
    ('[matrix]\ntargets = ["onnx"]\nprecisions = ["int4"]\n[[models]]\npath = "a.onnx"\n', "unknown precision 'int4'"),
    ('[matrix]\ntargets = ["onnx"]\ncolour = 1\n[[models]]\npath = "a.onnx"\n', "unknown [matrix] key 'colour'"),
    ('[matrix]\ntargets = ["onnx"]\n', "lists no models"),
    ('[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "missing.onnx"\n', "'missing.onnx' does not exist"),
    ('[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\nfolder = "."\n', "exactly one of path, factory"),
    ('[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\n[[models]]\npath = "a.onnx"\n',
     "two models are named 'a.onnx'"),
    ('[matrix]\ntargets = ["onnx"]\ntimeout = -1\n[[models]]\npath = "a.onnx"\n', "timeout must be between 0.001 and 604,800"),
    ('[matrix]\ntargets = ["onnx"]\nbench = ["torch", "fastest"]\n[[models]]\npath = "a.onnx"\n',
     "unknown runtime 'fastest'"),
    ('[matrix\ntargets = 1', "not valid TOML"),
    ('[matrix]\ntargets = ["onnx"]\ntimeout = inf\n[[models]]\npath = "a.onnx"\n', "timeout must be between"),
    ('[matrix]\ntargets = ["onnx"]\nverify_runtimes = ["edge"]\n[[models]]\npath = "a.onnx"\n', "unknown runtime 'edge'"),
    ('[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\ntrust_pickle = "false"\n', "trust_pickle must be true"),
    ('[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\nio_dtype = "int4"\n', "unknown --io-dtype 'int4'"),
    ('[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\ninputs = ["x:abc"]\n', "models[1]: inputs:"),
    ('[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\ntask = "dance"\n', "unknown --task 'dance'"),
])
def test_a_bad_spec_is_refused_naming_the_key(tmp_path, text, fragment):
    _refused_naming(tmp_path, text, fragment, "zoo.toml")


def _refused_naming(folder: Path, text: str, fragment: str, name: str) -> None:
    _onnx(folder / "a.onnx")
    with pytest.raises(UsageError) as caught:
        load_spec(str(_spec(folder, text, name)))
    assert fragment in caught.value.message


def test_a_folder_is_scanned_by_content_not_by_name(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    _onnx(zoo / "renamed.bin")
    (zoo / "notes.txt").write_text("not a model")
    spec = load_spec(str(_spec(tmp_path, '[matrix]\ntargets = ["tflite"]\n[[models]]\nfolder = "zoo"\nname = "z"\n')))
    assert [m.name for m in spec.models] == ["z/renamed.bin"]
    assert [Path(s["file"]).name for s in spec.skipped] == ["notes.txt"]


def test_the_key_follows_model_bytes_options_and_tool_versions(tmp_path, monkeypatch):
    model = _onnx(tmp_path / "a.onnx")
    spec_path = _spec(tmp_path, '[matrix]\ntargets = ["tflite"]\n[[models]]\npath = "a.onnx"\n')
    spec = load_spec(str(spec_path))
    cell = spec.cells()[0]
    key, versions, unsupported = matrix_keys.plan_cell(cell, spec)
    assert unsupported is None and {"onnx2tf", "onnxruntime", "ai-edge-litert"} <= set(versions)
    assert versions["deploykit"].endswith(matrix_keys.code_digest())
    assert matrix_keys.plan_cell(cell, spec)[0] == key                     # same inputs, same key
    assert matrix_keys.cell_key(cell, spec, {**versions, "onnx2tf": "9.9"}) != key      # a tool upgrade
    other = load_spec(str(_spec(tmp_path, '[matrix]\ntargets = ["tflite"]\nsamples = 7\n[[models]]\npath = "a.onnx"\n')))
    assert matrix_keys.plan_cell(other.cells()[0], other)[0] != key         # an option
    matrix_keys.content_digest.cache_clear()
    _onnx(model, scale=3.0)
    assert matrix_keys.plan_cell(cell, spec)[0] != key                      # the model's bytes
    matrix_keys.content_digest.cache_clear()


def test_a_phase_that_keeps_crashing_is_retried_once_then_recorded(tmp_path, monkeypatch):
    calls = []

    def crashing(target, request, **kwargs):
        calls.append(target)
        raise ConversionError("the matrix cell m crashed with SIGKILL: ", "")

    monkeypatch.setattr(matrix_exec, "run_child", crashing)
    request = {"key": "k1", "label": "m", "store": str(tmp_path), "retries": 1, "timeout": 5, "run": "r1"}
    record = matrix_exec.run_phase("convert", request)
    assert calls == ["deploykit.matrix.cell:convert_job"] * 2
    assert record["status"] == "crashed" and record["attempts"] == 2
    assert "did not finish in 2 attempt(s)" in record["verdict"] and "SIGKILL" in record["verdict"]
    # the budget is shared: a second executor-level try (Ray re-running a dead worker's task) does not run again
    assert matrix_exec.run_phase("convert", request)["status"] == "crashed" and len(calls) == 2


def test_records_statuses_and_the_ci_line(tmp_path):
    _onnx(tmp_path / "a.onnx")
    spec = load_spec(str(_spec(tmp_path, '[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\n'
                                         'expect_fail = ["onnx/fp32"]\n')))
    cell = spec.cells()[0]
    failed = record_of(cell, "k", {"convert": {"status": "failed", "verdict": "parity"}}, {})
    assert failed["status"] == "failed" and shown(cell, failed)["status"] == "xfail"     # stored plain, shown xfail
    passed = record_of(cell, "k", {"convert": {"status": "passed", "artifact": "a"},
                                   "bench": {"status": "crashed", "verdict": "bench did not finish"}}, {})
    assert shown(cell, passed)["status"] == "xfail"            # expected to fail, and its bench crashed
    plain = load_spec(str(_spec(tmp_path, '[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\n', "plain.toml")))
    assert shown(plain.cells()[0], failed)["status"] == "failed"     # expect_fail dropped: the failure shows again
    cells = [{"status": s} for s in ("passed", "passed", "failed", "crashed", "unsupported", "xfail")]
    assert summary_line(summarize(cells)) == "2 passed, 2 failed, 1 unsupported (1 crashed; 1 expected failure(s))"


def test_file_uri_store_round_trips_through_fsspec(tmp_path):
    store = open_store(f"file://{tmp_path}/shared")
    store.save_cell({"key": "abc", "status": "passed"})
    assert store.finished("abc") == {"key": "abc", "status": "passed"}
    assert store.finished("nope") is None
    (tmp_path / "shared" / "cells" / "bad.json").write_text("{half")
    assert store.finished("bad") is None                     # a damaged record is not a finished cell
    (tmp_path / "made").mkdir()
    model = _onnx(tmp_path / "made" / "m.onnx")
    reference = store.put_artifacts(tmp_path / "made", "abc")["m.onnx"]
    assert reference.startswith("file://") and not list((tmp_path / "shared").rglob("*.tmp*"))
    fetched = store.get_tree(reference, tmp_path / "back")
    assert fetched.read_bytes() == model.read_bytes()
    assert store.digest(reference) == hashlib.sha256((tmp_path / "shared/artifacts/abc/m.onnx.tar").read_bytes()).hexdigest()


def test_unpack_keeps_files_inside_the_folder(tmp_path):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        unpack(buffer.getvalue(), tmp_path / "in")
    assert not (tmp_path / "escaped.txt").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("y")
    assert unpack(pack({"d": tmp_path / "d"}), tmp_path / "out") == ["d"]
    assert (tmp_path / "out" / "d" / "f").read_text() == "y"


def test_unsupported_cells_are_recorded_without_running_and_resume(tmp_path):
    _onnx(tmp_path / "a.onnx")
    spec = _spec(tmp_path, '[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\n'
                           '[[models]]\npath = "a.onnx"\nname = "again"\ntargets = ["executorch", "saved_model"]\n'
                           'precisions = ["fp16"]\n')
    first = run_matrix(str(spec), str(tmp_path / "out"))
    statuses = {(c["model"], c["target"]): (c["status"], c["verdict"]) for c in first["cells"]}
    assert statuses[("a.onnx", "onnx")] == ("unsupported", "the model is already onnx")
    assert statuses[("again", "saved_model")][0] == "unsupported"
    assert "--quantize applies to --to onnx, tflite, executorch, coreai or coreml" in statuses[("again", "saved_model")][1]
    assert statuses[("again", "executorch")][0] == "unsupported"
    assert first["passed"] and first["summary_line"] == "0 passed, 0 failed, 3 unsupported"
    page = (tmp_path / "out" / "matrix.html").read_text()
    assert page.count("cells/") >= 3 and "already onnx" in page
    again = run_matrix(str(spec), str(tmp_path / "out"))
    assert again["summary"]["reused"] == 3 and again["summary_line"].endswith("(3 reused from an earlier run)")


def test_cli_a_cell_that_fails_gives_exit_1_the_ci_line_and_json(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07\x12\x04junk" * 10)
    spec = _spec(tmp_path, '[matrix]\ntargets = ["tflite"]\nbench = []\n[[models]]\npath = "broken.onnx"\n')
    proc = run_cli("matrix", str(spec), "-o", str(tmp_path / "out"), "--json", "--workers", "1", timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "matrix: 0 passed, 1 failed, 0 unsupported" in proc.stderr
    assert "[1/1] broken.onnx → tflite fp32: failed" in proc.stderr
    data = json.loads(proc.stdout)
    cell = data["cells"][0]
    assert {k: cell[k] for k in ("model", "target", "precision", "status")} == {
        "model": "broken.onnx", "target": "tflite", "precision": "fp32", "status": "failed"}
    assert cell["exit_code"] == 2 and cell["attempts"] == 1 and cell["verdict"]
    stored = json.loads((tmp_path / "out" / "cells" / f"{cell['key']}.json").read_text())
    assert stored["status"] == "failed" and not (tmp_path / "out" / "running").exists()    # no pid, no counter left


@pytest.mark.parametrize("args, code, fragment", [
    (["--executor", "spark"], 2, "unknown --executor 'spark'"),
    (["--address", "10.0.0.1:6379"], 2, "--address is for --executor ray"),
    (["--workers", "0"], 2, "--workers must be a positive integer"),
    (["--executor", "ray", "--address", "127.0.0.1:1"], 2, "is a folder of this machine"),
    (["--executor", "ray", "--address", "127.0.0.1:1", "-o", "file:///tmp/deploykit-never-written"], 2,
     "nothing answers at the Ray address 127.0.0.1:1"),
])
def test_cli_bad_options_are_one_line(tmp_path, args, code, fragment):
    _onnx(tmp_path / "a.onnx")
    spec = _spec(tmp_path, '[matrix]\ntargets = ["tflite"]\n[[models]]\npath = "a.onnx"\n')
    assert_clean_error(run_cli("matrix", str(spec), "-o", str(tmp_path / "out"), *args), code, fragment)
    assert not (tmp_path / "out").exists() and not Path("/tmp/deploykit-never-written").exists()   # nothing written


def test_cli_refuses_a_folder_of_other_files_and_a_missing_spec(tmp_path):
    _onnx(tmp_path / "a.onnx")
    spec = _spec(tmp_path, '[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\n')
    assert_clean_error(run_cli("matrix", str(spec), "-o", str(tmp_path)), 2, "holds files a matrix did not write")
    assert_clean_error(run_cli("matrix", str(tmp_path / "none.toml")), 2, "no such spec file")


def test_a_factory_model_is_keyed_by_its_module_source_and_weights(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"first")
    spec_path = _spec(tmp_path, '[matrix]\ntargets = ["onnx"]\n[[models]]\nfactory = "sample_models.two_layer:two_layer_net"'
                                '\nweights = "w.pt"\ninputs = ["x:64x1000"]\n')
    spec = load_spec(str(spec_path))
    cell = spec.cells()[0]
    assert cell.model.name == "sample_models.two_layer:two_layer_net" and cell.model.options["weights"] == str(weights)
    key = matrix_keys.plan_cell(cell, spec)[0]
    matrix_keys.content_digest.cache_clear()
    weights.write_bytes(b"second")
    assert matrix_keys.plan_cell(cell, spec)[0] != key
    matrix_keys.content_digest.cache_clear()


def test_the_ray_executor_without_ray_names_the_extra(tmp_path, monkeypatch):
    from deploykit import registry
    from deploykit.errors import MissingDependency

    _onnx(tmp_path / "a.onnx")
    spec = _spec(tmp_path, '[matrix]\ntargets = ["tflite"]\n[[models]]\npath = "a.onnx"\n')
    real = registry.missing_packages
    monkeypatch.setattr(registry, "missing_packages", lambda names: ["ray"] if "ray" in names else real(names))
    with pytest.raises(MissingDependency) as caught:
        run_matrix(str(spec), str(tmp_path / "out"), executor="ray")
    assert "deploykit[ray]" in caught.value.remedy and not (tmp_path / "out").exists()


def test_the_local_executor_never_imports_ray(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    _onnx(tmp_path / "a.onnx")
    spec = _spec(tmp_path, '[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\n')
    code = (f"import sys\nfrom deploykit.matrix.run import run_matrix\nrun_matrix({str(spec)!r}, {str(tmp_path / 'o')!r})\n"
            "print('ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_the_same_model_under_two_names_runs_once_and_shows_twice(tmp_path):
    _onnx(tmp_path / "a.onnx")
    spec = _spec(tmp_path, '[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\n'
                           '[[models]]\npath = "a.onnx"\nname = "alias"\n')
    seen = []
    result = run_matrix(str(spec), str(tmp_path / "out"), progress=lambda record, done, total: seen.append((done, total)))
    assert [c["model"] for c in result["cells"]] == ["a.onnx", "alias"]
    assert result["cells"][0]["key"] == result["cells"][1]["key"] and seen == [(1, 1)]


def test_a_cell_is_timed_only_when_a_bench_row_runs_one_of_its_formats(tmp_path):
    model = _onnx(tmp_path / "a.onnx")
    job = {"request": {"source": str(model), "target": "tflite", "settings": {"bench": ["torch"]}}}
    assert not matrix_exec.wants_bench(job, {"status": "passed", "artifact": "a.tflite"})
    job["request"]["settings"]["bench"] = ["torch", "litert"]
    assert matrix_exec.wants_bench(job, {"status": "passed", "artifact": "a.tflite"})
    assert not matrix_exec.wants_bench(job, {"status": "failed"})


def test_a_linked_model_is_shipped_as_its_bytes(tmp_path):
    model = _onnx(tmp_path / "real.onnx")
    (tmp_path / "link.onnx").symlink_to(model)
    names = unpack(pack({"link.onnx": tmp_path / "link.onnx"}), tmp_path / "landed")
    landed = tmp_path / "landed" / names[0]
    assert not landed.is_symlink() and landed.read_bytes() == model.read_bytes()


def test_a_cell_shows_its_artifacts_delegation_beside_latency_and_an_older_record_a_dash():
    from deploykit.matrix.report import cell_page, grid_page
    from deploykit.matrix.run import metrics

    delegated = {"text": "XNNPACK 2/2 nodes · 100% of FLOPs · 1 partition", "measured": True,
                 "predicted": "GPU delegate: YES (2/2 nodes · 1 partition)",
                 "predicted_all": [{"target": "GPU delegate", "verdict": "YES", "summary": "", "source": "s"}]}
    cases = [{"row": "torch", "model": "m.pt2", "latency_ms": {"p50": 4.0}, "delegated": {"text": "—"}},
             {"row": "litert", "model": "a.tflite", "latency_ms": {"p50": 1.0, "p90": 1.5}, "delegated": delegated}]
    found = metrics({"artifact": "a.tflite", "bench": {"cases": cases}})
    assert found["delegated"] == delegated["text"] and found["predicted"] == ["GPU delegate: YES"]
    new = {"key": "k1", "model": "m", "target": "tflite", "precision": "fp32", "status": "passed", "metrics": found,
           "bench": {"cases": cases}}
    old = {**new, "key": "k2", "precision": "dynamic", "metrics": {"artifact_p50_ms": 2.0, "artifact_row": "litert"},
           "bench": {"cases": [{k: v for k, v in c.items() if k != "delegated"} for c in cases]}}
    grid = grid_page({"name": "z", "cells": [new, old], "summary_line": "", "seconds": 0, "spec": "s"})
    assert "1 ms (litert)<br>delegated: XNNPACK 2/2 nodes · 100% of FLOPs · 1 partition" in grid
    assert "predicted: GPU delegate: YES" in grid and "2 ms (litert)<br>delegated: —" in grid
    assert "<td>XNNPACK 2/2 nodes · 100% of FLOPs · 1 partition</td>" in cell_page(new)
    assert "<td>1.0</td><td>1.5</td><td>—</td><td>—</td>" in cell_page(old)
