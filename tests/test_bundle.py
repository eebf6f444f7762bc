"""Device-app bundles (`deploykit package`): the contract, golden vectors from the source, an app.py that needs no
deploykit and proves the model with `selftest`, and the errors of a bundle that cannot be made honestly."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploykit import contract as contracts
from deploykit.errors import UsageError
from deploykit.spec import ModelSpec, TensorSpec
from tests.conftest import run_cli
from tests.hostile import builders

IMAGE = ModelSpec((TensorSpec("image", (1, 224, 224, 3), "float32", "NHWC"),),
                  (TensorSpec("scores", (1, 10), "float32"),))


def test_contract_of_an_image_classifier_says_what_was_inferred():
    labels = [f"c{i}" for i in range(10)]
    made = contracts.build(IMAGE, labels=labels, calibration_normalize="imagenet", probabilities=False)
    image = made["inputs"][0]["image"]
    assert made["task"] == "classify" and made["inputs"][0]["layout"] == "NHWC"
    assert (image["height"], image["width"], image["channels"]) == (224, 224, 3)
    assert image["mean"] == [0.485, 0.456, 0.406] and image["std"] == [0.229, 0.224, 0.225]
    assert made["outputs"][0] == {"name": "scores", "shape": [1, 10], "dtype": "float32", "meaning": "class_scores",
                                  "labels": "labels.txt", "postprocess": "softmax", "top_k": 5}
    assert any("as it was calibrated" in line for line in made["inferred"])
    assert contracts.validate(json.loads(contracts.to_json(made))) == made


def test_contract_inferences_and_user_choices():
    raw = contracts.build(ModelSpec((TensorSpec("ids", (1, 16), "int64", value_range=(0, 100)),),
                                    (TensorSpec("h", (1, 16, 32), "float32"),)))
    assert raw["task"] == "raw" and raw["inputs"][0]["image"] is None and raw["inputs"][0]["value_range"] == [0, 100]
    embed = contracts.build(IMAGE, task="embed", normalize="mean=0.5,std=0.25")
    assert embed["outputs"][0]["meaning"] == "embedding" and embed["inputs"][0]["image"]["std"] == [0.25] * 3
    assert embed["inputs"][0]["value_range"] == [-2.0, 2.0]
    assert contracts.parse_normalize("symmetric") == ((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": ["a", "b"]}, "2 labels for an output of 10 classes"),
    ({"task": "segment"}, "unknown --task"),
    ({"normalize": "mean=0.5"}, "not understood"),
    ({"normalize": "mean=0.5,std=0"}, "positive stds"),
])
def test_contract_errors_name_the_problem(kwargs, message):
    with pytest.raises(UsageError, match=message):
        contracts.build(IMAGE, **kwargs)


def test_normalize_on_a_model_without_an_image_input_is_refused():
    spec = ModelSpec((TensorSpec("x", (1, 4), "float32"),), (TensorSpec("y", (1, 3), "float32"),))
    with pytest.raises(UsageError, match="applies to image inputs"):
        contracts.build(spec, normalize="imagenet")


def test_choices_recorded_at_export_are_completed_and_overridden_at_package(tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\n")
    recorded = contracts.ContractChoices.from_dict({"labels": ["x", "y"], "normalize": "imagenet", "task": "classify"})
    given = contracts.ContractChoices(labels_file=str(tmp_path / "labels.txt"))
    merged = given.over(recorded)
    assert merged.labels == ("a", "b") and merged.normalize == "imagenet" and merged.task == "classify"
    assert contracts.ContractChoices.from_dict({"labels": "not a list", "task": 5}) == contracts.ContractChoices()
    with pytest.raises(UsageError, match="unknown --task"):
        contracts.ContractChoices(task="detect")


def test_onnx_metadata_follows_the_image_conventions_where_they_fit():
    props = contracts.onnx_metadata(contracts.build(IMAGE, normalize="unit"))
    assert props["Image.BitmapPixelFormat"] == "Rgb8" and props["Image.NominalPixelRange"] == "Normalized_0_1"
    assert json.loads(props[contracts.ONNX_KEY])["task"] == "classify"
    assert "Image.NominalPixelRange" not in contracts.onnx_metadata(contracts.build(IMAGE, normalize="imagenet"))


@pytest.mark.parametrize("runtime, distribution", [("onnxruntime", "onnxruntime"), ("litert", "ai-edge-litert")])
def test_generated_app_is_plain_python_without_deploykit(runtime, distribution):
    from deploykit.bundle.packaging import render_app

    code = render_app("model.x", runtime, distribution, True, "m.pt2")
    tree = ast.parse(code)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"argparse", "json", "os", "sys", "pathlib", "numpy", "PIL", "importlib", "onnxruntime",
                        "ai_edge_litert"}, imported
    assert "deploykit" not in imported


@pytest.mark.onnxruntime
def test_the_apps_rule_is_deploykits_rule():
    """app.py judges golden vectors as deploykit.parity does: pooled over samples, integers exactly, matching
    infinities pass, a sign flip or a NaN fails."""
    from deploykit import parity
    from deploykit.bundle.packaging import render_app

    namespace: dict = {"__file__": "/nowhere/app.py", "__name__": "app"}
    code = render_app("m.onnx", "onnxruntime", "onnxruntime", False, "s.pt2")
    exec(compile(code.replace('CONTRACT = json.loads((HERE / "contract.json").read_text())', "CONTRACT = {}"),
                 "app.py", "exec"), namespace)
    tolerance = parity.PRESETS["fp32"]
    as_dict = {"atol": tolerance.atol, "rtol": tolerance.rtol, "min_cosine": tolerance.min_cosine,
               "max_mismatch": tolerance.max_mismatch, "scale_by_reference": tolerance.scale_by_reference}
    rng = np.random.default_rng(0)
    small, large = rng.standard_normal(10).astype("f4"), 3 * rng.standard_normal(10).astype("f4")
    cases = [
        ([small, large], [small + 2e-4, large]),                    # within atol scaled by the pooled max
        ([small], [small + 1e-2]),                                   # outside
        ([np.array([999, 3])], [np.array([998, 3])]),                 # integers: exact
        ([np.array([np.inf, -np.inf, 1.0], "f4")], [np.array([np.inf, -np.inf, 1.0], "f4")]),
        ([np.array([np.inf, 1.0], "f4")], [np.array([-np.inf, 1.0], "f4")]),
        ([np.array([np.nan, 1.0], "f4")], [np.array([np.nan, 1.0], "f4")]),
    ]
    for references, results in cases:
        ours = parity.compare([{"y": r} for r in references], [{"y": g} for g in results], tolerance).passed
        _detail, app_says = namespace["judge"](references, results, as_dict)
        assert app_says == ours, (references, results, ours)


@pytest.fixture()
def onnx_bundle(tmp_path):
    """A bundle of a small ONNX model (its own source: no conversion), with labels, made through the Python API
