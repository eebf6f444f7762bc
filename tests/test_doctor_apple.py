"""`deploykit doctor` on the Apple routes (issue 29): each reason one of them is unavailable here — an old glibc,
a Python outside 3.11-3.14, a host without a coreai-core wheel, a missing package, Core ML's macOS-only runtime —
in the text and in --json alike. Quick: nothing is converted; the host's facts are monkeypatched."""
import json
import platform

import pytest

from deploykit import registry
from runtimes.coreai import host_problem

LINUX = ("Linux", "x86_64", ("glibc", "2.36"), ("3", "11", "7"))


def _facts(**changed) -> tuple:
    system, machine, libc, python = LINUX
    facts = {"system": system, "machine": machine, "libc": libc, "python": python, **changed}
    return facts["system"], facts["machine"], facts["libc"], facts["python"]


@pytest.mark.parametrize("changed, fragments", [
    ({"libc": ("glibc", "2.31")}, ("glibc >= 2.34", "2.31")),
    ({"python": ("3", "10", "12")}, ("Python 3.11-3.14", "Python 3.10")),
    ({"python": ("3", "15", "0a1")}, ("Python 3.11-3.14", "Python 3.15")),
    ({"machine": "aarch64"}, ("no wheel for Linux aarch64", "x86-64 Linux and macOS")),
    ({"system": "Windows", "machine": "AMD64"}, ("no wheel for Windows AMD64",)),
])
def test_each_host_reason_names_what_coreai_core_needs(changed, fragments):
    reason = host_problem(*_facts(**changed))
    assert reason and all(f in reason for f in fragments), reason


@pytest.mark.parametrize("changed", [{}, {"libc": ("glibc", "2.34")}, {"python": ("3", "14", "0")},
                                     {"system": "Darwin", "machine": "arm64", "libc": ("", "")},
                                     {"libc": ("", "")}])     # libc_ver could not tell: left to pip
def test_hosts_with_a_coreai_core_wheel_are_not_refused(changed):
    assert host_problem(*_facts(**changed)) == ""


@pytest.fixture
def host(monkeypatch):
    """Set the facts doctor reads (platform's, and which packages are importable) for one test."""
    def set_host(machine="x86_64", libc=("glibc", "2.36"), python=("3", "11", "7"), missing=()):
        monkeypatch.setattr(platform, "system", lambda: "Linux")
        monkeypatch.setattr(platform, "machine", lambda: machine)
        monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: libc)
        monkeypatch.setattr(platform, "python_version_tuple", lambda: python)
        real = registry.missing_packages
        monkeypatch.setattr(registry, "missing_packages",
                            lambda requires: [m for m in requires if m in missing or m in real(requires)])
    return set_host


def _rows() -> dict:
    from deploykit.introspect import doctor

    info = doctor()
    return info, {row["route"]: row for row in info["apple"]["routes"]}


def _hint(info: dict, kind: str, name: str) -> str:
    return next(item["hint"] for item in info[kind] if item.get("edge", item.get("runtime")) == name)


@pytest.mark.parametrize("facts, fragment", [
    ({"libc": ("glibc", "2.31")}, "glibc >= 2.34, this host has 2.31"),
    ({"python": ("3", "10", "12"), "missing": ("coreai", "coreai_torch")}, "Python 3.10"),
    ({"machine": "aarch64", "missing": ("coreai", "coreai_torch")}, "no wheel for Linux aarch64"),
])
def test_doctor_says_why_coreai_cannot_be_installed_here_instead_of_a_pip_line(host, facts, fragment):
    host(**facts)
    info, rows = _rows()
    for route in ("export --to coreai", "runtime coreai"):
        row = rows[route]
        assert not row["available"] and fragment in row["reason"], row
        # pip would fail here for the same reason: the fix is another host, not a pip line
        assert row["fix"] == registry.runtime_entry("coreai").remedy and "on such a host" in row["fix"], row
    # The table's install column agrees: no pip line that cannot work.
    assert fragment in _hint(info, "routes", "torch_to_coreai") and fragment in _hint(info, "runtimes", "coreai")
    assert any(fragment in line for line in info["apple"]["lines"])


def test_doctor_names_the_missing_apple_packages_and_the_extra(host):
    host(missing=("coreai", "coreai_torch", "coremltools"))
    info, rows = _rows()
    coreai = rows["export --to coreai"]
    assert not coreai["available"] and coreai["missing"] == ["coreai-core", "coreai-torch"], coreai
    assert "coreai-core, coreai-torch not installed" in coreai["reason"]
    assert coreai["fix"] == "pip install 'deploykit[apple]' -c constraints.txt"
    coreml = rows["export --to coreml"]
    assert not coreml["available"] and coreml["missing"] == ["coremltools"], coreml
    assert "deploykit[apple]" in _hint(info, "routes", "torch_to_coreml")


@pytest.mark.coreai
@pytest.mark.torch
def test_doctor_on_this_host_verifies_coreai_as_a_reference_runtime(host):
    host()      # this machine's kind of host: x86-64 Linux, glibc 2.36, Python 3.11, the packages installed
    _info, rows = _rows()
    for route in ("export --to coreai", "runtime coreai"):
        assert rows[route]["available"] and rows[route]["verified"] and not rows[route]["reason"], rows[route]
    assert "reference runtime" in rows["export --to coreai"]["note"]


@pytest.mark.coreml
@pytest.mark.torch
def test_doctor_keeps_a_coreml_export_unverified_on_linux(host):
    host()
    info, rows = _rows()
    export, runtime = rows["export --to coreml"], rows["runtime coreml"]
    # coremltools converts here, nothing here can run the package: available, never verified.
    assert export["available"] and not export["verified"], export
    assert "macOS" in export["note"] and "--keep-unverified" in export["note"], export
    assert _hint(info, "routes", "torch_to_coreml") == export["note"]
    assert not runtime["available"] and "macOS" in runtime["reason"], runtime


def test_doctor_json_and_text_carry_the_same_apple_facts(host, cli):
    host(libc=("glibc", "2.31"), missing=("coremltools",))
    data = json.loads(cli("doctor", "--json").stdout)
    rows = {row["route"]: row for row in data["apple"]["routes"]}
    assert set(rows) == {"export --to coreai", "export --to coreml", "runtime coreai", "runtime coreml"}
    assert "glibc >= 2.34" in rows["export --to coreai"]["reason"]
    assert rows["export --to coreml"]["missing"] == ["coremltools"]
    text = " ".join(cli("doctor").stdout.split())       # rich wraps long lines: compare words
    for line in data["apple"]["lines"]:
        assert " ".join(line.split()) in text, line
