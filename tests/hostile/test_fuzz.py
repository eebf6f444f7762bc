"""A short seeded run of the loader fuzzer (bench/fuzz_loaders.py): same seed, same inputs, every run.

The bounded benchmark run (10 minutes) is `python bench/fuzz_loaders.py -max_total_time=600`; what it
found became cases in corpus.py (npz flag-bit-5 members, ...).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.onnxruntime
def test_seeded_fuzz_run_finds_no_crash(tmp_path):
    pytest.importorskip("atheris")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz_loaders.py"), "-runs=4000", "-seed=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    # libFuzzer counts the seed corpus in its total, so a 4000-mutation run may end on "Done 4003 runs"
    done_runs = re.search(r"Done (\d+) runs", log)
    assert done_runs and int(done_runs.group(1)) >= 4000, log[-2000:]
    assert not list(tmp_path.iterdir()), "the fuzzer left files in the working directory"
