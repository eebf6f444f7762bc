"""Route planning and layout bookkeeping (no framework needed)."""
import pytest

from deploykit import registry

from deploykit.exporting import routing
from deploykit.exporting.pipeline import _permuted_label
from deploykit.errors import UsageError
from deploykit.formats import Format


def test_torch_to_tflite_has_the_direct_route_first_then_via_onnx():
    names = [[e.name for e in r] for r in registry.plan(Format.EXPORTED_PROGRAM, Format.TFLITE)]
    assert names[0] == ["torch_to_tflite"]
    assert ["torch_to_onnx", "onnx_to_tflite"] in names


def test_torchscript_goes_to_tflite_only_through_onnx():
    names = [[e.name for e in r] for r in registry.plan(Format.TORCHSCRIPT, Format.TFLITE)]
    assert names == [["torch_to_onnx", "onnx_to_tflite"]]


def test_every_source_reaches_every_target_it_should():
    for src in (Format.KERAS, Format.KERAS_H5, Format.SAVED_MODEL):
        for dst in (Format.TFLITE, Format.ONNX):
            assert registry.plan(src, dst), (src, dst)
    assert registry.plan(Format.KERAS, Format.SAVED_MODEL)
    assert registry.plan(Format.ONNX, Format.TFLITE) and registry.plan(Format.ONNX, Format.SAVED_MODEL)
    assert registry.plan(Format.TFLITE, Format.ONNX)


def test_via_filters_by_tool_or_intermediate_format_and_explains_choices():
    litert = routing.select_routes(Format.EXPORTED_PROGRAM, Format.TFLITE, "litert")
    assert [[e.name for e in r] for r in litert] == [["torch_to_tflite"]]
    onnx = routing.select_routes(Format.EXPORTED_PROGRAM, Format.TFLITE, "onnx")
    assert [[e.name for e in r] for r in onnx] == [["torch_to_onnx", "onnx_to_tflite"]]
    with pytest.raises(UsageError, match="goes via 'litert'") as info:
        routing.select_routes(Format.TORCHSCRIPT, Format.TFLITE, "litert")
    assert "use --via one of" in info.value.remedy
    with pytest.raises(UsageError, match="already onnx"):
        routing.select_routes(Format.ONNX, Format.ONNX, None)


def test_layout_labels_follow_the_permutation():
    assert _permuted_label("NCHW", [0, 2, 3, 1], "inputs") == "NHWC"
    assert _permuted_label("NCHW", [0, 3, 1, 2], "outputs") == "NHWC"
    assert _permuted_label("NC", [0, 2, 3, 1], "inputs") == "NC"
