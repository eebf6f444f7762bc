"""Apple bundles (`deploykit package X.aimodel | X.mlpackage`): the same bundle contract as for ONNX/TFLite — the
model folder carried file by file in the closed list, the contract inside it, golden vectors from the source, an
app.py whose runtime block is coreai-core (proven in a venv holding only requirements.txt) or coremltools (macOS
only: the bundle is written only with --keep-unverified, exit 6, and nothing here claims it passed)."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import EXIT_UNVERIFIED
from tests.test_coreml import kept  # noqa: F401 - the fixture: one Core ML export per run, shared
from tests.conftest import assert_clean_error, run_cli



def _pin(name: str) -> "str | None":
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return None


PINS = {name: _pin(name) for name in ("numpy", "coreai-core", "coremltools")}    # what the bundles must pin
STDLIB = {"os", "sys", "argparse", "json", "pathlib", "asyncio", "atexit", "importlib.metadata", "platform"}


def _env() -> dict:
    """The environment of a device: no PYTHONPATH pointing into this checkout."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def _app(bundle: Path, *args, python: "str | Path" = sys.executable, timeout: float = 300, tmp: "Path | None" = None):
    env = {**_env(), **({"TMPDIR": str(tmp)} if tmp else {})}
    return subprocess.run([str(python), "-P", "app.py", *args], cwd=bundle, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _copy_asset(result, folder: Path) -> Path:
    """The exported asset and its manifest, copied where a test may damage them."""
    folder.mkdir()
    shutil.copytree(result.artifact, folder / "m.aimodel")
    shutil.copy(result.artifact + ".deploykit.json", folder / "m.aimodel.deploykit.json")
    return folder / "m.aimodel"


@pytest.mark.parametrize("runtime,distribution,allowed", [
    ("coreai", "coreai-core", {"numpy", "coreai.authoring.asset", "coreai.runtime"}),
    ("coreml", "coremltools", {"numpy", "coremltools"})])
def test_apple_apps_are_plain_python_without_deploykit(runtime, distribution, allowed):
    from deploykit.bundle.packaging import render_app

    model_file = {"coreai": "model.aimodel", "coreml": "model.mlpackage"}[runtime]
    code = render_app(model_file, runtime, distribution, True, "/models/mobilenet.pt2")
    tree = ast.parse(code)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - STDLIB - {"PIL"} == allowed, imported
    assert f"MODEL_FILE = HERE / {model_file!r}" in code and "class Model" in code and "def run(self, feeds)" in code
    # Matched by position: the contract's names may not be the model's own.
    assert 'zip(CONTRACT["inputs"], names_in)' in code


@pytest.mark.coreai
def test_coreai_pins_are_exact_and_only_what_the_app_imports():
    from deploykit.bundle.packaging import requirements

    assert requirements("coreai-core", False).split() == [PINS["numpy"], PINS["coreai-core"]]
    assert requirements("coreai-core", True).split()[2].startswith("pillow==")


@pytest.mark.slow           # reads the result back with coremltools' own classes (~4 s of imports)
@pytest.mark.coreml
def test_the_contract_goes_into_core_ml_user_defined_metadata_keeping_every_byte():
    """Read back by coremltools' own generated classes: the spec Core ML wrote is a prefix of the new one, its
    fields and metadata are unchanged, and deploykit.contract is one more user-defined entry."""
    from runtimes.coreml import coremltools_module

    coremltools_module()
    from coremltools.proto import Model_pb2

    from deploykit.bundle.bundle_check import Tampered, _coreml_user_defined, coreml_with_contract

    spec = Model_pb2.Model(specificationVersion=8)
    spec.description.input.add(name="x")
    spec.description.output.add(name="y")
    spec.description.metadata.author = "someone"
    spec.description.metadata.userDefined["com.github.apple.coremltools.version"] = "9.0"
    spec.description.metadata.userDefined["deploykit.contract"] = "an older contract"
    original = spec.SerializeToString()
    written = coreml_with_contract(original, '{"task":"classify"}')
    assert written.startswith(original)
    read = Model_pb2.Model.FromString(written)
    assert read.specificationVersion == 8 and [f.name for f in read.description.input] == ["x"]
    assert read.description.metadata.author == "someone"
    assert dict(read.description.metadata.userDefined) == {"com.github.apple.coremltools.version": "9.0",
                                                          "deploykit.contract": '{"task":"classify"}'}
    assert _coreml_user_defined(written)["deploykit.contract"] == '{"task":"classify"}'
    with pytest.raises(Tampered, match="not a protobuf"):
        _coreml_user_defined(b"\x12\xff\xff\xff\xff\x0f")      # description claims 4 GiB


# --- Core AI: bundles of real exports (`slow`: the exports are shared with test_coreai through the cache) ---

@pytest.fixture(scope="module")
def two_layer(exported):
    result = exported("two_layer_net.pt2", "coreai")
    assert result.passed, result.parity
    return result


@pytest.fixture(scope="module")
def two_layer_bundle(two_layer, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("apple") / "bundle"
    made = run_cli("package", two_layer.artifact, "-o", str(bundle), "--samples", "4", "--json")
    assert made.returncode == 0, made.stderr
    return bundle, json.loads(made.stdout)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.coreai
def test_the_aimodel_folder_is_carried_file_by_file_with_the_contract_inside(two_layer, two_layer_bundle):
    from coreai.authoring.asset import AIModelAsset

    bundle, info = two_layer_bundle
    assert info["model"] == "model.aimodel" and info["runtime"] == "coreai" and info["verified"] is True
    record = json.loads((bundle / "deploykit-bundle.json").read_text())
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"deploykit-bundle.json"}
    assert set(record["files"]) == on_disk
    assert {"model.aimodel/metadata.json", "model.aimodel/main.mlirb", "model.aimodel/main.hash",
            "runtime-bom.json"} <= on_disk
    bom = json.loads((bundle / "runtime-bom.json").read_text())     # no static answer: notes and the op histogram
    assert bom["runtime"] == "coreai" and "no static answer" in bom["readiness"]["notes"][0]
    assert bom["operators"]["op_histogram"]["relu"] == 1 and "not what a runtime build" in bom["operators"]["note"]
    source = Path(two_layer.artifact)
    for name in ("main.mlirb", "main.hash"):           # the program itself is the exported one, byte for byte
        assert (bundle / "model.aimodel" / name).read_bytes() == (source / name).read_bytes()
        assert record["files"][f"model.aimodel/{name}"] == hashlib.sha256((source / name).read_bytes()).hexdigest()
    carried = AIModelAsset.load(str(bundle / "model.aimodel")).metadata.creator_defined_metadata
    assert json.loads(carried["deploykit.contract"]) == json.loads((bundle / "contract.json").read_text())
    assert (bundle / "requirements.txt").read_text().split() == [PINS["numpy"], PINS["coreai-core"]]
    selftest = _app(bundle, "selftest", "--json")
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    report = json.loads(selftest.stdout)
    assert report["passed"] and report["samples"] == 4 and report["tolerance"]["preset"] == "fp32"
    verified = run_cli("verify", str(bundle), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert any("coreai" in note for note in json.loads(verified.stdout)["comparisons"][0]["notes"])


def _change_a_byte(model: Path) -> None:
    data = bytearray((model / "main.mlirb").read_bytes())
    data[-1] ^= 1
    (model / "main.mlirb").write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.coreai
@pytest.mark.parametrize("tamper,said", [
    (_change_a_byte, "changed since packaging: model.aimodel/main.mlirb"),
    (lambda model: (model / "extra.json").write_text("{}"), "not listed in deploykit-bundle.json: "
                                                            "model.aimodel/extra.json"),
    (lambda model: ((model / "main.hash").unlink(), (model / "main.hash").symlink_to(model.parent / "app.py")),
     "a link in the bundle: model.aimodel/main.hash"),
    (lambda model: (model / "main.hash").unlink(), "listed but missing: model.aimodel/main.hash")],
    ids=["changed", "extra-file", "link-inside", "missing"])
def test_a_tampered_aimodel_folder_fails_verify(two_layer_bundle, tmp_path, tamper, said):
    bundle = tmp_path / "bundle"
    shutil.copytree(two_layer_bundle[0], bundle, symlinks=True)
    tamper(bundle / "model.aimodel")
    verified = run_cli("verify", str(bundle))
    assert verified.returncode == 1 and f"tampered: {said}" in verified.stdout, verified.stdout + verified.stderr
    assert "Traceback" not in verified.stderr


def _fifo(model: Path) -> None:
    os.mkfifo(model / "pipe")


def _link(model: Path) -> None:
    (model / "main.mlirb").rename(model.parent / "real.mlirb")
    (model / "main.mlirb").symlink_to(model.parent / "real.mlirb")


def _stale_hash(model: Path) -> None:
    (model / "main.hash").write_bytes(hashlib.sha256(b"another program").digest())


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.coreai
@pytest.mark.parametrize("damage,said", [
    (lambda model: (model / "main.hash").unlink(), "lacks main.hash"),
    (_link, "holds a link, 'main.mlirb'"),
    (_fifo, "holds 'pipe', which is not a regular file"),
    (_stale_hash, "main.mlirb is not the program main.hash records")],
    ids=["missing-file", "link-inside", "fifo-inside", "stale-hash"])
def test_a_damaged_aimodel_folder_is_refused_with_one_line(two_layer, tmp_path, damage, said):
    model = _copy_asset(two_layer, tmp_path / "in")
    damage(model)
    out = tmp_path / "out" / "bundle"
    made = run_cli("package", str(model), "-o", str(out), timeout=300)
    assert_clean_error(made, 2, said)
    assert not (tmp_path / "out").exists()            # nothing left behind, not even the parent it would create


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.coreai
def test_tensors_are_matched_by_position_when_the_contract_names_them_otherwise(two_layer, tmp_path):
    """The contract takes the names deploykit's manifest records; the asset keeps its own identifiers (here x and
    output, the contract's x.1 and out:0): package's check, app.py and verify BUNDLE all pair them by position."""
    model = _copy_asset(two_layer, tmp_path / "in")
    manifest = json.loads(Path(str(model) + ".deploykit.json").read_text())
    manifest["signature"]["inputs"][0]["name"], manifest["signature"]["outputs"][0]["name"] = "x.1", "out:0"
    Path(str(model) + ".deploykit.json").write_text(json.dumps(manifest))
    bundle = tmp_path / "bundle"
    made = run_cli("package", str(model), "-o", str(bundle), "--samples", "2", "--task", "raw", "--json")
    assert made.returncode == 0, made.stderr
    contract = json.loads(made.stdout)["contract"]
    assert [contract["inputs"][0]["name"], contract["outputs"][0]["name"]] == ["x.1", "out:0"]
    selftest = _app(bundle, "selftest")
    assert selftest.returncode == 0 and "pass  out:0" in selftest.stdout, selftest.stdout + selftest.stderr
    with np.load(bundle / "golden.npz") as golden:
        np.savez(tmp_path / "in.npz", **{"x.1": golden["input/1/x.1"]})
        expected = golden["output/1/out:0"]
    predicted = _app(bundle, "predict", str(tmp_path / "in.npz"), "--json")
    np.testing.assert_allclose(np.asarray(json.loads(predicted.stdout)["out:0"], np.float32), expected,
                               rtol=1e-4, atol=1e-5)
    assert run_cli("verify", str(bundle)).returncode == 0


@pytest.fixture(scope="module")
def coreai_runtime_python(tmp_path_factory):
    """A venv holding only what a Core AI bundle pins (numpy, coreai-core, Pillow at this checkout's versions) and
    what pip resolves for them; no torch, TensorFlow, coremltools or deploykit. The install time is printed."""
    from deploykit.bundle.packaging import requirements

    folder = tmp_path_factory.mktemp("coreai_runtime_only")
    (folder / "requirements.txt").write_text(requirements("coreai-core", True))
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True, timeout=300)
    python = folder / "venv" / "bin" / "python"
    started = time.perf_counter()
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                              str(folder / "requirements.txt")], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"\ncoreai runtime-only venv: pip install -r requirements.txt took {time.perf_counter() - started:.1f} s")
    found = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in ('torch', 'tensorflow',"
                            " 'coremltools', 'deploykit') if u.find_spec(m)])"], cwd=folder, env=_env(),
                           capture_output=True, text=True)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
    return python


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.coreai
def test_the_two_layer_bundle_proves_itself_in_a_runtime_only_venv(two_layer_bundle, coreai_runtime_python,
                                                                   tmp_path):
    bundle, _info = two_layer_bundle
    (tmp_path / "tmp").mkdir()
    selftest = _app(bundle, "selftest", python=coreai_runtime_python, tmp=tmp_path / "tmp")
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    assert list((tmp_path / "tmp").iterdir()) == []       # the compiled .aimodelx folder is removed on the way out
    assert "selftest passed: 1 output(s) on 4 golden sample(s), tolerance fp32 on " + \
        PINS["coreai-core"].replace("==", " ") in selftest.stdout
    print(selftest.stdout)
    with np.load(bundle / "golden.npz") as golden:
        np.savez(tmp_path / "x.npz", x=golden["input/2/x"])
        expected = golden["output/2/output"]
    predicted = _app(bundle, "predict", str(tmp_path / "x.npz"), "--json", python=coreai_runtime_python)
    top = json.loads(predicted.stdout)["output"]
    assert top[0]["class"] == int(np.argmax(expected[0])), (top, expected[0])
    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 1000), np.float32))     # the asset takes 64x1000 only
    refused = _app(bundle, "predict", str(tmp_path / "wrong.npz"), python=coreai_runtime_python)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "Core AI refused the inputs" in errors[0], \
        refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.coreai
