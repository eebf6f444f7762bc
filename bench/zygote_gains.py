"""What the warm parents (deploykit/zygote.py) save: the same export made several times in one process, with the
zygotes (the default) and without them (DEPLOYKIT_ZYGOTE=0), one markdown row per target.

    python bench/zygote_gains.py SOURCE.pt2 [--to onnx tflite executorch coreai] [--repeat 3]

Each setting runs in a process of its own (a zygote lives as long as the process that started it); the first export
of a process pays the zygote's imports, the later ones are forked. Also checks that both settings wrote the same
bytes (a single-file artifact).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte", "coreai": ".aimodel", "coreml": ".mlpackage"}
# One process: export SOURCE to TARGET REPEAT times, print the seconds of each as JSON.
_ONE_PROCESS = """
import json, sys, time
from deploykit import api
source, to, folder, repeat, suffix = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
seconds = []
for index in range(repeat):
    started = time.perf_counter()
    result = api.export(source, to, f"{folder}/m{index}{suffix}", force=True)
    assert result.passed, result
    seconds.append(round(time.perf_counter() - started, 2))
print(json.dumps(seconds))
"""


def timings(source: str, to: str, repeat: int, zygotes: bool, folder: Path) -> list:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DEPLOYKIT_ZYGOTE="1" if zygotes else "0")
    done = subprocess.run([sys.executable, "-c", _ONE_PROCESS, source, to, str(folder), str(repeat), SUFFIX[to]],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("--to", nargs="+", default=["onnx", "tflite", "executorch", "coreai"], choices=list(SUFFIX))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| target | without zygotes (s, each export) | with zygotes (s, each export) | same bytes |")
    print("|---|---|---|---|")
    for to in args.to:
        with tempfile.TemporaryDirectory() as cold, tempfile.TemporaryDirectory() as warm:
            without = timings(args.source, to, args.repeat, False, Path(cold))
            with_ = timings(args.source, to, args.repeat, True, Path(warm))
            last = f"m{args.repeat - 1}{SUFFIX[to]}"
            same = "—" if (Path(cold) / last).is_dir() else \
                str((Path(cold) / last).read_bytes() == (Path(warm) / last).read_bytes()).lower()
        print(f"| {to} | {' · '.join(map(str, without))} | {' · '.join(map(str, with_))} | {same} |", flush=True)


if __name__ == "__main__":
    main()
