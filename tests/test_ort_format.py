"""`export --to ort`: ONNX Runtime Mobile's .ort with its required-operators config, verified by ONNX Runtime;
ORT-format files detected by content, read by ONNX Runtime's own flatbuffer reader, refused in one line when cut;
`package X.ort`: the bundle of an app with a reduced ONNX Runtime, verified and refused when tampered with."""
import json
import shutil
from pathlib import Path

import pytest

from deploykit.formats import ORT_CONFIG_SUFFIX, Format, detect, ort_operators_config
from tests.conftest import assert_clean_error

pytestmark = pytest.mark.onnxruntime


@pytest.fixture(scope="module")
def tiny_ort(tmp_path_factory):
    """A real .ort written by ONNX Runtime itself (no deploykit conversion): y = relu(x @ W + b), x [2, 3]."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("tiny_ort")
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "W")
    bias = numpy_helper.from_array(np.ones(4, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "tiny.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "tiny.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(folder / "tiny.onnx"), options, providers=["CPUExecutionProvider"])
    return folder / "tiny.ort"


def test_detected_by_content_and_inspected(tiny_ort, tmp_path, cli):
    renamed = tmp_path / "model.bin"          # no .ort suffix: the flatbuffer's ORTM identifier says what it is
    shutil.copyfile(tiny_ort, renamed)
    assert detect(tiny_ort) == detect(renamed) == Format.ORT
    proc = cli("inspect", str(renamed), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "ort" and info["parameters"] == 16
    assert [(t["name"], t["shape"], t["dtype"]) for t in info["signature"]["inputs"]] == [("x", [2, 3], "float32")]
    assert [(t["name"], t["shape"]) for t in info["signature"]["outputs"]] == [("y", [2, 4])]
    assert sum(info["ops"].values()) == info["nodes"] >= 1      # ORT may have fused MatMul+Add into a Gemm


def test_cut_or_garbage_ort_is_refused_in_one_line(tiny_ort, tmp_path, cli):
    cut = tmp_path / "cut.ort"
    cut.write_bytes(tiny_ort.read_bytes()[:200])
    assert_clean_error(cli("inspect", str(cut)), 2, "not a whole ORT-format model")
    garbage = tmp_path / "garbage.ort"        # the identifier, then noise: detected as ORT, refused by the reader
    garbage.write_bytes(b"\x14\x00\x00\x00ORTM" + bytes(range(256)) * 4)
    assert_clean_error(cli("inspect", str(garbage)), 2, "not a whole ORT-format model")
    noise = tmp_path / "noise.ort"            # the suffix alone proves nothing
    noise.write_bytes(b"\x01\x02\x03\x04 plain noise, no model")
    assert_clean_error(cli("inspect", str(noise)), 2, "unknown model format")


def test_ort_flags_are_checked(cli, tmp_path):
    assert_clean_error(cli("export", "m.onnx", "--to", "onnx", "--ort-style", "runtime"), 2,
                       "--ort-style is only for --to ort")
    assert_clean_error(cli("export", "m.onnx", "--to", "tflite", "--ort-platform", "arm"), 2,
                       "--ort-platform is only for --to ort")
    assert_clean_error(cli("export", "m.onnx", "--to", "ort", "--ort-platform", "x86"), 2, "arm or amd64")
    assert_clean_error(cli("export", "m.onnx", "--to", "ort", "--ort-style", "dynamic"), 2, "fixed or runtime")


@pytest.fixture(scope="module")
def onnx_source(exported) -> str:
    """The two-layer net's ONNX export, shared with the rest of the run."""
    return exported("two_layer_net.pt2", "onnx").artifact


def _config_lines(path) -> list:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.mark.slow
@pytest.mark.parametrize("style, platform", [("fixed", "arm"), ("runtime", "amd64")])
def test_export_to_ort_verifies_with_its_config_beside(onnx_source, tmp_path, cli, style, platform):
    out = tmp_path / "net.ort"
    proc = cli("export", onnx_source, "--to", "ort", "-o", str(out), "--ort-style", style, "--ort-platform",
               platform, "--json")
    assert proc.returncode == 0, proc.stderr      # exit 0: the export's own check passed on ONNX Runtime
    assert detect(out) == Format.ORT
    config = ort_operators_config(out)
    assert config.name == "net" + ORT_CONFIG_SUFFIX
    lines = _config_lines(config)        # domain;opset;Op{"inputs": {...types...}},...: ops with their types
    assert any(line.startswith("ai.onnx;") and "Gemm{" in line and '"float"' in line for line in lines), lines
    recorded = json.loads((tmp_path / "net.ort.deploykit.json").read_text())
    assert recorded["ort"] == {"style": style, "platform": platform} and recorded["verified"]
    assert [f["path"] for f in recorded["artifact"]["extra_files"]] == [config.name]
    assert style in recorded["route"][-1]["tool"] and platform in recorded["route"][-1]["tool"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, config.name, out.name + ".deploykit.json"])
    if style == "runtime":      # verify by content: a renamed file, its saved optimisations replayed
        renamed = tmp_path / "renamed" / "model.bin"
        renamed.parent.mkdir()
        shutil.copyfile(out, renamed)
        assert cli("verify", onnx_source, str(renamed)).returncode == 0


