"""Runs the hostile corpus (corpus.py) through the real CLI entry point and checks how each case ends.

Cases run in this process (``deploykit.cli.commands.main``, fd-level capture) so that the corpus stays in the quick
loop; a case that must own its process (it leaves a thread spinning, needs a ulimit, or proves what a
child process sees) runs as ``python -m deploykit.cli.commands``.
"""
from __future__ import annotations

import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.hostile.builders import MARKER
from tests.hostile.corpus import CASES

ROOT = Path(__file__).resolve().parents[2]


def _params():
    for case in CASES:
        marks = [getattr(pytest.mark, need) for need in case.needs] + ([pytest.mark.slow] if case.slow else [])
        yield pytest.param(case, id=case.name, marks=marks)


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` -> sha256 of its content ("dir" for folders, "special" for FIFOs)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            found[key] = "dir"
        elif path.is_file():
            found[key] = _digest(path)
        else:
            found[key] = "special"
    return found


def _digest(path: Path) -> str:
    """sha256 of a file; of its size and first and last MiB when it is huge (a sparse 12 GB case file)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size <= 64 * 1024**2:
            return hashlib.sha256(handle.read()).hexdigest()
        head = handle.read(1024**2)
        handle.seek(size - 1024**2)
        return hashlib.sha256(str(size).encode() + head + handle.read()).hexdigest()


def run_in_process(args: list, capfd, monkeypatch) -> tuple:
    from deploykit.cli import commands as cli

    monkeypatch.setattr(sys, "argv", ["deploykit", *args])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    out, err = capfd.readouterr()
    return code, out, err


def run_as_process(args: list, work: Path, env: dict, file_limit_kb: int) -> tuple:
    def limit():
        if file_limit_kb:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit_kb * 1024, file_limit_kb * 1024))

    env = dict(env, PYTHONPATH=str(ROOT))
    # -P: like the `deploykit` console script, whose sys.path[0] is its bin folder, never the working directory
    # (`python -m` alone would import a `runtimes/` from the cwd in the parent, which no user command does).
    done = subprocess.run([sys.executable, "-P", "-m", "deploykit.cli.commands", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("case", _params())
def test_hostile_case(case, tmp_path, capfd, monkeypatch):
    work, private_tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    private_tmp.mkdir()
    args = case.build(work)
    before = snapshot(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)      # re-read TMPDIR
    if case.process:
        code, out, err = run_as_process(args, work, dict(os.environ), case.ulimit_file_kb)
    else:
        code, out, err = run_in_process(args, capfd, monkeypatch)

    shown = f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-3000:]}"
    assert code == case.code, shown
    assert "Traceback" not in out + err, shown
    if code == 1 and not err.strip():      # a verdict (verification failed), not an error: stdout says why
        assert re.search(case.message, out), shown
    elif code:
        errors = [line for line in err.splitlines() if line.strip()]     # nothing but the one line: no warnings
        assert len(errors) == 1 and errors[0].startswith("error: ") and re.search(case.message, errors[0]), shown
        assert " — " in errors[0], "an error line names the fix after ' — '\n" + shown
    else:
        assert re.search(case.message, out), shown
    assert "\x1b" not in out + err, "a control character from a model file reached the terminal"
    assert not (work / MARKER).exists() and not (tmp_path / MARKER).exists(), "a payload ran"
    after = snapshot(work)
    changed = [k for k in before if after.get(k) != before[k]]
    added = [k for k in after if k not in before and k not in case.creates]
    assert not changed, f"user files changed or removed: {changed}"
    assert not added, f"left behind: {added}"
    assert not list(private_tmp.iterdir()), f"left in $TMPDIR: {list(private_tmp.iterdir())}"


def test_corpus_covers_every_defect_class_with_sixty_cases():
    kinds = {case.kind for case in CASES}
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)
    assert {str(n) for n in range(1, 13)} - {"9", "10"} <= kinds   # 9 (SIGTERM), 10 (races): tests/test_child.py,
    # tests/test_outputs.py drive real signals and concurrent exports