def test_the_mobilenet_bundle_classifies_a_picture_in_a_runtime_only_venv(samples_dir, exported, tmp_path,
                                                                        coreai_runtime_python):
    from sample_models.shapes import CLASSES

    result = exported("mobilenet_v2.pt2", "coreai")
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    bundle = tmp_path / "bundle"
    made = run_cli("package", result.artifact, "-o", str(bundle), "--labels", str(tmp_path / "labels.txt"),
                   "--normalize", "unit", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["runtime_requirements"][2].startswith("pillow==")
    selftest = _app(bundle, "selftest", python=coreai_runtime_python)
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    print(selftest.stdout)
    picture = next((samples_dir / "shapes").glob("*_diamond.png"))
    predicted = _app(bundle, "predict", str(picture), "--json", python=coreai_runtime_python)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["output"][0]["label"] == "diamond", predicted.stdout


# --- Core ML: no runtime on Linux, so the bundle is kept only with --keep-unverified and never passes here ---

@pytest.fixture(scope="module")
def mlpackage(kept):  # noqa: F811 - the imported fixture, requested by name
    """test_coreml's two-layer Core ML package (exported once per run with --keep-unverified, exit 6)."""
    code, _stdout, stderr, package = kept
    assert code == 6 and package.is_dir(), stderr
    return package


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.coreml
def test_a_core_ml_bundle_is_written_only_unverified_and_never_passes_here(mlpackage, tmp_path):
    from runtimes.coreml import coremltools_module

    refused = run_cli("package", str(mlpackage), "-o", str(tmp_path / "refused"))
    assert_clean_error(refused, 2, "no Core ML runtime on Linux", "--keep-unverified")
    assert not (tmp_path / "refused").exists()
    bundle = tmp_path / "bundle"
    made = run_cli("package", str(mlpackage), "-o", str(bundle), "--keep-unverified", "--samples", "3")
    assert made.returncode == EXIT_UNVERIFIED, made.stdout + made.stderr
    assert "UNVERIFIED" in made.stdout and "PASS" not in made.stdout
    record = json.loads((bundle / "deploykit-bundle.json").read_text())
    assert record["verified"] is False and "no Core ML runtime on Linux" in record["unverified_reason"]
    assert record["model"] == "model.mlpackage" and "model.mlpackage/Manifest.json" in record["files"]
    bom = json.loads((bundle / "runtime-bom.json").read_text())
    assert bom["runtime"] == "coreml" and bom["operators"]["op_histogram"]["linear"] == 2, bom["operators"]
    assert (bundle / "requirements.txt").read_text().split() == [PINS["numpy"], PINS["coremltools"]]
    with np.load(bundle / "golden.npz") as golden:                  # the source's outputs, for the Mac to check
        assert golden["output/0/output"].shape == (64, 10) and len(golden.files) == 6
    ct = coremltools_module()
    carried = ct.models.MLModel(str(bundle / "model.mlpackage"), skip_model_load=True).user_defined_metadata
    assert json.loads(carried["deploykit.contract"]) == json.loads((bundle / "contract.json").read_text())
    selftest = _app(bundle, "selftest")
    assert selftest.returncode == 3 and selftest.stdout == "", selftest.stdout + selftest.stderr
    assert selftest.stderr.count("error:") == 1 and "nothing was checked" in selftest.stderr
    verified = run_cli("verify", str(bundle))
    assert_clean_error(verified, 3, "its files are unchanged since packaging", "golden vectors were not run")
    assert "PASS" not in verified.stdout
    (bundle / "model.mlpackage" / "Manifest.json").write_text("{}")
    tampered = run_cli("verify", str(bundle))
    assert tampered.returncode == 1 and "tampered: changed since packaging: model.mlpackage/Manifest.json" in \
        tampered.stdout