def test_a_torch_source_is_routed_through_onnx():
    from deploykit.exporting.routing import select_routes

    routes = select_routes(Format.EXPORTED_PROGRAM, Format.ORT, None)
    assert [edge.name for edge in routes[0]] == ["torch_to_onnx", "onnx_to_ort"]


@pytest.mark.slow
def test_a_failed_conversion_is_one_error_naming_the_tool_and_leaves_nothing(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from deploykit import api
    from deploykit.errors import ConversionError

    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="com.example")], "g", tensor[:1],
                              tensor[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), tmp_path / "bad.onnx")
    failed = tmp_path / "failed"
    with pytest.raises(ConversionError, match="convert_onnx_models_to_ort failed") as caught:
        api.export(str(tmp_path / "bad.onnx"), "ort", str(failed / "bad.ort"))
    assert caught.value.exit_code == 4 and "com.example:Mystery" in caught.value.message
    assert not failed.exists()          # no artifact, no config, not even the folder the export created


# `deploykit package X.ort`: the bundle a reduced ONNX Runtime build's app ships — model.ort with the contract in
# its own metadata_props, golden vectors from the .onnx it was converted from, runtime-bom.json read from the .ort.

def test_the_contract_goes_into_an_ort_files_metadata_props(tiny_ort, tmp_path):
    """ORT's own session reads what deploykit wrote (an independent reader), the graph runs as before, other
    entries are kept, and damaged bytes are one ModelLoadError."""
    import numpy as np
    import onnxruntime as ort

    from deploykit.ort_metadata import read_metadata, with_metadata
    from deploykit.errors import ModelLoadError

    original = tiny_ort.read_bytes()
    once = with_metadata(original, {"deploykit.contract": '{"task": "raw"}', "note": "é"})
    twice = with_metadata(once, {"deploykit.contract": "{}"})
    assert read_metadata(original) == {} and read_metadata(twice) == {"note": "é", "deploykit.contract": "{}"}
    x = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    expected = ort.InferenceSession(str(tiny_ort), providers=["CPUExecutionProvider"]).run(None, x)[0]
    for data in (once, twice):
        (tmp_path / "m.ort").write_bytes(data)     # ORT verifies the whole flatbuffer as it loads it
        session = ort.InferenceSession(str(tmp_path / "m.ort"), providers=["CPUExecutionProvider"])
        assert session.get_modelmeta().custom_metadata_map == read_metadata(data)
        np.testing.assert_array_equal(session.run(None, x)[0], expected)
    for damaged in (original[:100], b"\xff\xff\xff\x7fORTM" + bytes(64), b"not an ort file"):
        with pytest.raises(ModelLoadError):
            read_metadata(damaged)


def test_an_ort_bundle_for_the_browser_is_refused_in_one_line(tiny_ort, tmp_path, cli):
    assert_clean_error(cli("package", str(tiny_ort), "--source", str(tiny_ort.with_suffix(".onnx")), "--app", "web",
                           "-o", str(tmp_path / "site")), 2, "package the .onnx it was converted from with --app web")
    assert not (tmp_path / "site").exists()


@pytest.fixture(scope="module")
def ort_bundle(onnx_source, tmp_path_factory):
    """The two-layer net's ONNX export converted to a runtime-style .ort (saved optimisations the app must
    replay), and its bundle; golden vectors from the .onnx its manifest names."""
    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    folder = tmp_path_factory.mktemp("ort_bundle")
    exported = api.export(onnx_source, "ort", str(folder / "net.ort"), ort_style="runtime")
    assert exported.passed
    return folder / "net.ort", api.package(str(folder / "net.ort"), str(folder / "bundle"), PackageOptions(samples=3))


