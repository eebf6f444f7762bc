"""What `verify --locate` costs over a plain `verify`: wall time, and how many model runs.

    python bench/locate_overhead.py SOURCE ARTIFACT [ARTIFACT ...] [--inputs data.npz] [--input SPEC ...]
           [--repeat 3]

Runs `deploykit.verify` in this process with and without `locate` (best of --repeat each, alternating), and
counts the runs: a plain verify runs the source and the artifact once per sample; --locate adds one capture run of
each per sample (the layer outputs of every sample in one more child for the artifact, and one more pass of the
source). Prints the layer counts and the times.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--inputs", default=None, help="an .npz of real inputs (then only those are compared)")
    parser.add_argument("--input", action="append", default=[], help="--input NAME:DIMS:DTYPE[:LOW..HIGH]")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from deploykit import api

    load = api.load_options(args.input)
    timings = {False: [], True: []}
    located = None
    for _ in range(args.repeat):
        for locate in (False, True):
            options = api.VerifyOptions(samples=0 if args.inputs else 5, inputs_npz=args.inputs, locate=locate)
            started = time.perf_counter()
            result = api.verify(args.source, args.artifacts, load=load, options=options)
            timings[locate].append(time.perf_counter() - started)
            located = result.locations or located
    plain, with_locate = min(timings[False]), min(timings[True])
    for location in located:
        print(f"{location.candidate}: {len(location.rows)} layers, {location.matched} matched, "
              f"{location.samples} sample(s)")
    print(f"verify: {plain:.2f} s; verify --locate: {with_locate:.2f} s (+{with_locate - plain:.2f} s, "
          f"{with_locate / plain:.2f}x); best of {args.repeat}")


if __name__ == "__main__":
    main()
