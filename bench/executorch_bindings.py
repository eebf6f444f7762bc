"""What ExecuTorch's Python bindings cost at cold start: the public path vs the lean one the runner uses.

    python bench/executorch_bindings.py [--repeats 3]

Each import runs in a fresh interpreter (median wall time of --repeats, and peak RSS). The public
`from executorch.runtime import Runtime` imports torch and the whole exir compiler; the runner's lean path
imports torch and the C++ extension alone (runtimes/executorch.py). Neither is paid by an app that links
ExecuTorch's C++ runtime: this is a cost of running .pte files from Python.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PATHS = {
    "public: from executorch.runtime import Runtime": "from executorch.runtime import Runtime",
    "lean: import torch; executorch.extension.pybindings._C": "import torch; from executorch.extension.pybindings import _C",
    "torch alone": "import torch",
}
PROBE = ("import resource, time; t = time.perf_counter(); {code}; "
         "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")


def measure(code: str, repeats: int) -> dict:
    seconds, peaks = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True,
                             check=True).stdout.split()
        seconds.append(float(out[-2]))
        peaks.append(int(out[-1]))
    return {"median_s": round(statistics.median(seconds), 2), "peak_rss_mib": round(max(peaks) / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {name: measure(code, args.repeats) for name, code in PATHS.items()}
    for name, result in results.items():
        print(f"{name:58s} {result['median_s']:6.2f} s  {result['peak_rss_mib']:5d} MiB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
