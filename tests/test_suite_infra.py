"""The suite's own machinery: `serial` tests run alone under xdist, and the sample cache is keyed and shared."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = '''
import json, os, time
import pytest

def _record(tmp_path_factory, name):
    started = time.time()
    time.sleep(1.0)
    log = tmp_path_factory.getbasetemp().parent / f"{name}.json"   # the run's folder, shared by the workers
    log.write_text(json.dumps([started, time.time(), os.environ.get("OMP_WAIT_POLICY")]))

@pytest.mark.parametrize("n", range(4))
def test_parallel(tmp_path_factory, n):
    _record(tmp_path_factory, f"parallel{n}")

@pytest.mark.serial
@pytest.mark.parametrize("n", range(2))
def test_timed(tmp_path_factory, n):
    _record(tmp_path_factory, f"serial{n}")
'''


@pytest.mark.slow
def test_serial_tests_never_overlap_another_test_and_run_with_the_default_thread_policy(tmp_path):
    """Two workers, four 1-s parallel tests and two 1-s serial ones: the parallel ones overlap each other (so the
    run was parallel) and no serial test overlaps anything."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    base = tmp_path / "base"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                           "--maxschedchunk", "2", f"--basetemp={base}", "-c", str(ROOT / "pyproject.toml"),
                           "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = {p.stem: json.loads(p.read_text()) for p in base.glob("*.json")}
    assert len(runs) == 6, runs

    def overlap(a, b):
        return a[0] < b[1] and b[0] < a[1]

    parallel = [v for k, v in runs.items() if k.startswith("parallel")]
    assert any(overlap(a, b) for i, a in enumerate(parallel) for b in parallel[i + 1:])
    for name, serial in runs.items():
        if name.startswith("serial"):
            assert serial[2] is None, "a timing test ran with the suite's passive OpenMP policy"
            assert not any(overlap(serial, other) for key, other in runs.items() if key != name), name
    assert all(v[2] == "PASSIVE" for v in parallel)
