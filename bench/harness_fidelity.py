"""Does the bench harness distort what it measures? deploykit's median vs a bare timing loop.

For the MobileNetV2 sample as ONNX (ONNX Runtime) and TFLite (LiteRT + XNNPACK), 1 thread:
each side runs in a fresh process, alternating, several rounds; the medians of the medians
are compared. Goal: within 5 %.

    python bench/harness_fidelity.py [--rounds 3] [--iterations 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BARE_ORT = """
import sys, time, statistics, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
for _ in range(10): s.run(None, {i.name: x})
t = []
for _ in range(int(sys.argv[2])):
    a = time.perf_counter(); s.run(None, {i.name: x}); t.append((time.perf_counter() - a) * 1e3)
print(statistics.median(t))
"""

BARE_LITERT = """
import sys, time, statistics, numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
r = it.get_signature_runner()
name, d = next(iter(r.get_input_details().items()))
x = np.random.default_rng(0).standard_normal(d["shape"]).astype(np.float32)
for _ in range(10): r(**{name: x})
t = []
for _ in range(int(sys.argv[2])):
    a = time.perf_counter(); r(**{name: x}); t.append((time.perf_counter() - a) * 1e3)
print(statistics.median(t))
"""


def main() -> None:
    from deploykit import api
    from sample_models.build import build_samples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_samples(folder, ("mobilenet_v2",))
        onnx_file = api.export(str(folder / "mobilenet_v2.pt2"), "onnx", str(folder / "m.onnx")).artifact
        tflite_file = api.export(str(folder / "mobilenet_v2.pt2"), "tflite", str(folder / "m.tflite"),
                                 via="litert").artifact
        for label, path, row, bare in (("onnxruntime", onnx_file, "onnxruntime", BARE_ORT),
                                       ("litert+xnnpack", tflite_file, "litert", BARE_LITERT)):
            ours, theirs = [], []
            for _ in range(args.rounds):
                result = api.bench([path], api.BenchOptions(runtimes=(row,), iterations=args.iterations, warmup=10))
                ours.append(result["cases"][0]["latency_ms"]["p50"])
                out = subprocess.run([sys.executable, "-c", bare, path, str(args.iterations)], capture_output=True,
                                     text=True, check=True).stdout
                theirs.append(float(out.strip().splitlines()[-1]))
            a, b = statistics.median(ours), statistics.median(theirs)
            rows.append({"runtime": label, "deploykit_p50_ms": round(a, 4), "bare_loop_p50_ms": round(b, 4),
                         "difference": round((a - b) / b, 4), "rounds_deploykit": ours, "rounds_bare": theirs})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