(the CLI path is the corpus's and the slow tests')."""
    builders.tiny_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    options = PackageOptions(labels=str(tmp_path / "labels.txt"), samples=3, source=str(tmp_path / "tiny.onnx"))
    return tmp_path / "bundle", api.package(str(tmp_path / "tiny.onnx"), str(tmp_path / "bundle"), options)


@pytest.mark.onnxruntime
def test_bundle_selftest_predict_and_verify(onnx_bundle, tmp_path):
    bundle, info = onnx_bundle
    assert info["runtime"] == "onnxruntime" and info["contract"]["outputs"][0]["labels"] == "labels.txt"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(info["files"])
    assert (bundle / "requirements.txt").read_text().splitlines()[1].startswith("onnxruntime==")
    selftest = subprocess.run([sys.executable, "-P", "app.py", "selftest", "--json"], cwd=bundle,
                              capture_output=True, text=True, timeout=120)
    assert selftest.returncode == 0, selftest.stderr
    report = json.loads(selftest.stdout)
    assert report["passed"] and report["samples"] == 3 and report["tolerance"]["preset"] == "fp32"
    assert [o["output"] for o in report["outputs"]] == ["y"] and report["outputs"][0]["passed"]
    np.savez(tmp_path / "in.npz", x=np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))
    predict = subprocess.run([sys.executable, "-P", "app.py", "predict", str(tmp_path / "in.npz"), "--json"],
                             cwd=bundle, capture_output=True, text=True, timeout=120)
    top = json.loads(predict.stdout)["y"]
    assert [entry["label"] for entry in top] == ["bird", "dog", "cat"]     # x @ W grows with the column index
    assert abs(sum(entry["score"] for entry in top) - 1.0) < 1e-5         # softmax over the three logits
    verified = run_cli("verify", str(bundle), "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["passed"]
    notes = json.loads(verified.stdout)["comparisons"][0]["notes"]
    assert any(note.startswith("contract: task: classify") for note in notes), notes
    shown = run_cli("inspect", str(bundle / "model.onnx"), "--json")          # the model file carries it too
    assert json.loads(shown.stdout)["contract"]["outputs"][0]["labels"] == "labels.txt"


@pytest.mark.onnxruntime
def test_a_tampered_model_fails_selftest_and_verify(onnx_bundle):
    import onnx
    from onnx import numpy_helper

    bundle, _info = onnx_bundle
    model = onnx.load(bundle / "model.onnx")
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[0, 0] += 0.5                                                     # one weight changed
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    onnx.save(model, bundle / "model.onnx")
    selftest = subprocess.run([sys.executable, "-P", "app.py", "selftest"], cwd=bundle, capture_output=True,
                              text=True, timeout=120)
    assert selftest.returncode == 1 and "FAIL" in selftest.stdout and "selftest FAILED" in selftest.stdout
    verified = run_cli("verify", str(bundle))
    assert verified.returncode == 1 and "changed since packaging: model.onnx" in verified.stdout


@pytest.fixture(scope="module")
def runtime_only_python(tmp_path_factory):
    """One venv with only what bundles pin — numpy, onnxruntime, ai-edge-litert, Pillow, at this checkout's
    versions — and no torch, TensorFlow or deploykit; shared by the runtime-only tests (a venv costs a minute)."""
    from deploykit.bundle.packaging import requirements

    folder = tmp_path_factory.mktemp("runtime_only")
    pins = sorted(set(requirements("onnxruntime", True).split()) | set(requirements("ai-edge-litert", True).split()))
    (folder / "requirements.txt").write_text("\n".join(pins) + "\n")
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True, timeout=300)
    python = folder / "venv" / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                              str(folder / "requirements.txt")], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def google_metadata_reader(tmp_path_factory):
    """An independent reader of TFLite Metadata: the flatbuffers code Google generated from metadata_schema.fbs,
    taken from the tflite-support 0.4.4 wheel (its pure-Python part; the package itself cannot be installed beside
    TensorFlow 2.21: it pins protobuf < 4)."""
    import importlib.util
    import zipfile

    folder = tmp_path_factory.mktemp("tflite_support")
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                              "tflite-support==0.4.4", "-d", str(folder)], capture_output=True, text=True, timeout=600)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    member = "tensorflow_lite_support/metadata/metadata_schema_py_generated.py"
    with zipfile.ZipFile(next(folder.glob("tflite_support-*.whl"))) as wheel:
        (folder / "metadata_schema.py").write_bytes(wheel.read(member))
    spec = importlib.util.spec_from_file_location("google_metadata_schema", folder / "metadata_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_tflite_metadata(path: Path, reader):
    from ai_edge_litert import schema_py_generated as tflite

    model = tflite.Model.GetRootAsModel(bytearray(path.read_bytes()), 0)
    entries = [model.Metadata(i) for i in range(model.MetadataLength())]
    found = [e for e in entries if e.Name() == b"TFLITE_METADATA"]
    assert len(found) == 1, [e.Name() for e in entries]
    raw = model.Buffers(found[0].Buffer()).DataAsNumpy().tobytes()
    assert reader.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0)
    return reader.ModelMetadataT.InitFromObj(reader.ModelMetadata.GetRootAsModelMetadata(raw, 0))


def _assert_contract_inside(model_file: Path, reader) -> None:
    """The model file itself carries the contract, readable by tools that never heard of deploykit."""
    import zipfile

    if model_file.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(model_file).metadata_props}
        assert props["Image.BitmapPixelFormat"] == "Rgb8" and props["Image.NominalPixelRange"] == "Normalized_0_1"
        assert json.loads(props["deploykit.contract"])["outputs"][0]["labels"] == "labels.txt"
        return
    metadata = _read_tflite_metadata(model_file, reader)
    tensor = metadata.subgraphMetadata[0].inputTensorMetadata[0]
    layout = json.loads((model_file.parent / "contract.json").read_text())["inputs"][0]["layout"]
    if layout == "NHWC":                                            # what Task Library reads as pixels
        assert tensor.content.contentPropertiesType == reader.ContentProperties.ImageProperties
        assert tensor.content.contentProperties.colorSpace == reader.ColorSpaceType.RGB
        assert tensor.content.contentProperties.defaultSize.width == 224
    else:                                                           # NCHW (litert-torch keeps it): a feature
        assert tensor.content.contentPropertiesType == reader.ContentProperties.FeatureProperties
        assert b"224x224 RGB image" in tensor.description and b"NCHW" in tensor.description
    options = tensor.processUnits[0].options                        # unit: (pixel - 0) / 255
    assert list(options.mean) == [0.0] * 3 and list(options.std) == [255.0] * 3
    labels = metadata.subgraphMetadata[0].outputTensorMetadata[0].associatedFiles[0]
    assert (labels.name, labels.type) == (b"labels.txt", reader.AssociatedFileType.TENSOR_AXIS_LABELS)
    with zipfile.ZipFile(model_file) as packed:                     # associated files are zipped into the model
        assert packed.read("labels.txt").decode().split()[8] == "diamond"


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.litert
@pytest.mark.parametrize("to", ["onnx", "tflite"])
def test_mobilenet_bundle_proves_itself_in_a_runtime_only_venv(samples_dir, exported, tmp_path, to,
                                                              runtime_only_python, google_metadata_reader):
    """The trained MobileNetV2 (shapes task): labelled top-k on a real picture and golden vectors pass in a venv
    that holds numpy, the runtimes and Pillow — and nothing of the research environment."""
    from sample_models.shapes import CLASSES

    artifact = exported("mobilenet_v2.pt2", to)
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    bundle = tmp_path / "bundle"
    made = run_cli("package", artifact.artifact, "-o", str(bundle), "--labels", str(tmp_path / "labels.txt"),
                   "--normalize", "unit", "--json")
    assert made.returncode == 0, made.stderr
    _assert_contract_inside(bundle / json.loads(made.stdout)["model"], google_metadata_reader)
    bom = json.loads((bundle / "runtime-bom.json").read_text())   # what the app's runtime build must include
    listed = [row["op"] for row in bom["operators"].get("builtin_operators", bom["operators"].get("operators", []))]
    assert {"onnx": "Conv", "tflite": "CONV_2D"}[to] in listed, listed
    assert "runtime-bom.json: " in json.loads(made.stdout)["runtime_bom"]
    python, env = runtime_only_python, {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    modules = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in ('torch', "
                              "'tensorflow', 'deploykit') if u.find_spec(m)])"], cwd=bundle, env=env,
                             capture_output=True, text=True)
    assert modules.stdout.strip() == "[]", modules.stdout + modules.stderr
    selftest = subprocess.run([str(python), "app.py", "selftest"], cwd=bundle, env=env, capture_output=True,
                              text=True, timeout=300)
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    picture = next((samples_dir / "shapes").glob("*_diamond.png"))
    predict = subprocess.run([str(python), "app.py", "predict", str(picture), "--json"], cwd=bundle, env=env,
                             capture_output=True, text=True, timeout=300)
    top = json.loads(predict.stdout)
    assert next(iter(top.values()))[0]["label"] == "diamond", predict.stdout


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.litert
@pytest.mark.parametrize("to", ["onnx", "tflite"])
def test_transformer_bundle_takes_token_ids(exported, tmp_path, to, runtime_only_python):
    artifact = exported("tiny_transformer.pt2", to)
    bundle = tmp_path / "bundle"
    made = run_cli("package", artifact.artifact, "-o", str(bundle), "--samples", "4", "--json")
    assert made.returncode == 0, made.stderr
    contract = json.loads(made.stdout)["contract"]
    ids = contract["inputs"][0]
    assert ids["dtype"].startswith("int") and ids["image"] is None and ids["value_range"][0] == 0
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    selftest = subprocess.run([str(runtime_only_python), "app.py", "selftest"], cwd=bundle, env=env,
                              capture_output=True, text=True, timeout=300)
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    with np.load(bundle / "golden.npz") as golden:
        np.savez(tmp_path / "ids.npz", **{ids["name"]: golden[f"input/0/{ids['name']}"]})
        expected = golden[f"output/0/{contract['outputs'][0]['name']}"]
    predict = subprocess.run([str(runtime_only_python), "app.py", "predict", str(tmp_path / "ids.npz"), "--json"],
                             cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    got = json.loads(predict.stdout)[contract["outputs"][0]["name"]]
    if contract["outputs"][0]["meaning"] == "class_scores":                # top-k, led by the source's own argmax
        assert got[0]["class"] == int(np.argmax(expected.reshape(-1, expected.shape[-1])[0])), got
    else:
        np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=1e-3, atol=1e-4)
    assert run_cli("verify", str(bundle)).returncode == 0


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.onnxruntime
def test_contract_recorded_at_export_is_packaged_and_editable_later(samples_dir, tmp_path):
    artifact = tmp_path / "two.onnx"
    made = run_cli("export", str(samples_dir / "two_layer_net.pt2"), "-o", str(artifact), "--task", "embed")
    assert made.returncode == 0, made.stderr
    recorded = json.loads((tmp_path / "two.onnx.deploykit.json").read_text())
    assert recorded["contract"]["outputs"][0]["meaning"] == "embedding"
    assert recorded["contract_choices"]["task"] == "embed"
    packaged = run_cli("package", str(artifact), "-o", str(tmp_path / "b1"), "--samples", "2", "--json")
    assert json.loads(packaged.stdout)["contract"]["task"] == "embed"
    edited = run_cli("package", str(artifact), "-o", str(tmp_path / "b2"), "--samples", "2", "--task", "raw", "--json")
    assert json.loads(edited.stdout)["contract"]["task"] == "raw"


@pytest.mark.onnxruntime
def test_an_artifact_that_does_not_match_its_source_is_not_bundled(tmp_path):
    """The bundled model must reproduce the source's golden outputs; else exit 1 and no folder."""
    import onnx
    from onnx import numpy_helper

    builders.tiny_onnx(tmp_path / "source.onnx")
    other = onnx.load(builders.tiny_onnx(tmp_path / "other.onnx"))
    weight = numpy_helper.to_array(other.graph.initializer[0]) + 1.0
    other.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    onnx.save(other, tmp_path / "other.onnx")
    result = run_cli("package", str(tmp_path / "other.onnx"), "--source", str(tmp_path / "source.onnx"),
                     "-o", str(tmp_path / "b"))
    assert result.returncode == 1 and "does not reproduce its golden vectors" in result.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.onnxruntime
