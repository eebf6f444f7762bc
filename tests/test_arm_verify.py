"""verify and export on the phone's CPU: the ARM runtimes (litert-arm64, onnxruntime-arm64) under qemu, beside x86.

Small models only (two_layer_net): emulation is 300-500x slower than native.
"""
import json

import pytest

from conftest import assert_clean_error

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime]


def _side_by_side(result) -> list:
    return [r for r in result.reports if any(n.startswith("x86 vs ARM") for n in r.notes)]


@pytest.mark.arm
@pytest.mark.slow
@pytest.mark.litert
def test_verify_on_both_arm_runtimes_shows_x86_and_arm_side_by_side(samples_dir, exported):
    from deploykit import api
    from deploykit.options import VerifyOptions

    tflite, onnx = exported("two_layer_net.pt2", "tflite").artifact, exported("two_layer_net.pt2").artifact
    result = api.verify(str(samples_dir / "two_layer_net.pt2"), [tflite, onnx],
                        options=VerifyOptions(runtimes=("litert-arm64", "onnxruntime-arm64")))
    assert result.passed, [r.summary() for r in result.reports]
    candidates = [r.candidate for r in result.reports]
    for native, emulated in (("litert", "litert-arm64"), ("onnxruntime", "onnxruntime-arm64")):
        # the native counterpart ran although only the ARM runtime was named, each against the source
        assert any(c.endswith(f" on {native}") for c in candidates), candidates
        assert any(c.endswith(f" on {emulated}") for c in candidates), candidates
    pairs = _side_by_side(result)
    assert len(pairs) == 2                       # one x86-vs-ARM delta per artifact
    for pair in pairs:
        assert {pair.reference.rsplit(" on ", 1)[1], pair.candidate.rsplit(" on ", 1)[1]} in (
            {"litert", "litert-arm64"}, {"onnxruntime", "onnxruntime-arm64"})
        assert max(o.max_abs for o in pair.outputs) < 1e-5      # fp32: the cores agree to rounding
        assert min(o.cosine for o in pair.outputs) > 0.99999
    data = result.to_dict()
    arm_rows = [c for c in data["comparisons"] if c["candidate"].endswith("-arm64")]
    assert len(arm_rows) == 4 and all(c["arm_cpu"] == "cortex-a76" for c in arm_rows)   # vs source + the pairs
    assert all("arm_cpu" not in c for c in data["comparisons"] if not c["candidate"].endswith("-arm64"))
    assert all(any("cortex-a76" in note for note in c["notes"]) for c in arm_rows)


