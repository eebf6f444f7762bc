"""A bundle ships into other people's apps, so it must not be a way in (issue 26): no code runs from an artifact's
file name, and `verify BUNDLE` refuses a bundle whose app would run something other than what it checked —
unlisted files, links, a swapped model, listed paths outside the bundle or that are not regular files."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import run_cli
from tests.hostile import builders

pytestmark = pytest.mark.onnxruntime
PAYLOAD_NAME = 'm.x";open("PWNED","w");"'     # a suffix that closes the string literal and writes a marker


def _package(tmp_path, artifact_name="tiny.onnx"):
    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    builders.tiny_onnx(tmp_path / "tiny.onnx")
    if artifact_name != "tiny.onnx":
        shutil.copyfile(tmp_path / "tiny.onnx", tmp_path / artifact_name)
    options = PackageOptions(samples=2, source=str(tmp_path / "tiny.onnx"))
    return tmp_path / "bundle", api.package(str(tmp_path / artifact_name), str(tmp_path / "bundle"), options)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("packaged"))[0]


@pytest.fixture()
def bundle(packaged, tmp_path):
    """A fresh copy of one bundle packaged per module (packaging is the setup here, not what is tested)."""
    builders.tiny_onnx(tmp_path / "tiny.onnx")
    shutil.copytree(packaged, tmp_path / "bundle", symlinks=True)
    return tmp_path / "bundle"


def _selftest(bundle, cwd, *flags):
    return subprocess.run([sys.executable, *flags, str(bundle / "app.py"), "selftest"], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _relist(bundle, **changes):
    """Rewrite deploykit-bundle.json as a tamperer would: every file's sha256 recomputed, ``changes`` applied."""
    info = json.loads((bundle / "deploykit-bundle.json").read_text())
    info.update(changes)
    info["files"] = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() if (bundle / name).is_file()
                     and not (bundle / name).is_symlink() else digest for name, digest in info["files"].items()}
    (bundle / "deploykit-bundle.json").write_text(json.dumps(info))


def test_a_payload_in_the_artifacts_file_name_never_runs(tmp_path):
    bundle, described = _package(tmp_path, PAYLOAD_NAME)
    assert described["model"] == "model.onnx" and (bundle / "model.onnx").is_file()
    tree = ast.parse((bundle / "app.py").read_text())
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "open" not in calls
    (tmp_path / "run").mkdir()
    done = _selftest(bundle, tmp_path / "run")
    assert done.returncode == 0 and "selftest passed" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "run" / "PWNED").exists() and not (bundle / "PWNED").exists()
    assert run_cli("verify", str(bundle)).returncode == 0


