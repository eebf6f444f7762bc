"""Export time of the bundled samples at two commits: what the ONNX preparation pass (issue 14) costs deploykit's
own models, which need none of its steps.

    python bench/export_between_commits.py [--before REF] [--after REF] [--repeat N] [--samples DIR]

Each commit is checked out with ``git worktree`` into a temporary folder and runs ``deploykit export`` on the same
sample files (built once with the current tree's ``deploykit samples build``) in a fresh process, so a number is
what a user waits for: interpreter start, imports, conversion, and the parity check. The best of ``--repeat`` runs
is kept, the commits taking turns in A B B A order (this is a shared 2-core host; the best run is the one least disturbed). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "df4387b"          # the last commit before issue 14's first change (280161d)
CASES = (                   # (sample, target, extra flags): every route onnx_prep sits on, and one it does not
    ("two_layer_net.pt2", "onnx", ()),
    ("two_layer_net.pt2", "tflite", ("--via", "onnx")),
    ("mobilenet_v2.pt2", "tflite", ("--via", "onnx")),
    ("tiny_transformer.pt2", "tflite", ("--via", "onnx")),
    ("keras_two_layer_net.keras", "tflite", ("--via", "onnx")),
)


def _worktree(ref: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(folder), ref],
                   check=True, capture_output=True)
    return folder


def _export_seconds(tree: Path, sample: Path, target: str, flags: tuple, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "deploykit.cli.commands", "export", str(sample), "--to", target, "-o",
                           str(out), "--force", *flags], cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{tree.name}: export {sample.name} --to {target} failed:\n{proc.stderr[-1500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--samples", help="a folder made by `deploykit samples build` (else built here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deploykit-overhead-") as tmp:
        work = Path(tmp)
        samples = Path(args.samples) if args.samples else work / "samples"
        if not args.samples:
            subprocess.run([sys.executable, "-m", "deploykit.cli.commands", "samples", "build", "-o", str(samples)],
                           cwd=ROOT, check=True, capture_output=True)
        trees = {}
        try:
            for index, ref in enumerate((args.before, args.after)):
                trees[ref] = _worktree(ref, work / f"tree-{index}")
            rows = []
            for sample, target, flags in CASES:
                times = {ref: [] for ref in trees}
                for turn in range(args.repeat):        # A B B A …: a slow spell, or the run just before, hits both
                    for ref, tree in list(trees.items())[::(-1) ** turn]:
                        times[ref].append(_export_seconds(tree, samples / sample, target, flags, work / f"out.{target}"))
                best = {ref: min(values) for ref, values in times.items()}
                rows.append((sample, target, " ".join(flags), best[args.before], best[args.after]))
                print(f"{sample} → {target}: {best[args.before]:.1f} s → {best[args.after]:.1f} s", file=sys.stderr)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
                shutil.rmtree(tree, ignore_errors=True)
    print(f"| sample | target | flags | {args.before} (s) | {args.after} (s) | change |")
    print("|---|---|---|---|---|---|")
    for sample, target, flags, before, after in rows:
        print(f"| {sample} | {target} | {flags} | {before:.1f} | {after:.1f} | {after / before - 1:+.0%} |")


if __name__ == "__main__":
    main()