def test_a_quantized_artifact_gets_golden_vectors_from_its_calibration_data(tmp_path):
    """int8 is judged on the distribution it was calibrated for (held-out items first), as export judged it."""
    from deploykit import api

    builders.image_onnx(tmp_path / "m.onnx")
    data = np.random.default_rng(0).random((12, 1, 3, 8, 8)).astype("float32")
    np.savez(tmp_path / "cal.npz", x=data)
    api.export(str(tmp_path / "m.onnx"), "onnx", str(tmp_path / "q.onnx"),
               quantize=api.QuantizeOptions("int8", calibration=str(tmp_path / "cal.npz"), samples=8))
    bundle = api.package(str(tmp_path / "q.onnx"), str(tmp_path / "b"), deploykit_options(samples=3))
    assert bundle["contract"]["inputs"][0]["image"] is not None
    with np.load(tmp_path / "b" / "golden.npz") as golden:
        np.testing.assert_allclose(golden["input/0/x"], data[8], rtol=1e-6)     # the first held-out item
    selftest = subprocess.run([sys.executable, "-P", "app.py", "selftest"], cwd=tmp_path / "b", capture_output=True,
                              text=True, timeout=120)
    assert selftest.returncode == 0, selftest.stdout


def deploykit_options(**kwargs):
    from deploykit.bundle.packaging import PackageOptions

    return PackageOptions(**kwargs)


