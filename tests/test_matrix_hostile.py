"""`deploykit matrix` against hostile input (issue 26): specs that bomb or carry absurd numbers, stores with planted
links or that the cells cannot share, and stored records that are tampered or stale — refused, or rerun with the
reason, never exit 5."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from deploykit.errors import UsageError
from deploykit.matrix import keys as matrix_keys
from deploykit.matrix.run import run_matrix
from deploykit.matrix.spec import load_spec
from deploykit.matrix.store import open_store
from tests.test_matrix import _onnx, _refused_naming, _spec

pytestmark = pytest.mark.onnxruntime


# --- hostile specs (issue 26): bombs, absurd numbers -----------------------------------------------------------

BILLION_LAUGHS = ("matrix:\n  targets:\n    - &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
                  + "".join(f"    - &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
                  + "models: [{path: a.onnx}]\n")


def test_a_yaml_alias_bomb_is_refused_before_it_expands_with_small_memory(tmp_path):
    """9 nested aliases of 9 (a 470-byte spec) expand to 9**9 strings: refused while the node graph is still
    small. Measured in a child: its peak RSS stays that of an interpreter with deploykit imported."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    _onnx(tmp_path / "a.onnx")
    spec = _spec(tmp_path, BILLION_LAUGHS, "bomb.yaml")
    assert spec.stat().st_size < 500
    code = ("import resource, sys\nfrom deploykit.errors import UsageError\nfrom deploykit.matrix.spec import load_spec\n"
            "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"     # a regression dies, not the machine
            f"try:\n    load_spec({str(spec)!r})\nexcept UsageError as exc:\n    print(exc.message)\n"
            # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of a 2 GB pytest worker reported
            # the worker's peak; VmHWM belongs to the child's own address space.
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")   # KiB
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    message, peak_kib = proc.stdout.strip().splitlines()
    assert "aliases would repeat over 100,000" in message, proc.stderr
    assert int(peak_kib) < 300 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"


def test_yaml_aliases_within_the_budget_still_share_options(tmp_path):
    _onnx(tmp_path / "a.onnx")
    spec = load_spec(str(_spec(tmp_path, "matrix: {targets: [onnx]}\nmodels:\n  - &first {path: a.onnx, inputs: ['x:1x4']}\n"
                                         "  - {<<: *first, name: b}\n", "zoo.yaml")))
    assert [m.options["inputs"] for m in spec.models] == [["x:1x4"], ["x:1x4"]]


@pytest.mark.parametrize("text, fragment", [
    ("matrix: {targets: [onnx], x: &a [*a]}\nmodels: [{path: a.onnx}]\n", "refers to a node that contains it"),
    ("matrix: " + "[" * 5000 + "]" * 5000 + "\n", "nests lists or mappings too deeply"),
    ("matrix: {targets: [onnx], 1: x}\nmodels: [{path: a.onnx}]\n", "unknown [matrix] key 1"),
    ("matrix: {targets: [onnx]}\nmodels: [{factory: 5}]\n", "factory must be a string"),
    ("matrix: {targets: [onnx]}\nmodels: [{path: a.onnx, name: [1]}]\n", "name must be a string"),
    ("matrix: {targets: [onnx]}\nmodels: [{path: a.onnx, task: [[1]]}]\n", "task must be a string"),
    ("matrix: {targets: [onnx]}\nmodels: [{path: a.onnx, normalize: [x]}]\n", "normalize must be a string"),
])
def test_hostile_yaml_shapes_are_usage_errors(tmp_path, text, fragment):
    _refused_naming(tmp_path, text, fragment, "zoo.yaml")


def test_a_deep_toml_and_a_huge_spec_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="nests arrays or tables too deeply"):
        load_spec(str(_spec(tmp_path, "a = " + "[" * 100_000)))
    big = tmp_path / "big.toml"
    with open(big, "wb") as handle:         # sparse: 4 GiB that must never be read
        handle.truncate(4 * 2**30)
    with pytest.raises(UsageError, match="over 1 MiB"):
        load_spec(str(big))


def test_deep_specs_are_refused_even_where_a_library_raised_the_recursion_limit(tmp_path):
    """Importing onnx2tf sets the process's recursion limit to 2**31 - 1, and the API's caller may have imported it:
    the spec is still parsed under the default limit (before: 1,000 nested arrays parsed under a raised limit and
    the spec failed later for another reason; far deeper, the C stack overflows)."""
    import sys

    deep_toml = _spec(tmp_path, "a = " + "[" * 1000 + "]" * 1000)
    deep_yaml = tmp_path / "zoo.yaml"
    deep_yaml.write_text("matrix: " + "[" * 1000 + "]" * 1000 + "\n")
    real = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)          # raised, as a library may leave it (20,000 frames are safe here)
    try:
        with pytest.raises(UsageError, match="nests arrays or tables too deeply"):
            load_spec(str(deep_toml))
        with pytest.raises(UsageError, match="nests lists or mappings too deeply"):
            load_spec(str(deep_yaml))
        assert sys.getrecursionlimit() == 20_000        # the caller's limit is given back
    finally:
        sys.setrecursionlimit(real)


