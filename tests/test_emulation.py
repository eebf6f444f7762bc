"""The emulated ARM userland (deploykit.emulation): provisioning from an empty cache, atomic and once under
concurrency, its failures, the cores and the cpuinfo each sees, the lock against constraints.txt, doctor, and
the refusal of an emulated run that cannot end within --timeout."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, assert_clean_error
from deploykit.emulation import cores, provision, userland
from deploykit.errors import MissingDependency, ParityError, UsageError

ENSURE = "from deploykit.emulation.userland import ensure; print(ensure())"
MACHINE_CACHE = str(userland.cache_root())         # this machine's own cache, before a test empties it


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A private cache and HOME: nothing provisioned there."""
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "cache"


def _listing(cache: Path) -> list:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.arm
@pytest.mark.slow
def test_two_processes_provision_an_empty_cache_into_one_complete_copy(empty_cache, monkeypatch):
    """Real downloads into an empty cache by two processes at once: one folder, complete, nothing staged left;
    a later call is a no-op; a core's cpuinfo there is the same text as in the machine's own userland."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", ENSURE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    took = time.perf_counter() - started
    assert [p.returncode for p in procs] == [0, 0], outs
    target = userland.cache_dir()
    assert {out.strip() for out, _ in outs} == {str(target)}
    assert _listing(empty_cache) == [target.name, target.name + ".lock"]      # no staging folder left behind
    record = userland.record()
    assert record["lock"] == provision.lock_hash() and record["wheels"]["numpy"]
    assert record["wheels"] == {w["name"]: w["version"] for w in provision.lock()["wheels"]["packages"]}
    assert (target / userland.QEMU).is_file() and (target / "sysroot" / userland.PYTHON).exists()
    print(f"provisioned from empty in {took:.1f} s (the install itself {record['seconds']} s), "
          f"{userland.status()['size_bytes'] / 2**20:.0f} MiB")
    stamp = (target / provision.COMPLETE).stat().st_mtime_ns
    again = time.perf_counter()
    assert userland.ensure() == target
    assert time.perf_counter() - again < 1.0 and (target / provision.COMPLETE).stat().st_mtime_ns == stamp
    # Determinism of what each core sees: the same cpuinfo in two separately provisioned userlands.
    view = userland.core_view(target, "cortex-a76")
    monkeypatch.setenv("DEPLOYKIT_CACHE", MACHINE_CACHE)
    home_view = userland.core_view(userland.ensure(), "cortex-a76")
    assert (view / "proc" / "cpuinfo").read_text() == (home_view / "proc" / "cpuinfo").read_text()


@pytest.mark.arm
@pytest.mark.slow
def test_a_failed_provisioning_leaves_nothing_that_looks_complete(empty_cache, tmp_path, monkeypatch):
    """A lock whose sha256 does not match what the archive serves: one-line error, exit 3, no folder left."""
    bad = json.loads(provision.LOCK_FILE.read_text())
    libc = next(p for p in bad["debian"]["packages"] if p["name"] == "libc6")
    libc["sha256"] = "0" * 64
    lock = tmp_path / "arm64-lock.json"
    lock.write_text(json.dumps(bad))
    monkeypatch.setattr(provision, "LOCK_FILE", lock)
    with pytest.raises(MissingDependency) as caught:
        userland.ensure()
    assert caught.value.exit_code == 3
    line = caught.value.one_line()
    assert "libc6" in line and "sha256" in line and " — " in line and "\n" not in line
    assert not userland.ready() and not userland.cache_dir().exists()
    assert [n for n in _listing(empty_cache) if not n.endswith(".lock")] == []     # no staging folder either


def test_an_unknown_core_names_the_choices_and_the_nearest():
    with pytest.raises(UsageError) as caught:
        cores.core("cortex-a55")
    assert caught.value.exit_code == 2
    line = caught.value.one_line()
    assert "cortex-a55" in line and "nearest qemu emulates is cortex-a53" in line
    assert all(name in line for name in cores.CORES)
    with pytest.raises(UsageError) as caught:
        cores.core("cortex-z9")
    assert "nearest" not in caught.value.one_line() and "cortex-a76" in caught.value.one_line()


def test_the_max_core_is_refused_with_why():
    with pytest.raises(UsageError) as caught:
        cores.core("max")
    assert "wrong int8 results" in caught.value.message and "cortex-a76" in caught.value.remedy


@pytest.mark.parametrize("system, machine", [("Linux", "aarch64"), ("Darwin", "x86_64")])
def test_a_host_that_cannot_emulate_is_a_missing_dependency(empty_cache, monkeypatch, system, machine):
    monkeypatch.setattr(provision.platform, "system", lambda: system)
    monkeypatch.setattr(provision.platform, "machine", lambda: machine)
    assert machine in userland.unavailable_reason()
    with pytest.raises(MissingDependency) as caught:
        userland.ensure()
    assert caught.value.exit_code == 3 and "x86-64 Linux" in caught.value.one_line()
    assert not empty_cache.exists()                  # refused before anything is written


def test_no_apt_get_is_a_missing_dependency_naming_it(empty_cache, monkeypatch):
    real = provision.shutil.which
    monkeypatch.setattr(provision.shutil, "which", lambda tool: None if tool == "apt-get" else real(tool))
    with pytest.raises(MissingDependency) as caught:
        userland.ensure()
    assert "apt-get missing" in caught.value.one_line()


@pytest.mark.arm
def test_each_core_sees_a_cpuinfo_with_its_own_hwcaps():
    """The features qemu hands the guest, as the kernel would print them: fp16 arithmetic and dotprod on the
    A76, none of them on the A53 (a feature claimed but absent would end in SIGILL)."""
    root = userland.ensure()
    features = {}
    for name in ("cortex-a76", "cortex-a53"):
        text = (userland.core_view(root, name) / "proc" / "cpuinfo").read_text()
        part = cores.CORES[name].part
        assert f"CPU part\t: 0x{part:03x}" in text and text.startswith("processor\t: 0\n")
        features[name] = set(re.search(r"Features\t: (.*)", text).group(1).split())
    assert {"fphp", "asimdhp", "asimddp", "atomics"} <= features["cortex-a76"]
    assert not {"fphp", "asimdhp", "asimddp", "atomics"} & features["cortex-a53"]
    assert {"fp", "asimd"} <= features["cortex-a53"]


def test_the_hwcap_bits_name_the_kernels_features():
    assert cores.features(0b11, 0) == ["fp", "asimd"]
    assert cores.features(1 << 9 | 1 << 10 | 1 << 20, 0) == ["fphp", "asimdhp", "asimddp"]
    assert cores.features(0, 1 << 1) == ["sve2"]


def test_the_lock_pins_the_wheels_that_constraints_txt_pins():
    """A constraints bump cannot silently leave the ARM runtimes on other versions than the x86 ones."""
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split()
                if "==" in line and not line.startswith("#"))
    normal = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}
    locked = provision.lock()["wheels"]["packages"]
    assert {w["name"] for w in locked} >= set(provision.WHEELS)
    for wheel in locked:
        assert normal.get(re.sub(r"[-_.]+", "-", wheel["name"]).lower()) == wheel["version"], wheel


def test_doctor_says_how_to_install_the_userland_when_it_is_not(empty_cache):
    from deploykit.introspect import doctor

    arm = doctor()["arm64"]
    assert not arm["installed"] and arm["path"] == str(userland.cache_dir())
    assert "doctor --provision arm64" in arm["lines"][0]
    assert any(c["name"] == "cortex-a76" and c["default"] and c["fp16_arithmetic"] for c in arm["cores"])


@pytest.mark.arm
def test_doctor_shows_the_installed_userland(cli):
    userland.ensure()
    proc = cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    arm = json.loads(proc.stdout)["arm64"]
    assert arm["installed"] and arm["size_bytes"] > 50 * 2**20 and arm["drift"] == []
    assert arm["wheels"] == arm["locked"]["wheels"] and arm["qemu"] == arm["locked"]["qemu"]
    text = cli("doctor").stdout
    assert "ARM userland: installed at" in text and "cortex-a76 (default)" in text


def test_doctor_provision_of_an_unknown_component_is_refused(cli):
    assert_clean_error(cli("doctor", "--provision", "arm32"), 2, "unknown --provision 'arm32'", "arm64")


TWO_LAYER_FLOPS = 2 * 64 * (1000 * 100 + 100 * 10)      # N=64 rows through D_in=1000 → H=100 → D_out=10


@pytest.mark.slow
@pytest.mark.parametrize("to", ["onnx", "tflite"])
def test_the_estimate_counts_the_multiply_accumulates_from_the_file(exported, to):
    from deploykit.emulation.estimate import estimate
    from deploykit.formats import detect

    path = exported("two_layer_net.pt2", to).artifact
    guess = estimate(path, detect(path), 10, "cortex-a76")
    assert guess["flops"] == TWO_LAYER_FLOPS and guess["precision"] == "fp32"
    assert guess["seconds"] > estimate(path, detect(path), 1, "cortex-a76")["seconds"]


@pytest.mark.arm
@pytest.mark.slow
def test_a_run_too_slow_for_the_time_limit_is_refused_before_it_starts(exported, monkeypatch):
    from deploykit.artifact import Artifact
    from deploykit.inputs import random_feeds
    from deploykit.runner import RunnerOptions

    art = Artifact.open(exported("two_layer_net.pt2", "tflite").artifact)
    monkeypatch.setattr("deploykit.artifact.run_child", lambda *a, **k: pytest.fail("a child was started"))
    with pytest.raises(UsageError) as caught:
        art.run(random_feeds(art.spec, 4), RunnerOptions(arm_cpu="cortex-a53"), runtime="litert-arm64", timeout=1)
    line = caught.value.one_line()
    assert caught.value.exit_code == 2
    assert re.search(r"would take about \d+ s on the emulated cortex-a53 .*\(limit --timeout 1 s\) — "
                     r"raise --timeout to \d+", line), line


@pytest.mark.arm
@pytest.mark.slow
def test_an_emulated_time_out_names_the_estimate(exported, monkeypatch):
    """An estimate that said it would fit (rates made absurdly fast here) and a child that did not: the error
    says what was expected and which --timeout would do."""
    from deploykit.artifact import Artifact
    from deploykit.emulation import estimate
    from deploykit.inputs import random_feeds
    from deploykit.runner import RunnerOptions

    monkeypatch.setattr(estimate, "START_S", 0.0)
    monkeypatch.setattr(estimate, "RATES", {k: 1e15 for k in estimate.RATES})
    art = Artifact.open(exported("two_layer_net.pt2", "tflite").artifact)
    with pytest.raises(ParityError) as caught:
        art.run(random_feeds(art.spec, 1), RunnerOptions(), runtime="litert-arm64", timeout=0.5)
    line = caught.value.one_line()
    assert "did not finish within 0.5 s" in line and "estimated 1 s on the emulated cortex-a76" in line, line
    assert "raise --timeout to" in line