def _app(bundle, *args, timeout=120):
    return subprocess.run([sys.executable, "-P", "app.py", *args], cwd=bundle, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def image_bundle(tmp_path):
    """A bundle of x[1,3,8,8] -> Relu (an image input, normalised 'unit': the app's feed is pixels / 255)."""
    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    builders.image_onnx(tmp_path / "image.onnx")
    api.package(str(tmp_path / "image.onnx"), str(tmp_path / "bundle"),
                PackageOptions(samples=1, source=str(tmp_path / "image.onnx")))
    return tmp_path / "bundle"


@pytest.mark.onnxruntime
def test_app_scales_a_16_bit_png_instead_of_saturating_it(image_bundle, tmp_path):
    """issue 26: Pillow's convert('L') clips a 16-bit greyscale value over 255 to white; a browser (the web app)
    scales it by 255/65535. The app now does what the browser does."""
    from PIL import Image

    deep = np.full((8, 8), 16384, np.uint16)             # a quarter of 16-bit full scale: 0.25 after 'unit'
    deep[0, 0] = 65535
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    Image.fromarray(np.full((8, 8, 3), 64, np.uint8)).save(tmp_path / "rgb.png")
    for picture, expected in (("deep.png", 16384 / 65535), ("rgb.png", 64 / 255)):
        done = _app(image_bundle, "predict", str(tmp_path / picture), "--json")
        assert done.returncode == 0, done.stderr
        fed = np.asarray(json.loads(done.stdout)["y"])         # Relu of the feed: the feed itself
        assert fed.shape == (1, 3, 8, 8) and abs(float(np.median(fed)) - expected) < 1e-3, (picture, fed[0, 0])
    assert abs(float(np.asarray(json.loads(_app(image_bundle, "predict", str(tmp_path / "deep.png"),
                                                     "--json").stdout)["y"]).max()) - 1.0) < 1e-6


@pytest.mark.onnxruntime
def test_app_refuses_a_fifo_or_missing_input_with_one_line(image_bundle, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    for name, said in (("pipe.png", "not a regular file"), ("nowhere.png", "No such file")):
        done = _app(image_bundle, "predict", str(tmp_path / name), timeout=60)     # the old app blocked on the FIFO
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], \
            done.stderr
    (tmp_path / "junk.png").write_bytes(b"not a picture")
    done = _app(image_bundle, "predict", str(tmp_path / "junk.png"))
    assert done.returncode == 2 and "Traceback" not in done.stderr and "cannot be read" in done.stderr, done.stderr


@pytest.mark.onnxruntime
def test_app_prints_control_characters_from_labels_escaped(tmp_path):
    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    builders.tiny_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "labels.txt").write_text("\x1b]0;owned\x07cat\ndog\x1b[2J\nbird\u202e\n")
    api.package(str(tmp_path / "tiny.onnx"), str(tmp_path / "bundle"),
                PackageOptions(labels=str(tmp_path / "labels.txt"), samples=1, source=str(tmp_path / "tiny.onnx")))
    np.savez(tmp_path / "in.npz", x=np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))
    done = _app(tmp_path / "bundle", "predict", str(tmp_path / "in.npz"))
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout and "\u202e" not in done.stdout, done.stdout
    assert "\\x1b]0;owned\\x07cat" in done.stdout and "dog\\x1b[2J" in done.stdout and "bird\\u202e" in done.stdout