@pytest.mark.parametrize("line, fragment", [
    ("retries = 100000000000000000000", "retries must be between 0 and 10"),     # a crash retried ~forever
    ("retries = 1e20", "retries must be an integer"),
    ("retries = -1", "retries must be between 0 and 10"),
    ("retries = true", "retries must be an integer"),
    ("timeout = 1e300", "timeout must be between 0.001 and 604,800"),            # overflows the harness's clock
    ("timeout = nan", "timeout must be between"),
    ("timeout = -inf", "timeout must be between"),
    ("samples = 10000000000", "samples must be between 1 and 10,000"),
    ("samples = 5.0", "samples must be an integer"),
    ("seed = 4294967296", "seed must be between 0 and 4,294,967,295"),
    ("iterations = 0", "iterations must be between 1 and 1,000,000"),
    ("warmup = 2.5", "warmup must be an integer"),
    ("memory_mb = 9223372036854775807", "memory_mb must be between 1 and 4,194,304"),
    ("name = 7", "name must be a string"),
])
def test_every_number_of_a_spec_has_a_documented_range(tmp_path, line, fragment):
    _onnx(tmp_path / "a.onnx")
    with pytest.raises(UsageError) as caught:
        load_spec(str(_spec(tmp_path, f'[matrix]\ntargets = ["onnx"]\n{line}\n[[models]]\npath = "a.onnx"\n')))
    assert fragment in caught.value.message and caught.value.remedy.startswith("e.g.")
    with pytest.raises(UsageError, match="calibration_samples must be between 1 and 100,000"):
        load_spec(str(_spec(tmp_path, '[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\n'
                                      'calibration_samples = -3\n', "cal.toml")))


# --- hostile stores and records (issue 26) ---------------------------------------------------------------------

def _stored_cell(store_root: Path, key: str = "k" * 24, **changes) -> tuple:
    """A store holding one passed cell as a run leaves it (artifact + manifest + record with their sha256)."""
    store = open_store(str(store_root))
    made = store_root.parent / "made"
    made.mkdir(exist_ok=True)
    _onnx(made / "a.onnx")
    (made / "a.onnx.deploykit.json").write_text("{}")
    references = store.put_artifacts(made, key)
    record = {"key": key, "status": "passed", "verdict": None, "metrics": {"cosine": 1.0},
              "artifact": references["a.onnx"], "artifact_sha256": store.digest(references["a.onnx"]),
              "manifest": references["a.onnx.deploykit.json"],
              "manifest_sha256": store.digest(references["a.onnx.deploykit.json"])}
    store.save_cell({**record, **changes})
    return store, key


def test_a_stored_record_is_reused_only_while_its_artifact_is_unchanged(tmp_path):
    store, key = _stored_cell(tmp_path / "out")
    assert matrix_keys.reusable(store, key)[0]["status"] == "passed"
    assert store.digest(store.url(f"artifacts/{key}/a.onnx")) == hashlib.sha256(
        (tmp_path / "made" / "a.onnx").read_bytes()).hexdigest()          # a lone file's digest is its sha256
    artifact = tmp_path / "out" / "artifacts" / key / "a.onnx"
    artifact.write_bytes(artifact.read_bytes()[:-1])                        # truncated by one byte
    assert matrix_keys.reusable(store, key) == (None, "its artifact changed (or went missing) since the record was written")
    artifact.unlink()
    assert "went missing" in matrix_keys.reusable(store, key)[1]


@pytest.mark.parametrize("changes, why", [
    ({"status": ["passed"]}, "no known status"),
    ({"status": "weird"}, "no known status"),
    ({"verdict": 7}, "verdict is not what deploykit writes"),
    ({"metrics": "x"}, "metrics is not what deploykit writes"),
    ({"metrics": {"cosine": "1"}}, "metrics are not numbers"),
    ({"metrics": {"cosine": float("nan")}}, "metrics are not numbers"),
    ({"metrics": {"delegated": ["<b>"]}}, "metrics are not the text deploykit writes"),
    ({"metrics": {"predicted": "GPU delegate: YES"}}, "metrics are not the text deploykit writes"),
    ({"attempts": True}, "attempts is not what deploykit writes"),
    ({"artifact": "/etc/passwd"}, "artifact is not in its own artifacts/"),
    ({"artifact": None}, "passed without naming its artifact"),
    ({"manifest_sha256": "0" * 64}, "manifest changed"),
    ({"artifact_sha256": None}, "holds no sha256 of its artifact"),
])
def test_a_tampered_record_is_not_reused_and_says_why(tmp_path, changes, why):
    store, key = _stored_cell(tmp_path / "out", **changes)
    record, reason = matrix_keys.reusable(store, key)
    assert record is None and why in reason


