"""The wheel carries every top-level package and the console script."""
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_wheel_contains_all_packages_and_the_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("deploykit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("deploykit", "converters", "runtimes", "sample_models"):
        assert f"{package}/__init__.py" in names, package
    assert "deploykit/child.py" in names and "converters/torch_to_onnx.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "deploykit = deploykit.cli:main" in entry_points
