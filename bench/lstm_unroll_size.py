"""What writing a fused ONNX LSTM out as arithmetic costs, by sequence length and form (issue 27, defect 6).

    python bench/lstm_unroll_size.py [--steps 32 64 160 400] [--forms fused per-step batched] [--repeat 50]

One LSTM(40 → 256) on x [1, T, 40] (batch-first, transposed to ONNX's [T, 1, 40] as torch writes it), its last
hidden state as output [1, 256]. Each form is converted by onnx2tf in a fresh process with deploykit's flags, then
run on LiteRT with one thread:

- ``fused``: the LSTM node left to onnx2tf, with stored zero initial states: its handler builds a custom cell
  inside tf_keras.layers.RNN (onnx2tf/ops/LSTM.py), i.e. a loop, never TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM;
- ``per-step``: the unroll as it was before (commit 6999948, the 64-step cap lifted): each step projects its own
  input, four gates with their own MatMuls, 26 nodes a step;
- ``batched``: deploykit.transforms.lstm.unroll: one MatMul projects every step's input at once, only the
  recurrence is unrolled (one [H, 4H] MatMul and a Split a step, 13 nodes a step).

deploykit keeps such an LSTM fused (with stored zero states: the ``fused`` form) and unrolls only LSTMs whose initial
state is computed in the graph, which onnx2tf cannot take fused.

Prints one row per (form, T): ONNX nodes and bytes, onnx2tf seconds, .tflite bytes, TFLite ops, 1-thread latency
(best and median of --repeat) and max |difference| from ONNX Runtime on the fused source. Measured numbers:
docs/benchmarks.md and MEASURED below.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FEATURES, HIDDEN = 40, 256
BEFORE = "6999948"         # the last commit with the per-step, forward-only unroll

# Measured on the development container (x86-64, 2 cores shared with other jobs: load ~5, so onnx2tf's seconds vary
# up to 2x between runs; latency is the best of 100 with XNNPACK), onnx2tf 1.28.8, ai-edge-litert 2.3.0, this
# script's defaults. No form left a Flex op; fused → WHILE, unrolled → FULLY_CONNECTED/STRIDED_SLICE/LOGISTIC/TANH.
MEASURED = {   # (form, T): (ONNX nodes, .onnx KiB, onnx2tf s, .tflite KiB, best 1-thread ms); max |diff| ≤ 1.2e-07 all
    ("fused", 32): (3, 1193, 12.3, 1231, 0.54),
    ("per-step", 32): (825, 1263, 36.8, 1291, 1.83),
    ("batched", 32): (419, 1229, 32.5, 1265, 1.62),
    ("fused", 64): (3, 1193, 13.6, 1263, 1.32),
    ("per-step", 64): (1657, 1338, 55.8, 1394, 4.42),
    ("batched", 64): (835, 1270, 40.1, 1340, 3.55),
    ("fused", 160): (3, 1193, 10.4, 1359, 5.1),
    ("per-step", 160): (4153, 1571, 152.0, 1706, 18.0),
    ("batched", 160): (2083, 1396, 49.7, 1567, 16.49),
    ("fused", 400): (3, 1193, 4.8, 1599, 32.9),
    ("per-step", 400): (10393, 2159, 165.9, 2495, 47.59),
    ("batched", 400): (5203, 1716, 115.8, 2136, 40.89),
}

CONVERT = r"""
import json, sys, time, onnx2tf
started = time.perf_counter()
onnx2tf.convert(input_onnx_file_path=sys.argv[1], output_folder_path=sys.argv[2], not_use_onnxsim=True,
                not_use_opname_auto_generate=True, output_signaturedefs=True,
                keep_shape_absolutely_input_names=["x"], non_verbose=True)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def fused_model(steps: int):
    """x [1, T, 40] → Transpose → LSTM → Y_h reshaped to [1, 256], as torch.onnx writes nn.LSTM once onnxslim has
    folded its zero initial states into stored zeros (onnx2tf refuses the node without them: "An `initial_state`
    was passed that is not compatible with `cell.state_size`")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    scale = 1 / np.sqrt(HIDDEN)                 # torch's init range: gates neither saturate nor vanish
    weights = [numpy_helper.from_array(rng.uniform(-scale, scale, shape).astype(np.float32), name) for name, shape in
               (("W", (1, 4 * HIDDEN, FEATURES)), ("R", (1, 4 * HIDDEN, HIDDEN)), ("B", (1, 8 * HIDDEN)))]
    weights += [numpy_helper.from_array(np.array([1, HIDDEN], np.int64), "out_shape"),
                numpy_helper.from_array(np.zeros((1, 1, HIDDEN), np.float32), "zeros")]
    nodes = [helper.make_node("Transpose", ["x"], ["x_tbi"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["x_tbi", "W", "R", "B", "", "zeros", "zeros"], ["", "h_last"],
                              hidden_size=HIDDEN, name="lstm"),
             helper.make_node("Reshape", ["h_last", "out_shape"], ["y"])]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, steps,
                                                                                                      FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, HIDDEN])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def rewritten(model, form: str):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if form == "batched":
        from deploykit.transforms.lstm import unroll

        assert unroll(copy) == 1
    elif form == "per-step":
        old = _module_at(BEFORE, "deploykit/transforms/onnx_rewrites.py")
        old.MAX_STEPS = 10**6
        lstm = next(node for node in copy.graph.node if node.op_type == "LSTM")
        del lstm.input[4:]     # its zero states as absent ones: the old unroll read stored states as computed
        assert old.unroll_lstms(copy) == 1
    used = {name for node in copy.graph.node for name in node.input}
    kept = [init for init in copy.graph.initializer if init.name in used]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    return copy


def _module_at(commit: str, path: str):
    """``path`` as it was at ``commit``, imported under a private name (the benchmark's "before")."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="lstm-before-"))
    (folder / "rewrites_before.py").write_text(source)
    spec = importlib.util.spec_from_file_location("rewrites_before", folder / "rewrites_before.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(form: str, steps: int, repeat: int, folder: Path, timeout: float) -> dict:
    import onnx
    import onnxruntime as ort

    source = fused_model(steps)
    model = rewritten(source, form)
    path = folder / f"{form}_{steps}.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(1).standard_normal((1, steps, FEATURES)).astype(np.float32)
    want = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = folder / f"{form}_{steps}"
    started = time.perf_counter()
    row = {"form": form, "steps": steps, "nodes": len(model.graph.node), "onnx_bytes": path.stat().st_size}
    try:
        proc = subprocess.run([sys.executable, "-c", CONVERT, str(path), str(out)], capture_output=True, text=True,
                              cwd=folder, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"onnx2tf did not finish in {timeout} s"}
    row["convert_s"] = round(time.perf_counter() - started, 1)
    tflite = out / f"{path.stem}_float32.tflite"
    if proc.returncode or not tflite.exists():
        return {**row, "error": [line for line in proc.stderr.splitlines() if "Error" in line][-1:]}
    return {**row, **_run_tflite(tflite, x, want, repeat)}


def _run_tflite(path: Path, x, want, repeat: int) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    ops = Counter(op["op_name"] for op in interpreter._get_ops_details())
    source, = interpreter.get_input_details()
    interpreter.set_tensor(source["index"], x.reshape(source["shape"]))
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - started)
    # Best of ``repeat`` beside the median: the best is what the file costs when the machine is not shared.
    return {"tflite_bytes": path.stat().st_size, "best_ms": round(1000 * min(times), 2),
            "median_ms": round(1000 * float(np.median(times)), 2),
            "max_abs": float(np.abs(got.reshape(want.shape) - want).max()),
            "ops": dict(ops.most_common(6)), "flex": sorted(op for op in ops if op.startswith("Flex"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 64, 160, 400])
    parser.add_argument("--forms", nargs="+", default=["fused", "per-step", "batched"])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds one onnx2tf run may take")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lstm-bench-") as tmp:
        for steps in args.steps:
            for form in args.forms:
                print(json.dumps(measure(form, steps, args.repeat, Path(tmp), args.timeout)), flush=True)


if __name__ == "__main__":
    main()
