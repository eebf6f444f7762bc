"""Apple Core ML packages (.mlpackage, mlprogram via coremltools): the static checks Linux allows, and the rule for an
artifact no runtime here can run — without --keep-unverified nothing is written (exit 4), with it the package is
kept marked unverified (exit 6) and nothing claims PASS; verify says why it cannot run (exit 3); inspect shows the
signature and the op histogram; an op coremltools cannot convert is named (exit 4).
Tests that export are `slow` (~10-15 s each: torch + coremltools in a child) and `coreml` + `torch`."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit import parity, registry
from deploykit.conversion import ExportOptions, acceptable
from deploykit.errors import ConversionError, UsageError
from deploykit.exporting import routing
from deploykit.formats import Format
from tests.conftest import _locked, _shared_root, assert_clean_error, run_cli

NO_RUNTIME = "no Core ML runtime on Linux (coremltools predicts on macOS only)"
linux_only = pytest.mark.skipif(platform.system() != "Linux", reason="the unverifiable path is Linux's")


def exporting(test):
    """A test that runs coremltools' converter: `slow`, `coreml`, `torch`."""
    for mark in (pytest.mark.slow, pytest.mark.coreml, pytest.mark.torch):
        test = mark(test)
    return test


@pytest.mark.coreml
@pytest.mark.torch
def test_coreml_is_a_target_from_torch_sources_with_fp16_only():
    assert registry.target_format("coreml") == Format.COREML
    for src in (Format.TORCHSCRIPT, Format.EXPORTED_PROGRAM, Format.PYTHON_FACTORY):
        assert [e.name for e in routing.select_routes(src, Format.COREML, None)[0]] == ["torch_to_coreml"]
    assert routing.quantize_modes(Format.COREML) == ("fp16",)
    with pytest.raises(UsageError, match="int8 is not available for --to coreml"):
        routing.select_routes(Format.EXPORTED_PROGRAM, Format.COREML, None, "int8")


def test_core_ml_runs_on_macos_only(monkeypatch):
    from runtimes import coreml

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert coreml.unavailable_reason() == NO_RUNTIME
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert coreml.unavailable_reason() == ""


def test_an_unverifiable_report_never_passes_and_stands_only_with_the_flag():
    report = parity.unverifiable("m.pt2 (exported_program)", "m.mlpackage (coreml)", ["logits", "boxes"],
                                 NO_RUNTIME, parity.tolerance_for("fp32"))
    assert not report.passed and report.unverifiable and report.uninformative_only and report.samples == 0
    assert report.summary().startswith("UNVERIFIED: m.mlpackage (coreml) was not run: " + NO_RUNTIME)
    data = report.to_dict()
    assert data["passed"] is False and data["unverifiable"] is True and "PASS" not in json.dumps(data)
    assert not acceptable(report, ExportOptions()) and acceptable(report, ExportOptions(keep_unverified=True))

    class Hop:
        parity, artifact, tool, attempts, notes, kept_float, static_checks = report, None, "t", [], [], [], {"a": 1}

    kept = routing.RouteRun([registry.EDGES[0]], hops=[Hop()], keep_unverified=True)
    assert kept.passed and kept.unverified          # the route stands (kept) ...
    row = kept.to_dict()
    assert row["passed"] is False and row["unverified"] is True      # ... but no table says it passed
    assert kept.recorded_hops()[0]["static_checks"] == {"a": 1}
    assert not routing.RouteRun([registry.EDGES[0]], hops=[Hop()]).passed      # without the flag it fails
    # A failed output beside an unverifiable one is a failure, whatever the flag.
    report.outputs[1] = parity.OutputResult("boxes", "boxes", status="fail", reason="differs")
    assert not report.uninformative_only and report.summary().startswith("FAIL")


def _description(inputs, outputs, **details) -> dict:
    tensor = lambda name, shape, dtype="float32": {"name": name, "shape": shape, "dtype": dtype}  # noqa: E731
    return {"spec": {"inputs": [tensor(*t) for t in inputs], "outputs": [tensor(*t) for t in outputs]},
            "details": {"model_type": "mlProgram", "spec_version": 8, "opset": "CoreML7",
                        "deployment_target": ["iOS17", "macOS14"], "ops": {"const": 2, "linear": 1},
                        "compute_types": {"float32": 1}, "const_types": {"float32": 2}, "casts": 0,
                        "compute_precision": "float32", "coremltools_version": "9.0", **details}}