@pytest.mark.arm
@pytest.mark.slow
@pytest.mark.litert
def test_arm_cpu_picks_the_core_and_the_json_records_it(samples_dir, exported, cli):
    tflite = exported("two_layer_net.pt2", "tflite").artifact
    proc = cli("verify", str(samples_dir / "two_layer_net.pt2"), tflite, "--runtime", "litert-arm64",
               "--arm-cpu", "cortex-a53", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    arm_rows = [c for c in data["comparisons"] if c.get("arm_cpu")]
    assert [c["arm_cpu"] for c in arm_rows] == ["cortex-a53", "cortex-a53"]
    assert any("cortex-a53 (ARMv8.0-A, no fp16 arithmetic)" in note for note in arm_rows[0]["notes"])
    assert any(note.startswith("x86 vs ARM") for note in arm_rows[1]["notes"])


def test_an_unknown_core_is_exit_2_before_any_work(samples_dir, cli):
    from deploykit.errors import UsageError
    from deploykit.options import VerifyOptions

    source = str(samples_dir / "two_layer_net.pt2")
    proc = cli("verify", source, "missing.tflite", "--runtime", "litert-arm64", "--arm-cpu", "cortex-a55")
    assert_clean_error(proc, 2, "unknown --arm-cpu 'cortex-a55'", "cortex-a53")   # the nearest core qemu has
    with pytest.raises(UsageError, match="unknown --arm-cpu 'pentium'"):
        VerifyOptions(runtimes=("litert-arm64",), arm_cpu="pentium")
    assert VerifyOptions(runtimes=("litert-arm64",), arm_cpu=" Cortex-A53 ").arm_cpu == "cortex-a53"


def test_arm_cpu_without_an_arm_runtime_is_exit_2(samples_dir, cli, tmp_path):
    source = str(samples_dir / "two_layer_net.pt2")
    for extra in ((), ("--runtime", "litert")):
        proc = cli("verify", source, "missing.tflite", "--arm-cpu", "cortex-a53", *extra)
        assert_clean_error(proc, 2, "--arm-cpu cortex-a53", "--runtime litert-arm64")
    proc = cli("export", source, "--to", "saved_model", "--arm-cpu", "cortex-a53", "-o", str(tmp_path / "sm"))
    assert_clean_error(proc, 2, "no emulated ARM runtime runs saved_model")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def fp16_onnx(samples_dir, tmp_path_factory):
    """two_layer_net exported with --quantize fp16 to ONNX, judged on cortex-a76: an fp16 export is judged on ARM
    when the userland is installed, so it is installed first (on a fresh machine no earlier test may have)."""
    from deploykit import api
    from deploykit.emulation import userland
    from deploykit.options import QuantizeOptions

    userland.ensure()

    out = tmp_path_factory.mktemp("fp16") / "two_layer_net.fp16.onnx"
    return api.export(str(samples_dir / "two_layer_net.pt2"), "onnx", str(out), quantize=QuantizeOptions("fp16"))


@pytest.mark.arm
@pytest.mark.slow
def test_an_fp16_export_manifest_names_the_arm_core_that_judged_it(fp16_onnx):
    from deploykit import manifest

    judged = manifest.read(fp16_onnx.artifact)["parity"]["judged_on"]
    assert judged["runtime"] == "onnxruntime-arm64" and judged["cpu"] == "cortex-a76"
    assert judged["fp16_arithmetic"] is True and judged["passed"] is True
    assert fp16_onnx.to_dict()["parity"]["judged_on"] == judged
    assert any(note.startswith("judged on onnxruntime-arm64 too (cortex-a76") for note in fp16_onnx.parity.notes)


@pytest.mark.arm
@pytest.mark.slow
def test_the_phones_fp16_fails_where_x86_passes_and_locate_runs_on_the_arm_core(samples_dir, fp16_onnx, cli):
    """At --atol 0.003 the fp16 ONNX matches on x86 (ONNX Runtime computes it in fp32 there, ~9e-4) and not on
    cortex-a76 (fp16 arithmetic, ~1.6e-2): x86 cannot stand in for the phone, and --locate runs where it failed."""
    proc = cli("verify", str(samples_dir / "two_layer_net.pt2"), fp16_onnx.artifact, "--runtime",
               "onnxruntime-arm64", "--atol", "0.003", "--rtol", "0", "--locate", "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    x86, arm, pair = data["comparisons"]
    assert x86["candidate"].endswith(" on onnxruntime") and x86["passed"]
    assert arm["candidate"].endswith(" on onnxruntime-arm64") and not arm["passed"] and arm["arm_cpu"] == "cortex-a76"
    assert not pair["passed"] and pair["notes"][-1].startswith("x86 vs ARM")
    assert max(o["max_abs"] for o in arm["outputs"]) > 5 * max(o["max_abs"] for o in x86["outputs"])
    [location] = data["locate"]
    assert location["candidate"].endswith(" on onnxruntime-arm64") and location["rows"]
    assert any(row["status"] == "fail" for row in location["rows"])
    assert any("captured on onnxruntime-arm64" in note for note in location["notes"])


@pytest.mark.arm
@pytest.mark.slow
def test_an_fp16_export_that_fails_on_the_arm_core_fails_and_publishes_nothing(samples_dir, cli, tmp_path):
    out = tmp_path / "out" / "m.onnx"
    proc = cli("export", str(samples_dir / "two_layer_net.pt2"), "--to", "onnx", "--quantize", "fp16", "--atol",
               "0.003", "--rtol", "0", "-o", str(out))
    assert_clean_error(proc, 4, "matches the source on x86 but not on onnxruntime-arm64", "cortex-a76")
    assert not (tmp_path / "out").exists()