def test_a_record_naming_a_place_outside_its_folder_is_not_reused(tmp_path):
    """The right bytes (their sha256 is true) in the wrong place: only the place can refuse it."""
    outside = _onnx(tmp_path / "outside.onnx")
    sha = hashlib.sha256(outside.read_bytes()).hexdigest()
    for reference in (f"{tmp_path}/out/artifacts/{'k' * 24}/../../../outside.onnx", str(outside),
                      f"{tmp_path}/out/artifacts/{'o' * 24}/a.onnx", f"{tmp_path}/out/cells/x/../../outside.onnx"):
        store, key = _stored_cell(tmp_path / "out", artifact=reference, artifact_sha256=sha)
        assert "not in its own artifacts/" in matrix_keys.reusable(store, key)[1], reference


def test_records_that_are_not_json_objects_of_their_key_count_as_absent(tmp_path):
    store = open_store(str(tmp_path / "out"))
    for text, why in (("{half", "not JSON"), ("[1, 2]", "not a JSON object"), ('{"key": "other"}', "naming its own key"),
                      ("[" * 100_000 + "]" * 100_000, "not JSON")):
        (tmp_path / "out" / "cells").mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / "cells" / "k.json").write_text(text)
        assert store.stored("k")[0] is None and why in store.stored("k")[1]
    (tmp_path / "out" / "cells" / "k.json").unlink()
    os.mkfifo(tmp_path / "out" / "cells" / "k.json")           # never opened for a blocking read
    assert store.stored("k") == (None, None)


def test_no_store_write_or_read_follows_a_link_even_past_the_upfront_check(tmp_path):
    """A link swapped in after run_matrix's check: the store's own reads and writes still refuse it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.json").write_text('{"key": "k", "status": "passed"}')
    root = tmp_path / "out"
    (root / "artifacts").mkdir(parents=True)
    (root / "cells").symlink_to(victim)
    store = open_store(str(root))
    with pytest.raises(UsageError, match="is a link or not a folder"):
        store.write_text("cells/k.json", "{}")
    assert store.read_text("cells/secret.json") is None and sorted(os.listdir(victim)) == ["secret.json"]
    (root / "artifacts" / "k").symlink_to(victim)              # a link at the cell's artifact folder: replaced as a name
    (tmp_path / "made").mkdir()
    _onnx(tmp_path / "made" / "a.onnx")
    store.put_artifacts(tmp_path / "made", "k")
    assert not (root / "artifacts" / "k").is_symlink() and (root / "artifacts" / "k" / "a.onnx").is_file()
    assert sorted(os.listdir(victim)) == ["secret.json"] and sorted(os.listdir(root / "artifacts")) == ["k"]
    (root / "running").mkdir()
    (root / "running" / "k.convert.pid").symlink_to(victim / "secret.json")
    store.write_text("running/k.convert.pid", "1\n")          # the pid file: the link replaced, its target untouched
    assert (victim / "secret.json").read_text().startswith('{"key"')


def test_run_matrix_refuses_a_store_with_a_planted_link_before_writing(tmp_path):
    _onnx(tmp_path / "a.onnx")
    spec = _spec(tmp_path, '[matrix]\ntargets = ["onnx"]\n[[models]]\npath = "a.onnx"\n')
    (tmp_path / "victim").mkdir()
    (tmp_path / "out" / "artifacts").mkdir(parents=True)
    (tmp_path / "out" / "artifacts" / "0123").symlink_to(tmp_path / "victim")
    with pytest.raises(UsageError, match=r"holds artifacts/0123, a link"):
        run_matrix(str(spec), str(tmp_path / "out"))
    assert not list((tmp_path / "victim").iterdir()) and sorted(os.listdir(tmp_path / "out")) == ["artifacts"]


@pytest.mark.parametrize("location, fragment", [
    ("memory://zoo", "memory:// storage lives inside one process"),
    ("simplecache::memory://zoo", "memory:// storage lives inside one process"),
    ("https://example.com/zoo", "https:// storage cannot be written"),
])
def test_stores_the_cells_cannot_share_are_refused(location, fragment):
    with pytest.raises(UsageError) as caught:
        open_store(location)
    assert fragment in caught.value.message and "file:///shared/zoo" in caught.value.remedy


def test_the_report_of_a_reused_record_with_odd_nested_shapes_is_written(tmp_path):
    from deploykit.matrix.report import cell_page, grid_page

    cell = {"key": "k", "model": "<b>$\\alpha$</b>", "target": "onnx", "precision": "fp32", "status": "failed",
            "verdict": "[/]", "rerun_because": "its artifact changed", "export": {"routes": [1, "x"], "parity": []},
            "verify": {"comparisons": "abc"}, "bench": {"cases": [{"latency_ms": [1]}, 2]}}
    page = cell_page(cell)
    assert "&lt;b&gt;$\\alpha$&lt;/b&gt;" in page and "<b>$" not in page and "its artifact changed" in page
    grid = grid_page({"name": "z", "cells": [cell], "summary_line": "", "seconds": 0, "spec": "s"})
    assert "rerun: its artifact changed" in grid