def test_static_checks_compare_the_package_with_the_source():
    from converters.torch_to_coreml import static_checks, static_notes

    source = {"inputs": [{"name": "input.1", "shape": [None, 8], "dtype": "float32"},
                         {"name": "ids", "shape": [1, 4], "dtype": "int64"}],
              "outputs": [{"name": "out", "shape": [2, 3], "dtype": "float32"}]}
    good = _description([("input_1", [None, 8]), ("ids", [1, 4], "int32")], [("out", [2, 3])])
    checks = static_checks(source, good, fp16=False)
    assert checks["spec_version"] == 8 and checks["op_count"] == 3
    assert [(t["name"], t["package_name"], t["dtype"]) for t in checks["inputs"]] == \
        [("input.1", "input_1", "float32"), ("ids", "ids", "int32")]    # sanitised name, Core ML's int32 for int64
    notes = static_notes(checks)
    assert "opset CoreML7" in notes[0] and "package name 'input_1'" in notes[1] and "no int64" in notes[1]
    assert "3 ops (const ×2, linear ×1)" in notes[2]
    bad = [(_description([("input_1", [None, 8]), ("ids", [1, 4], "int32")], [("out", [2, 4])]),
            r"output 'out' has shape \[2, 4\] in the package, \[2, 3\] in the source"),
           (_description([("x", [None, 8]), ("ids", [1, 4], "int32")], [("out", [2, 3])]),
            "input 'input.1' is named 'x' in the package"),
           (_description([("input_1", [None, 8]), ("ids", [1, 4], "float16")], [("out", [2, 3])]),
            "input 'ids' is float16 in the package, int64 in the source"),
           (_description([("input_1", [None, 8])], [("out", [2, 3])]), "the source has 2 inputs"),
           (_description([("input_1", [None, 8]), ("ids", [1, 4], "int32")], [("out", [2, 3])], spec_version=9,
                         deployment_target=["iOS18"]), "spec version 9 is not iOS17's"),
           (_description([("input_1", [None, 8]), ("ids", [1, 4], "int32")], [("out", [2, 3])],
                         model_type="neuralNetwork"), "not an mlprogram")]
    for description, message in bad:
        with pytest.raises(ConversionError, match=message):
            static_checks(source, description, fp16=False)
    with pytest.raises(ConversionError, match="--quantize fp16: no op of the package computes in float16"):
        static_checks(source, good, fp16=True)
    halves = _description([("input_1", [None, 8]), ("ids", [1, 4], "int32")], [("out", [2, 3])],
                          compute_types={"float16": 5})
    assert static_checks(source, halves, fp16=True)["compute_types"] == {"float16": 5}
    with pytest.raises(ConversionError, match="5 op\\(s\\) of the package compute in float16, though float32"):
        static_checks(source, halves, fp16=False)


def test_coremltools_failures_name_the_op():
    from converters.torch_to_coreml import _conversion_error

    logged = _conversion_error(ValueError("node fft_rfft (fft_rfft) got 1 input(s), expected [4]"),
                               ("fft_rfft", "fft_rfft"))
    assert "coremltools fails on the op 'fft_rfft' (ValueError: node fft_rfft" in logged.message
    read = _conversion_error(NotImplementedError("Unsupported fx node cummax, kind cummax"), None)
    assert "the op 'cummax'" in read.message and "--to coreai" in read.remedy
    other = _conversion_error(RuntimeError("something\nelse"), None)
    assert other.message == "coremltools could not convert the model: RuntimeError: something else"


