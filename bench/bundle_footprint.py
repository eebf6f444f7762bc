"""What a device bundle costs next to the research environment that produced it.

For a bundle folder (`deploykit package ... -o BUNDLE`) and its source model:
  * bundle size, and the size of a fresh venv holding only the bundle's requirements.txt vs this environment;
  * cold start to the first result: `python app.py predict INPUT` in that venv (a new process each time) vs a new
    process that imports torch, loads the source (.pt2 / TorchScript) and runs it once (median of --repeats);
  * latency: median of 100 calls of the bundle's Model.run after 10 warm-up, in the runtime-only venv.

    python bench/bundle_footprint.py BUNDLE SOURCE INPUT [--repeats 5] [--json out.json]

INPUT is what `app.py predict` takes (an image for an image model, else an .npz).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def timed(command: list, cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


TORCH_ONCE = """
import sys, numpy as np, torch
path = sys.argv[1]
model = torch.export.load(path).module() if path.endswith(".pt2") else torch.jit.load(path)
inputs = np.load(sys.argv[2])
with torch.inference_mode():
    model(*[torch.from_numpy(inputs[k][:1] if inputs[k].ndim > 0 else inputs[k]) for k in inputs.files])
"""

LATENCY = """
import json, statistics, sys, time
sys.path.insert(0, ".")
import numpy as np, app
model = app.Model(app.MODEL_FILE)
with np.load("golden.npz") as golden:
    feeds = {spec["name"]: golden[f"input/0/{spec['name']}"] for spec in app.CONTRACT["inputs"]}
for _ in range(10):
    model.run(feeds)
times = []
for _ in range(100):
    started = time.perf_counter(); model.run(feeds); times.append((time.perf_counter() - started) * 1000)
print(json.dumps({"p50_ms": statistics.median(times)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("source", type=Path, help="the source model (.pt2 or TorchScript .pt)")
    parser.add_argument("input", type=Path, help="what app.py predict takes")
    parser.add_argument("--source-inputs", type=Path, help=".npz of the source's inputs (default: SOURCE's "
                        "sample NAME.inputs.npz beside it)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bundle, source = args.bundle.resolve(), args.source.resolve()
    source_inputs = (args.source_inputs or source.with_name(source.name.split(".")[0] + ".inputs.npz")).resolve()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory(prefix="bundle-venv-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                        str(bundle / "requirements.txt")], check=True)
        runtime_bytes = folder_bytes(venv)
        app_cold = [timed([python, "app.py", "predict", str(args.input.resolve())], bundle, env)
                    for _ in range(args.repeats)]
        latency = json.loads(subprocess.run([python, "-c", LATENCY], cwd=bundle, env=env, check=True,
                                            capture_output=True, text=True).stdout)
    torch_cold = [timed([sys.executable, "-c", TORCH_ONCE, str(source), str(source_inputs)], bundle, env)
                  for _ in range(args.repeats)]
    research_bytes = folder_bytes(Path(sys.prefix))
    result = {
        "bundle": str(bundle), "bundle_mb": round(folder_bytes(bundle) / 1e6, 2),
        "runtime_venv_mb": round(runtime_bytes / 1e6, 1), "research_venv_mb": round(research_bytes / 1e6, 1),
        "venv_ratio": round(research_bytes / runtime_bytes, 1),
        "cold_start_app_s": round(statistics.median(app_cold), 3),
        "cold_start_torch_s": round(statistics.median(torch_cold), 3),
        "cold_start_ratio": round(statistics.median(torch_cold) / statistics.median(app_cold), 1),
        "latency_p50_ms": round(latency["p50_ms"], 3), "repeats": args.repeats,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