@pytest.mark.slow
@pytest.mark.torch
def test_an_ort_bundle_carries_its_contract_and_operators_and_proves_itself(ort_bundle, onnx_source):
    import subprocess
    import sys

    import onnxruntime as ort

    from deploykit.transforms.ort_format import parse_config
    from tests.conftest import run_cli

    artifact, info = ort_bundle
    bundle = Path(info["bundle"])
    assert info["model"] == "model.ort" and info["runtime"] == "onnxruntime" and detect(bundle / "model.ort") == Format.ORT
    assert sorted(info["files"]) == sorted(["app.py", "contract.json", "deploykit-bundle.json", "golden.json",
                                            "golden.npz", "model.ort", "requirements.txt", "runtime-bom.json"])
    assert [line.split("==")[0] for line in (bundle / "requirements.txt").read_text().split()] == ["numpy",
                                                                                                    "onnxruntime"]
    carried = ort.InferenceSession(str(bundle / "model.ort")).get_modelmeta().custom_metadata_map
    assert json.loads(carried["deploykit.contract"]) == json.loads((bundle / "contract.json").read_text())
    from deploykit.introspect import inspect_model     # inspect shows the contract the .ort carries

    assert inspect_model(str(bundle / "model.ort"))["contract"] == json.loads((bundle / "contract.json").read_text())
    assert json.loads((bundle / "golden.json").read_text())["source"] == {"path": onnx_source, "format": "onnx"}
    bom = json.loads((bundle / "runtime-bom.json").read_text())     # the .ort's own operators, with their types
    assert bom["format"] == bom["operators"]["format"] == "ort" and "--minimal_build" in bom["build"]
    assert bom["operators"]["operators"] == parse_config(ort_operators_config(artifact).read_text())
    assert any(row["types"] for row in bom["operators"]["operators"]), bom["operators"]
    selftest = subprocess.run([sys.executable, "-P", "app.py", "selftest", "--json"], cwd=bundle, capture_output=True,
                              text=True, timeout=120)
    assert selftest.returncode == 0 and json.loads(selftest.stdout)["passed"], selftest.stdout + selftest.stderr
    verified = run_cli("verify", str(bundle), "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["passed"], verified.stdout + verified.stderr


def _relisted(bundle, bom_sha256: bool = False) -> None:
    """The record's sha256s redone as a tamperer would (and the BOM's model_sha256 too, with ``bom_sha256``)."""
    import hashlib

    digest = hashlib.sha256((bundle / "model.ort").read_bytes()).hexdigest()
    if bom_sha256:
        bom = json.loads((bundle / "runtime-bom.json").read_text())
        (bundle / "runtime-bom.json").write_text(json.dumps({**bom, "model_sha256": digest}))
    info = json.loads((bundle / "deploykit-bundle.json").read_text())
    info["files"] = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() for name in info["files"]}
    (bundle / "deploykit-bundle.json").write_text(json.dumps(info))


@pytest.mark.slow
@pytest.mark.torch
def test_a_tampered_ort_bundle_fails_selftest_and_verify(ort_bundle, onnx_source, tmp_path):
    """A changed weight fails the app's selftest and verify; a record rewritten to match (BOM kept or rewritten too)
    is still caught by the contract model.ort carries — what the change breaks is named before the BOM's sha256."""
    import subprocess
    import sys

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from deploykit.bundle.bundle_check import verify_bundle
    from deploykit.ort_metadata import with_metadata

    original = Path(ort_bundle[1]["bundle"])
    weight = max((numpy_helper.to_array(t) for t in onnx.load(onnx_source).graph.initializer), key=np.size)
    raw = np.ascontiguousarray(weight, np.float32).tobytes()[:64]    # the weight's bytes, as the .ort stores them
    data = bytearray((original / "model.ort").read_bytes())
    at = data.find(raw)
    assert at > 0
    data[at:at + 4] = np.float32(weight.flat[0] + 1.0).tobytes()
    cases = [("weight", bytes(data), False, False, "changed since packaging: model.ort"),
             ("relisted", with_metadata(bytes(data), {"deploykit.contract": "{}"}), True, False,
              "the contract model.ort carries is not contract.json"),     # what the change breaks is named first
             ("bom-too", with_metadata((original / "model.ort").read_bytes(), {"deploykit.contract": '{"a": 1}'}),
              True, True, "the contract model.ort carries is not contract.json")]
    for name, model, relist, bom_too, said in cases:
        bundle = tmp_path / name
        shutil.copytree(original, bundle)
        (bundle / "model.ort").write_bytes(model)
        if relist:
            _relisted(bundle, bom_too)
        problems = verify_bundle(bundle).problems
        assert problems and said in problems[0], (name, problems)
    selftest = subprocess.run([sys.executable, "-P", "app.py", "selftest"], cwd=tmp_path / "weight",
                              capture_output=True, text=True, timeout=120)
    assert selftest.returncode == 1 and "selftest FAILED" in selftest.stdout, selftest.stdout + selftest.stderr
