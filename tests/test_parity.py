import numpy as np
import pytest

from deploykit.errors import UsageError
from deploykit.parity import PRESETS, compare, permute, tolerance_for

FP32 = PRESETS["fp32"]


def _samples(n=3, shape=(4, 10), seed=0):
    rng = np.random.default_rng(seed)
    return [{"output": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def test_identical_outputs_pass_with_full_metrics():
    ref = _samples()
    report = compare(ref, [dict(r) for r in ref], FP32)
    assert report.passed
    out = report.outputs[0]
    assert out.max_abs == 0 and out.cosine == pytest.approx(1.0) and out.mismatch_fraction == 0
    assert out.top1_agreement == 1.0 and out.top5_agreement == 1.0
    assert report.to_dict()["passed"] is True


def test_small_float_noise_passes_but_a_real_difference_fails_and_names_the_samples():
    ref = _samples()
    noisy = [{"output": r["output"] + 1e-6} for r in ref]
    assert compare(ref, noisy, FP32).passed
    broken = [dict(r) for r in ref]
    broken[1] = {"output": ref[1]["output"] + 0.5}
    report = compare(ref, broken, FP32)
    assert not report.passed
    assert report.failing_samples == [1]
    assert "outside atol" in report.outputs[0].reason


def test_nan_never_matches_even_nan():
    ref = _samples(1)
    ref[0]["output"][0, 0] = np.nan
    report = compare(ref, [{"output": ref[0]["output"].copy()}], FP32)
    assert not report.passed


def test_shape_and_dtype_kind_mismatches_fail_before_values():
    ref = _samples(1)
    report = compare(ref, [{"output": ref[0]["output"][:2]}], FP32)
    assert not report.passed and "shape" in report.outputs[0].reason
    report = compare(ref, [{"output": ref[0]["output"].astype(np.int64)}], FP32)
    assert not report.passed and "dtype" in report.outputs[0].reason


def test_integer_outputs_compare_exactly():
    ref = [{"ids": np.array([1, 2, 3])}]
    assert compare(ref, [{"ids": np.array([1, 2, 3], dtype=np.int32)}], FP32).passed
    report = compare(ref, [{"ids": np.array([1, 2, 4])}], FP32)
    assert not report.passed and "integer" in report.outputs[0].reason


def test_degenerate_reference_is_uninformative_not_a_pass():
    uniform = [{"probs": np.full((1, 10), 0.1, np.float32)} for _ in range(3)]
    report = compare(uniform, [dict(u) for u in uniform], FP32)
    assert not report.passed
    assert report.outputs[0].status == "uninformative"
    zeros = [{"y": np.zeros((2, 3), np.float32)}]
    assert compare(zeros, [dict(z) for z in zeros], FP32).outputs[0].status == "uninformative"
    same_every_sample = [{"y": np.arange(6, dtype=np.float32)} for _ in range(3)]
    result = compare(same_every_sample, [dict(s) for s in same_every_sample], FP32).outputs[0]
    assert result.status == "uninformative" and "every input" in result.reason


def test_tolerance_scales_with_reference_magnitude():
    big = [{"logits": np.linspace(-500, 500, 40, dtype=np.float32).reshape(4, 10)}]
    shifted = [{"logits": big[0]["logits"] + 0.02}]
    assert compare(big, shifted, FP32).passed          # 1e-4 * 500 = 0.05 absolute budget
    assert not compare(big, shifted, tolerance_for("fp32", atol=1e-4, rtol=0)).passed


def test_custom_tolerance_is_validated():
    with pytest.raises(UsageError):
        tolerance_for("fp32", atol=-1)
    with pytest.raises(UsageError):
        tolerance_for("fp64")


def test_outputs_pair_by_position_when_names_differ_and_fail_on_count():
    ref = _samples(1)
    report = compare(ref, [{"logits": ref[0]["output"]}], FP32)
    assert report.passed and "position" in report.notes[0]
    report = compare(ref, [{"a": ref[0]["output"], "b": ref[0]["output"]}], FP32)
    assert not report.passed and "2 (a, b)" in report.problems[0]


def test_recorded_layout_permutation_is_applied():
    ref = [{"y": np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)}]
    nhwc = [{"y": np.transpose(ref[0]["y"], (0, 2, 3, 1))}]
    assert not compare(ref, nhwc, FP32).passed
    assert compare(ref, nhwc, FP32, output_perms={"y": (0, 3, 1, 2)}).passed
    assert permute({"y": ref[0]["y"]}, {"y": None})["y"] is ref[0]["y"]


@pytest.mark.parametrize("reference, candidate, passes", [
    ([np.inf, -np.inf, 1.0, 2.0], [-np.inf, np.inf, 1.0, 2.0], False),   # every sign flipped: was a PASS
    ([np.inf, np.inf, np.inf], [0.0, 0.0, 0.0], False),                   # was "0.00 % outside"
    ([np.nan, 1.0, -2.0], [np.nan, 1.0, -2.0], False),                    # NaN never matches, not even NaN
    ([0.5, 1.0, -2.0], [0.5, 1.0, np.inf], False),
    ([np.inf, 1.0, -2.0], [np.inf, 1.0, -2.0], True),                     # the same infinity is the same value
])
def test_non_finite_values_compare_by_exact_class(reference, candidate, passes):
    from deploykit.parity import PRESETS, compare

    report = compare([{"y": np.array(reference, np.float32)}], [{"y": np.array(candidate, np.float32)}],
                     PRESETS["fp32"])
    assert report.passed is passes, report.summary()
    if not passes:
        assert report.outputs[0].mismatch_fraction > 0 and report.failing_samples == [0]
        assert "non-finite values" in report.summary()
