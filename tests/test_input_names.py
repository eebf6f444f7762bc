"""`--input` with TensorFlow-style tensor names (``serving_default_input_2:0``): the name may hold ':'.

Was (issue 27, defect 3): the text was split on every colon, so ``serving_default_input_2:0:1x43844x1`` said
"unknown dtype '1x43844x1'" and no --input could name such a tensor.
"""
import json

import pytest

from deploykit.errors import UsageError
from deploykit.model import LoadOptions
from deploykit.spec import TensorSpec, merge_user_specs, parse_input_arg
from tests.conftest import assert_clean_error

TF_NAME = "serving_default_input_2:0"


def test_a_tensorflow_style_name_is_read_whole():
    spec = parse_input_arg(f"{TF_NAME}:1x43844x1")
    assert (spec.name, spec.shape, spec.dtype) == (TF_NAME, (1, 43844, 1), "")
    fixed = parse_input_arg("sr:0::int64=16000")
    assert (fixed.name, fixed.shape, fixed.fixed, fixed.value_range) == ("sr:0", (), True, (16000, 16001))
    assert parse_input_arg("ids:1:1x8:int64:0..100").value_range == (0, 100)


def test_a_bracketed_name_may_hold_any_colons():
    spec = parse_input_arg("[encoder:input:ids]:1x16:int64")
    assert (spec.name, spec.shape, spec.dtype) == ("encoder:input:ids", (1, 16), "int64")


def test_the_longest_known_name_wins():
    names = ["x", "x:0"]
    assert parse_input_arg("x:0:1x3", names).name == "x:0"
    assert parse_input_arg("x:1x3", names).name == "x"
    # A name that is no TensorFlow index is matched only against the model's names (or bracketed).
    assert parse_input_arg("a:b:1x3", ["a:b"]).shape == (1, 3)


@pytest.mark.parametrize("model_name, shape", [("x:0", ()), ("x", (0,))])
def test_a_text_read_two_ways_is_settled_by_the_models_names(model_name, shape):
    """``x:0:`` is x:0 as a scalar, or x with shape [0] and the model's dtype: the model's names decide, also after
    the options crossed into a loader's child process (JSON)."""
    user = parse_input_arg("x:0:")
    crossed = LoadOptions.from_dict(json.loads(json.dumps(LoadOptions(input_specs=(user,)).to_dict())))
    merged = merge_user_specs([TensorSpec(model_name, ("?",), "int32")], crossed.input_specs)
    assert (merged[0].name, merged[0].shape, merged[0].dtype) == (model_name, shape, "int32")


def test_an_unknown_name_lists_the_models_names_quoted():
    with pytest.raises(UsageError) as info:
        merge_user_specs([TensorSpec(TF_NAME, (1, 4)), TensorSpec("mask\x1b", (1, 4))],
                         (parse_input_arg("serving_default_input_3:0:1x4"),))
    assert f"the model's inputs are '{TF_NAME}', 'mask\\x1b'" in info.value.message
    assert "[name:0]:1x3" in info.value.remedy


@pytest.mark.parametrize("text, said", [
    (f"{TF_NAME}:1x4:flaot", "unknown dtype 'flaot'"),    # the dtype's fault, not a name cut at its index
    ("a:b:1x3", "bad shape 'b'"),
])
def test_a_bad_text_with_colons_says_how_to_bracket_a_name(text, said):
    with pytest.raises(ValueError) as info:
        parse_input_arg(text)
    assert said in str(info.value) and "'[name:0]:1x3'" in str(info.value)


def _tf_named_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", [TF_NAME], ["Identity:0"])], "g",
                              [helper.make_tensor_value_info(TF_NAME, TensorProto.FLOAT, ["n", "t", 1])],
                              [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["n", "t", 1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.mark.slow
@pytest.mark.onnxruntime
def test_inspect_verify_and_bench_take_a_tensorflow_style_name(cli, tmp_path):
    model = _tf_named_onnx(tmp_path / "tf_named.onnx")
    given = f"{TF_NAME}:1x437x1"
    proc = cli("inspect", model, "--input", given, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signature"]["inputs"][0]["shape"] == [1, 437, 1]
    proc = cli("verify", model, model, "--input", given, "--samples", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    proc = cli("bench", model, "--input", given, "--warmup", "1", "--iterations", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert_clean_error(cli("inspect", model, "--input", "serving_default_input_9:0:1x4"), 2,
                       f"the model's inputs are '{TF_NAME}'")


@pytest.mark.slow
@pytest.mark.onnxruntime
def test_basic_pitchs_tf2onnx_input_is_named_with_its_colon(cli):
    """Field model: Spotify's basic-pitch 0.4.0 ships its tf2onnx ONNX with the input `serving_default_input_2:0`
    and a dynamic batch; its --input pins the batch (was: exit 2, "unknown dtype '1x43844x1'")."""
    from tests.field import field_file

    source = field_file("basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx")
    proc = cli("inspect", str(source), "--input", f"{TF_NAME}:1x43844x1", "--json")
    assert proc.returncode == 0, proc.stderr
    inputs = json.loads(proc.stdout)["signature"]["inputs"]
    assert [(i["name"], i["shape"]) for i in inputs] == [(TF_NAME, [1, 43844, 1])], inputs
