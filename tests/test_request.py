"""ExportRequest: one object for every export option — its defaults, its checks, its dict form."""
from dataclasses import fields, replace

import pytest

from deploykit import api
from deploykit.contract import ContractChoices
from deploykit.conversion import ExportOptions
from deploykit.errors import EXIT_USAGE, UsageError
from deploykit.layout import Layout
from deploykit.model import LoadOptions
from deploykit.options import QuantizeOptions, VerifyOptions
from deploykit.causal_lm import LLMOptions
from deploykit.request import ExportRequest, export_defaults
from deploykit.spec import TensorSpec


def _full(tmp_path) -> ExportRequest:
    """A request with every field away from its default, nested options included."""
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    return ExportRequest(
        "model.pt2", to="ort", output="out/m.ort", force=True,
        load=LoadOptions(weights=None, trust_pickle=True, timeout=30.0,
                         input_specs=(TensorSpec("x", (1, 3, 8, 8), "float32", "NCHW", (0, 1)),
                                      TensorSpec("sr", (), "int64", value_range=(16000, 16001), fixed=True))),
        verify=VerifyOptions(samples=3, seed=7, precision="int8", atol=0.1, rtol=0.2, timeout=30.0, device="auto",
                             xnnpack=False, runtimes=("onnxruntime",), locate=True),
        opset=17, dynamic_batch=True, optimize=False, via="onnx", route="all", keep_layout=True,
        quantize=QuantizeOptions("all", calibration="images/", samples=12, normalize="imagenet", io_dtype="int8",
                                 repair=False),
        report="report/", debug=True, contract=ContractChoices(str(labels), "imagenet", "classify"),
        llm=LLMOptions(prompts="p.txt", tokens=8, max_context=64, prefill_len=16, text="t.txt", timeout=60.0),
        keep_unverified=True, ort_style="runtime", ort_platform="amd64")


def test_round_trip_keeps_every_field_and_nested_option(tmp_path):
    request = _full(tmp_path)
    assert all(getattr(request, f.name) != getattr(export_defaults(), f.name) for f in fields(ExportRequest)
               if f.name != "source")
    data = request.to_dict()
    import json

    again = ExportRequest.from_dict(json.loads(json.dumps(data)))      # through JSON, as a matrix cell gets it
    assert again == request
    assert again.contract.labels == ("cat", "dog") and again.verify.runtimes == ("onnxruntime",)
    assert ExportRequest.from_dict(ExportRequest("m.onnx").to_dict()) == ExportRequest("m.onnx")


def test_each_default_is_declared_once_on_the_request():
    request = ExportRequest("model.pt2")
    assert (request.to, request.output, request.force, request.route, request.optimize, request.quantize) == \
        ("onnx", None, False, "first", True, None)
    assert request.verify == VerifyOptions() and request.load == LoadOptions(timeout=VerifyOptions().timeout)
    # the source loads within the time its checks may take
    assert ExportRequest("m.pt2", verify=VerifyOptions(timeout=9.0)).load.timeout == 9.0
    import inspect

    signature = inspect.signature(api.export).parameters     # the API's keywords default to the same values
    assert {name: p.default for name, p in signature.items() if name != "source"} == \
        {f.name: getattr(export_defaults(), f.name) for f in fields(ExportRequest) if f.name != "source"}


@pytest.mark.parametrize("changes, fragment", [
    ({"to": "tensorrt"}, "unknown target 'tensorrt'"),
    ({"route": "best"}, "unknown --route 'best'"),
    ({"opset": 99}, "--opset 99 is outside"),
    ({"report": "out/"}, "--report on export needs --quantize all"),
])
def test_bad_values_are_usage_errors(changes, fragment):
    with pytest.raises(UsageError, match=fragment) as caught:
        ExportRequest("model.pt2", **changes)
    assert caught.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize("where, data", [
    ("'colour'", {"source": "m.pt2", "colour": "red"}),
    ("'sampels'", {"source": "m.pt2", "verify": {"sampels": 3}}),
    ("'bits'", {"source": "m.pt2", "quantize": {"mode": "int8", "bits": 4}}),
    ("'weight'", {"source": "m.pt2", "load": {"weight": "w.pt"}}),
    ("'label'", {"source": "m.pt2", "contract": {"label": "x"}}),
])
def test_from_dict_refuses_unknown_keys_naming_them(where, data):
    with pytest.raises(UsageError, match=where):
        ExportRequest.from_dict(data)