@pytest.mark.coreml
def test_a_damaged_package_is_one_line_exit_2(tmp_path):
    package = tmp_path / "broken.mlpackage"
    (package / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (package / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0", "itemInfoEntries": {}}')
    assert_clean_error(run_cli("inspect", str(package)), 2,
                       "its Manifest.json is not one coremltools writes (no 'rootModelIdentifier')")
    (package / "Manifest.json").write_text(json.dumps({
        "fileFormatVersion": "1.0.0", "rootModelIdentifier": "m",
        "itemInfoEntries": {"m": {"path": "com.apple.CoreML/model.mlmodel", "name": "model.mlmodel"}}}))
    (package / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\xff\xff not a spec")
    assert_clean_error(run_cli("inspect", str(package)), 2, "coremltools cannot read the package")


@pytest.fixture(scope="module")
def kept(samples_dir, tmp_path_factory):
    """(exit code, stdout, stderr, package) of the two-layer net exported once to Core ML with --keep-unverified
    through the CLI: made once per run, shared by the xdist workers (kept beside the package, under a file lock)."""
    folder = _shared_root(tmp_path_factory) / "coreml"
    folder.mkdir(exist_ok=True)
    out, stored = folder / "two_layer_net.mlpackage", folder / "two_layer_net.proc.json"
    with _locked(out):
        if not stored.exists():
            proc = run_cli("export", str(samples_dir / "two_layer_net.pt2"), "--to", "coreml", "-o", str(out),
                           "--keep-unverified")
            stored.write_text(json.dumps([proc.returncode, proc.stdout, proc.stderr]))
    return (*json.loads(stored.read_text()), out)


@exporting
@linux_only
def test_without_the_flag_nothing_is_written_exit_4(samples_dir, tmp_path):
    out = tmp_path / "out" / "m.mlpackage"
    proc = run_cli("export", str(samples_dir / "two_layer_net.pt2"), "--to", "coreml", "-o", str(out))
    assert_clean_error(proc, 4, "the Core ML package cannot be verified here: " + NO_RUNTIME,
                       "add --keep-unverified to keep it, marked unverified (exit 6)", "--to coreai")
    assert list(tmp_path.iterdir()) == []          # no package, no manifest, no staging, not even the folder


@exporting
@linux_only
def test_with_the_flag_the_package_is_kept_unverified_exit_6(kept):
    code, stdout, stderr, out = kept
    assert code == 6, stderr[-2000:]
    assert "UNVERIFIED" in stdout and "PASS" not in stdout and "FAIL" not in stdout      # the printed report
    assert "signature matches the source: inputs x [64, 1000] float32" in stdout and "Core ML program: 7 ops" in stdout
    manifest = json.loads(Path(out.parent / (out.name + ".deploykit.json")).read_text())
    assert manifest["verified"] is False and NO_RUNTIME in manifest["unverified_reason"]
    assert manifest["parity"]["passed"] is False and manifest["parity"]["summary"].startswith("UNVERIFIED")
    assert [r["passed"] for r in manifest["routes"]] == [False] and manifest["routes"][0]["unverified"] is True
    assert "PASS" not in json.dumps(manifest)
    checks = manifest["route"][-1]["static_checks"]
    assert (checks["spec_version"], checks["model_type"], checks["opset"]) == (8, "mlProgram", "CoreML7")
    assert "iOS17" in checks["deployment_target"]
    assert [(t["name"], t["shape"], t["dtype"]) for t in checks["inputs"] + checks["outputs"]] == \
        [("x", [64, 1000], "float32"), ("output", [64, 10], "float32")]        # the source's signature
    assert checks["ops"]["linear"] == 2 and checks["compute_precision"] == "float32"
    assert any(n.startswith("static checks (coremltools") for n in manifest["route"][-1]["notes"])
    assert (out / "Manifest.json").is_file()


@exporting
@linux_only
def test_verify_of_a_package_names_the_reason_exit_3(samples_dir, kept):
    proc = run_cli("verify", str(samples_dir / "two_layer_net.pt2"), str(kept[3]))
    assert_clean_error(proc, 3, NO_RUNTIME, "verify on a Mac", "--to coreai")


@exporting
def test_inspect_shows_the_signature_and_the_op_histogram(kept):
    info = json.loads(run_cli("inspect", str(kept[3]), "--json").stdout)
    assert info["format"] == "coreml" and info["ops"] == {"const": 4, "linear": 2, "relu": 1} and info["nodes"] == 7
    assert [t["name"] for t in info["signature"]["inputs"] + info["signature"]["outputs"]] == ["x", "output"]
    assert info["details"]["spec_version"] == 8 and info["details"]["compute_precision"] == "float32"
    printed = run_cli("inspect", str(kept[3])).stdout
    assert "ops: const×4, linear×2, relu×1" in printed and "64x1000" in printed


@exporting
@linux_only
def test_api_fp16_mobilenet_kept_unverified_computes_in_float16(samples_dir, tmp_path):
    from deploykit import api

    result = api.export(str(samples_dir / "mobilenet_v2.pt2"), "coreml", str(tmp_path / "m16.mlpackage"),
                        quantize=api.QuantizeOptions("fp16"), keep_unverified=True)
    assert result.unverified and not result.passed and result.parity.tolerance.preset == "fp16"
    assert result.judged_on is None          # no core judged it, not even x86
    checks = result.route[-1]["static_checks"]
    assert checks["compute_precision"] == "float16" and checks["compute_types"]["float16"] > 50
    assert [t["dtype"] for t in checks["inputs"] + checks["outputs"]] == ["float32", "float32"]   # casts inside
    assert checks["ops"]["conv"] == 52 and checks["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert any("UNVERIFIED" in w for w in result.warnings)
    data = result.to_dict()          # what --json prints
    assert data["unverified"] is True and data["passed"] is False and "PASS" not in json.dumps(data)


@exporting
def test_an_op_coremltools_cannot_convert_is_named_exit_4(tmp_path):
    import torch

    class Cummax(torch.nn.Module):
        def forward(self, x):
            return torch.cummax(x, dim=1)[0]

    torch.export.save(torch.export.export(Cummax(), (torch.rand(2, 8),)), str(tmp_path / "cummax.pt2"))
    proc = run_cli("export", str(tmp_path / "cummax.pt2"), "--to", "coreml", "-o", str(tmp_path / "c.mlpackage"),
                   "--keep-unverified")
    assert_clean_error(proc, 4, "Core ML cannot convert the model: coremltools fails on the op 'cummax'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cummax.pt2"]       # nothing left behind


@pytest.mark.coreml
def test_reading_a_package_imports_no_converter_frontend():
    """runtimes.coreml imports coremltools without TensorFlow and torch (~10 s with TensorFlow here, for nothing a
    package's reading needs) and leaves no blocked entry in sys.modules."""
    script = ("import sys, runtimes.coreml as c; c.coremltools_module(); "
              "print([n for n in c._FRONTENDS if n in sys.modules], 'coremltools' in sys.modules)")
    proc = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.stdout.split() == ["[]", "True"], proc.stderr[-2000:]


BASIC_PITCH = "basic-pitch==0.4.0"      # Spotify's note transcription model, shipped as ONNX, TFLite and Core ML
BASIC_PITCH_DIR = "basic_pitch/saved_models/icassp_2022/nmp"


@pytest.mark.slow           # a field model: fetched from PyPI on first use, three child processes (~4 s)
@pytest.mark.coreml
@pytest.mark.onnxruntime
def test_a_field_core_ml_package_is_checked_statically_against_its_onnx_twin():
    """basic-pitch 0.4.0 ships the same network as nmp.onnx and nmp.mlpackage (coremltools 7.0, spec 6, iOS 15):
    inspect reads the package's facts without running it, its signature is the ONNX file's, and verify says plainly
    that nothing here can run it (exit 3, one line) instead of a verdict."""
    from tests.field import field_file, field_folder

    package = field_folder(BASIC_PITCH, f"{BASIC_PITCH_DIR}.mlpackage")
    onnx_file = field_file(BASIC_PITCH, f"{BASIC_PITCH_DIR}.onnx")
    info = json.loads(run_cli("inspect", str(package), "--json").stdout)
    assert info["format"] == "coreml" and info["details"]["model_type"] == "mlProgram"
    assert info["details"]["spec_version"] == 6 and info["details"]["opset"] == "CoreML5"
    assert "iOS15" in info["details"]["deployment_target"] and info["details"]["coremltools_version"] == "7.0"
    assert info["ops"]["conv"] == 32 and info["nodes"] == sum(info["ops"].values())
    twin = json.loads(run_cli("inspect", str(onnx_file), "--json").stdout)

    def shapes(signature, kind):
        return sorted(tuple(t["shape"][1:]) for t in signature[kind])      # the ONNX file leaves its batch dynamic

    for kind in ("inputs", "outputs"):
        assert shapes(info["signature"], kind) == shapes(twin["signature"], kind)
    assert_clean_error(run_cli("verify", str(onnx_file), str(package)), 3, "no Core ML runtime on Linux")


@exporting
def test_a_manifest_that_points_outside_the_package_is_refused_before_anything_reads_it(kept, tmp_path):
    """coremltools follows Manifest.json's paths: a crafted package made `inspect` read a spec lying elsewhere on the
    machine (exit 0, its ops shown). Now inspect, verify and package refuse it with one line, exit 2."""
    import shutil

    package = tmp_path / "crafted.mlpackage"
    shutil.copytree(kept[3], package)
    outside = tmp_path / "elsewhere" / "secret.mlmodel"
    outside.parent.mkdir()
    shutil.move(str(package / "Data" / "com.apple.CoreML" / "model.mlmodel"), outside)
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    root["path"] = "../../elsewhere/secret.mlmodel"
    (package / "Manifest.json").write_text(json.dumps(manifest))
    for argv in (["inspect", str(package)], ["package", str(package), "-o", str(tmp_path / "b"), "--keep-unverified"]):
        assert_clean_error(run_cli(*argv), 2, "outside the package's Data folder: refused, never read")
    assert not (tmp_path / "b").exists()
    root["path"] = str(outside)                 # an absolute path: the same
    (package / "Manifest.json").write_text(json.dumps(manifest))
    assert_clean_error(run_cli("inspect", str(package)), 2, "outside the package's Data folder")
