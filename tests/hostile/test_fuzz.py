"""A short seeded run of the loader fuzzer (bench/fuzz_loaders.py): same seed, same inputs, every run.

The bounded benchmark run (10 minutes) is `python bench/fuzz_loaders.py -max_total_time=600`; what it
found became cases in corpus.py (npz flag-bit-5 members, ...).
"""
from __future__ import annotations

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
    assert "Done 4000 runs" in log, log[-2000:]
    assert not list(tmp_path.iterdir()), "the fuzzer left files in the working directory"