def test_from_dict_needs_a_source():
    with pytest.raises(UsageError, match="no 'source'"):
        ExportRequest.from_dict({"to": "onnx"})


def test_export_options_are_derived_from_the_request():
    request = ExportRequest("m.pt2", opset=13, verify=VerifyOptions(samples=2, timeout=5.0), keep_layout=True,
                            quantize=QuantizeOptions("int8", io_dtype="int8", repair=False))
    assert ExportOptions.from_request(request) == ExportOptions(
        opset=13, samples=2, timeout=5.0, keep_layout=True, quantize="int8", io_dtype="int8", repair=False)
    assert ExportOptions.from_request(ExportRequest("m.pt2")) == ExportOptions()


def test_export_takes_a_request_but_not_a_request_and_options():
    with pytest.raises(UsageError, match="ExportRequest and route="):
        api.export(ExportRequest("m.pt2"), route="all")
    with pytest.raises(UsageError, match="unknown target"):       # the keyword form builds the same request
        api.export("m.pt2", to="tensorrt")


def test_a_path_source_is_its_text(tmp_path):
    request = ExportRequest(tmp_path / "m.pt2", output=tmp_path / "m.onnx")
    assert request.source == str(tmp_path / "m.pt2") and request.output == str(tmp_path / "m.onnx")
    assert replace(request, to="tflite").target.value == "tflite"


# --- Layout: the recorded permutations between an artifact and its source ---

NHWC_IN = {"inputs": {"x": [0, 2, 3, 1]}, "outputs": {"y": [0, 3, 1, 2]}}


def test_layout_keeps_the_manifests_form():
    import json

    layout = Layout.from_dict(NHWC_IN)
    assert layout.input_perms == {"x": [0, 2, 3, 1]} and layout.permutes
    assert json.loads(json.dumps(layout.to_dict())) == NHWC_IN and Layout.from_dict(layout.to_dict()) == layout
    assert Layout().to_dict() == {"inputs": {}, "outputs": {}} and not Layout().permutes
    assert Layout.from_dict(None) == Layout() == Layout.from_dict({"inputs": {}})
    assert not Layout({"x": None}).permutes       # named, but in the source's layout
    assert Layout.of(NHWC_IN) == layout and Layout.of(layout) is layout and Layout.of(None) == Layout()


def test_layouts_compose_through_two_hops():
    nhwc_in = Layout.from_dict(NHWC_IN)
    assert Layout().then(nhwc_in) == nhwc_in and nhwc_in.then(Layout()) == nhwc_in
    back = Layout({"x2": [0, 3, 1, 2]}, {"y2": [0, 2, 3, 1]})
    assert nhwc_in.then(back).to_dict() == {"inputs": {"x2": [0, 1, 2, 3]}, "outputs": {"y2": [0, 1, 2, 3]}}
    renamed = Layout({"x2": None}, {"y2": None})      # a later hop that only renames keeps the perms, by position
    assert nhwc_in.then(renamed) == Layout({"x2": [0, 2, 3, 1]}, {"y2": [0, 3, 1, 2]})


def test_a_matrix_cell_ships_its_request_as_a_dict_and_the_child_rebuilds_it(tmp_path):
    import json

    from deploykit.matrix.spec import export_request

    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    options = {"inputs": ["x:1x3x8x8:float32"], "calibration_samples": 8, "io_dtype": "int8", "labels": str(labels)}
    request = export_request("m.pt2", options, "tflite", "int8", {"route": "all", "samples": 2, "seed": 3,
                                                                   "timeout": 60.0})
    assert (request.quantize.samples, request.quantize.normalize, request.verify.seed) == (8, "unit", 3)
    assert request.contract.labels == ("a", "b") and request.load.timeout == 60.0 and request.force
    assert ExportRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    assert export_request("m.pt2", {}, "onnx", "fp32").quantize is None