def test_app_never_imports_from_its_own_folder(bundle, tmp_path):
    marker = tmp_path / "PWNED"
    (bundle / "numpy.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    for name in ("json.py", "argparse.py", "pathlib.py"):
        (bundle / name).write_text(f"open({str(marker)!r}, 'w').close()\n")
    done = _selftest(bundle, bundle)
    assert not marker.exists(), "app.py imported a module dropped beside it"
    assert done.returncode == 0, done.stdout + done.stderr


def test_verify_refuses_an_unlisted_file(bundle):
    (bundle / "numpy.py").write_text("raise SystemExit('not numpy')\n")
    verified = run_cli("verify", str(bundle))
    assert verified.returncode == 1 and "not listed" in verified.stdout and "numpy.py" in verified.stdout, \
        verified.stdout + verified.stderr


def test_verify_refuses_a_link_in_the_bundle(bundle, tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", bundle / "x.txt")
    verified = run_cli("verify", str(bundle))
    assert verified.returncode == 1 and "link" in verified.stdout and "x.txt" in verified.stdout, \
        verified.stdout + verified.stderr


def test_verify_refuses_a_model_other_than_the_one_the_app_loads(bundle):
    import onnx
    from onnx import numpy_helper

    shutil.copyfile(bundle / "model.onnx", bundle / "good.onnx")
    model = onnx.load(bundle / "model.onnx")
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[0, 0] += 0.5                                          # what app.py loads no longer matches
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    onnx.save(model, bundle / "model.onnx")
    info = json.loads((bundle / "deploykit-bundle.json").read_text())
    info["files"]["good.onnx"] = ""
    (bundle / "deploykit-bundle.json").write_text(json.dumps(info))
    _relist(bundle, model="good.onnx")
    assert _selftest(bundle, bundle, "-P").returncode == 1      # the device would run the changed model
    verified = run_cli("verify", str(bundle))
    assert verified.returncode == 1 and "good.onnx" in verified.stdout and "model.onnx" in verified.stdout, \
        verified.stdout + verified.stderr


def test_verify_never_reads_a_listed_path_outside_the_bundle(bundle, tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    info = json.loads((bundle / "deploykit-bundle.json").read_text())
    info["files"]["../secret.txt"] = hashlib.sha256(b"secret").hexdigest()
    (bundle / "deploykit-bundle.json").write_text(json.dumps(info))
    verified = run_cli("verify", str(bundle))
    assert verified.returncode == 1 and "../secret.txt" in verified.stdout, verified.stdout + verified.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_verify_never_blocks_on_a_listed_fifo_or_device(bundle, kind):
    if kind == "fifo":
        os.mkfifo(bundle / "pipe")
        name = "pipe"
    else:
        name = os.path.relpath("/dev/zero", bundle)
    info = json.loads((bundle / "deploykit-bundle.json").read_text())
    info["files"][name] = "0" * 64
    (bundle / "deploykit-bundle.json").write_text(json.dumps(info))
    verified = run_cli("verify", str(bundle), timeout=60)
    assert verified.returncode == 1 and name in verified.stdout, verified.stdout + verified.stderr


def test_a_web_bundles_listed_tree_passes_the_checks(tmp_path):
    """A web bundle (files in vendor/, the model named by web.json, no app.py) passes; a web.json pointing at
    another model does not. Structure only: the browser run is tests/test_browser.py's."""
    from deploykit.bundle.packaging import _tampering

    site = tmp_path / "site"
    (site / "vendor" / "ort").mkdir(parents=True)
    for name in ("model.onnx", "contract.json", "golden.json", "golden.npz", "index.html", "vendor/ort/ort.wasm",
                 "runtime-bom.json"):
        (site / name).write_text("x")
    (site / "web.json").write_text(json.dumps({"model": "model.onnx"}))
    files = {p.relative_to(site).as_posix(): "0" for p in site.rglob("*") if p.is_file()}
    (site / "deploykit-bundle.json").write_text(json.dumps({"bundle": 1, "model": "model.onnx", "app": "web",
                                                            "runtime": "onnxruntime-web", "files": files}))
    assert _tampering(site)[1] == []
    (site / "web.json").write_text(json.dumps({"model": "contract.json"}))
    assert "the app loads contract.json" in _tampering(site)[1][0]


def test_a_bundle_packaged_before_runtime_bom_json_still_verifies_its_structure(tmp_path):
    """Record version 1 (before runtime-bom.json) needs no BOM; version 2 (what package writes now) does."""
    from deploykit.bundle.packaging import _tampering

    site = tmp_path / "old"
    site.mkdir()
    for name in ("model.onnx", "contract.json", "golden.json", "golden.npz", "requirements.txt"):
        (site / name).write_text("x")
    (site / "app.py").write_text('MODEL_FILE = HERE / "model.onnx"\n')
    files = {p.name: "0" for p in site.iterdir()}
    record = {"bundle": 1, "model": "model.onnx", "app": "python", "runtime": "onnxruntime", "files": files}
    (site / "deploykit-bundle.json").write_text(json.dumps(record))
    assert _tampering(site)[1] == []
    (site / "deploykit-bundle.json").write_text(json.dumps({**record, "bundle": 2}))
    assert _tampering(site)[1] == ["not listed in deploykit-bundle.json: runtime-bom.json"]
    (site / "deploykit-bundle.json").write_text(json.dumps({**record, "bundle": 3}))
    assert "has no valid bundle" in _tampering(site)[1][0]


def _edit_bom(bundle, edit, relist=True):
    """``edit(bom)`` applied to runtime-bom.json (None: the file is removed and unlisted); the record's sha256s
    redone unless ``relist`` is False (then only the unchanged-files check can see it)."""
    path = bundle / "runtime-bom.json"
    if edit is None:
        path.unlink()
        info = json.loads((bundle / "deploykit-bundle.json").read_text())
        del info["files"]["runtime-bom.json"]
        (bundle / "deploykit-bundle.json").write_text(json.dumps(info))
        return
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    if relist:
        _relist(bundle)


def _drop_an_operator(bom):
    bom["operators"]["operators"].pop()          # the config text still names it: the two no longer agree
    return bom


def test_the_runtime_bom_is_listed_and_a_tampered_one_fails_verify(packaged, tmp_path):
    """runtime-bom.json names the runtime and the operators of the bundled model (tiny.onnx: MatMul, Relu), is
    listed like every file, and verify refuses it edited, malformed, for another model or missing (exit 1)."""
    from deploykit.bundle.bundle_check import verify_bundle
    from deploykit.bundle.packaging import describe_bundle

    original, described = packaged, describe_bundle(packaged)
    bom = json.loads((original / "runtime-bom.json").read_text())
    assert bom["schema"] == "deploykit.runtime-bom/1" and bom["runtime"] == described["runtime"] == "onnxruntime"
    assert [row["op"] for row in bom["operators"]["operators"]] == ["MatMul", "Relu"]
    assert "ai.onnx;13;MatMul" in bom["operators"]["required_operators_config"]
    assert bom["model"] == "model.onnx" and bom["model_sha256"] == hashlib.sha256(
        (original / "model.onnx").read_bytes()).hexdigest()
    assert {t["target"] for t in bom["readiness"]["tables"]} == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
    assert "runtime-bom.json" in described["files"] and described["runtime_bom"].startswith(
        "runtime-bom.json: 2 operators with types for ONNX Runtime's reduced build")
    cases = [
        ("unlisted-edit", lambda b: {**b, "runtime_version": "0"}, False, "changed since packaging: runtime-bom.json"),
        ("not-json", lambda b: "{not json", True, "runtime-bom.json is not valid JSON"),
        ("schema", lambda b: {**b, "schema": "deploykit.runtime-bom/0"}, True, "not a JSON object of schema"),
        ("runtime", lambda b: {**b, "runtime": "litert"}, True, "names another runtime"),
        ("other-model", lambda b: {**b, "model_sha256": "0" * 64}, True, "computed for another model than model.onnx"),
        ("operators", _drop_an_operator, True, "operators or readiness are not the sections package writes"),
        ("removed", None, True, "not listed in deploykit-bundle.json: runtime-bom.json"),
    ]
    for name, edit, relist, said in cases:
        bundle = tmp_path / name
        shutil.copytree(original, bundle)
        _edit_bom(bundle, edit, relist)
        problems = verify_bundle(bundle).problems
        assert problems and said in problems[0], (name, problems)
    verified = run_cli("verify", str(tmp_path / "other-model"))
    assert verified.returncode == 1 and "tampered: runtime-bom.json was computed for another model" in verified.stdout
    assert "Traceback" not in verified.stderr
