import pytest

from deploykit.spec import ModelSpec, TensorSpec, merge_user_specs, normalize_dtype, parse_input_arg


def test_parse_full_form():
    spec = parse_input_arg("ids:1x32:int64:0..1000")
    assert spec == TensorSpec("ids", (1, 32), "int64", value_range=(0, 1000))


def test_parse_keeps_the_models_dtype_unless_given_and_accepts_aliases():
    assert parse_input_arg("x:1x3x224x224").dtype == ""          # "": the model's own dtype is kept
    assert merge_user_specs([TensorSpec("x", ("?", 3), "int64")], (parse_input_arg("x:2x3"),))[0].dtype == "int64"
    assert merge_user_specs([TensorSpec("x", None)], (parse_input_arg("x:2x3"),))[0].dtype == "float32"
    assert parse_input_arg("x:2x4:fp16").dtype == "float16"
    assert parse_input_arg("x:scalar").shape == ()


def test_an_integer_input_is_fixed_with_equals_and_a_one_value_range_is_not():
    fixed = parse_input_arg("sr::int64=16000")
    assert fixed.fixed and fixed.value_range == (16000, 16001) and fixed.shape == ()
    assert not parse_input_arg("mask:1x8:int64:1..2").fixed      # valid test values only, nothing specialised
    spec = ModelSpec(tuple(merge_user_specs([TensorSpec("sr", (), "int64"), TensorSpec("ids", (1, 8), "int64"),
                                             TensorSpec("mask", (1, 8), "int64")],
                                            (fixed, parse_input_arg("mask:1x8:int64:1..2")))))
    assert spec.fixed_inputs == {"sr": 16000}
    assert ModelSpec.from_dict(spec.to_dict()) == spec and "sr: scalar int64 = 16000" in spec.inputs[0].describe()
    # An artifact that dropped sr lines up with the source's other inputs (ranges, layouts go to the right one).
    assert [t.name for t in spec.counterparts((TensorSpec("ids_0", (1, 8)), TensorSpec("m", (1, 8))))] == \
        ["ids", "mask"]
    assert [t.name for t in spec.counterparts((TensorSpec("sr", ()), TensorSpec("ids", (1, 8)), TensorSpec(
        "mask", (1, 8))))] == ["sr", "ids", "mask"]


@pytest.mark.parametrize("text", ["x", "x:1x-3", "x:1xx3", ":1x3", "x:1x3:complex", "x:1x3:int64:5..2",
                                  "x:1x3:int64:a..b", "x:1:2:3:4", "x:1,3",
                                  "x:1x3:int64=a", "x:1x3:float32=3"])
def test_parse_rejects_bad_forms_with_the_expected_form(text):
    with pytest.raises(ValueError) as info:
        parse_input_arg(text)
    assert "x:" in str(info.value) or "dtype" in str(info.value)


def test_normalize_dtype():
    assert normalize_dtype("LONG") == "int64"
    with pytest.raises(ValueError):
        normalize_dtype("string")


def test_model_spec_round_trips_through_dict():
    spec = ModelSpec((TensorSpec("ids", (1, "seq"), "int64", value_range=(0, 9)),),
                     (TensorSpec("output", (1, 10)),))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert not spec.inputs[0].is_static and spec.outputs[0].is_static
