"""The options several commands share, as typer types (their help texts are the CLI's documentation)."""
from __future__ import annotations

from typing import List, Optional

import typer
from typing_extensions import Annotated

Json = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks and the converters' own logs.")]
Inputs = Annotated[Optional[List[str]], typer.Option(
    "--input", help="Input signature NAME:DIMS[:DTYPE[:LOW..HIGH]] or NAME:DIMS:DTYPE=VALUE, e.g. "
                    "x:1x3x224x224:float32 or ids:1x32:int64:0..1000. Repeat for several inputs. Needed when the file "
                    "does not record shapes. DTYPE=VALUE fixes an integer input (sr::int64=16000): an ONNX → TFLite "
                    "export specialises the graph to it. A name x:0 is read whole; bracket others with ':' ([a:b]:1x3).")]
Weights = Annotated[Optional[str], typer.Option(
    "--weights", help="state_dict file for a package.module:factory source (loaded with weights_only=True).")]
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow loading a fully pickled torch.save(model) file. It runs code from the file: "
                           "only for files from authors you trust.")]
Locate = Annotated[bool, typer.Option("--locate", help="Also run source and artifact once more keeping every "
                  "layer's output, match layers by their weights (name, values, or size and order) and name the first "
                  "layer outside the tolerance preset and the one where the error grows most; layout changes "
                  "(NCHW/NHWC) are undone. Sources: PyTorch (.pt2, module), ONNX, TFLite.")]
Samples = Annotated[int, typer.Option("--samples", help="Number of seeded random input samples to compare.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the first random sample (sample i uses seed+i).")]
Npz = Annotated[Optional[str], typer.Option(
    "--inputs", help=".npz with one array per input name (an extra leading axis = several samples); "
                     "compared in addition to the random samples.")]
Atol = Annotated[Optional[float], typer.Option("--atol", help="Absolute tolerance (replaces the preset's, unscaled).")]
Rtol = Annotated[Optional[float], typer.Option("--rtol", help="Relative tolerance (replaces the preset's).")]
Precision = Annotated[Optional[str], typer.Option("--precision", help="Tolerance preset: fp32, fp16 or int8 "
                                                                   "(default: fp32, or a quantized artifact's own).")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds a child process may run a model before it "
                                                          "is stopped.")]
Labels = Annotated[Optional[str], typer.Option("--labels", help="Class names, one per line, in class order "
                                               "(recorded in the model contract; makes the task classify).")]
Normalize = Annotated[Optional[str], typer.Option("--normalize", help="Image inputs: unit ([0, 1]), imagenet, "
                      "symmetric ([-1, 1]) or mean=A,B,C,std=D,E,F on [0, 1] pixels (default: as calibrated, else "
                      "unit).")]
Task = Annotated[Optional[str], typer.Option("--task", help="classify, embed or raw (default: inferred from the "
                                             "outputs, and said so in the contract).")]
Device = Annotated[str, typer.Option("--device", help="Where ONNX artifacts run for verification: cpu, cuda "
                                                      "(ONNX Runtime CUDA EP) or auto (CUDA when present).")]
Layout = Annotated[str, typer.Option("--layout", help="How the artifact's tensors are laid out: auto (its manifest, "
                                                      "else inferred from the two signatures, and said so), none "
                                                      "(the source's axis order) or channels-last (NCHW → NHWC where "
                                                      "the shapes allow).")]
ArmCpu = Annotated[Optional[str], typer.Option("--arm-cpu", help="The emulated ARM core the ARM runtimes "
                   "(litert-arm64, onnxruntime-arm64) run on: cortex-a76 (default: ARMv8.2, fp16 arithmetic, "
                   "dotprod), neoverse-n1, cortex-a53/a72/a57/a35 (ARMv8.0, no fp16 arithmetic), a64fx. Recorded "
                   "in every report.")]
# Causal LMs (a Hugging Face folder or a GGUF file as the source): the generation oracle's and the cache's options.
MaxContext = Annotated[Optional[int], typer.Option("--max-context", help="Causal LMs: the fixed context the exported "
                                                   "KV cache holds (prompt + generated tokens; default 256, or the "
                                                   "model's positions when fewer).")]
PrefillLen = Annotated[int, typer.Option("--prefill-len", help="Causal LMs: tokens per prefill call where the "
                                         "runtime needs a fixed length (LiteRT's prefill signature; longer prompts "
                                         "go in several calls, the last one padded; cut to the context).")]
Prompts = Annotated[Optional[str], typer.Option("--prompts", help="Causal LMs: a UTF-8 file of prompts, one per "
                                                "line, that source and artifact generate from (default: 8 bundled "
                                                "English and code prompts).")]
Tokens = Annotated[int, typer.Option("--tokens", help="Causal LMs: greedy tokens generated and judged per prompt.")]
Text = Annotated[Optional[str], typer.Option("--text", help="Causal LMs: the perplexity text (UTF-8; default: "
                                             "bundled public-domain passages).")]
# --to ort: how ONNX Runtime optimises the ORT-format file (onnxruntime.tools.convert_onnx_models_to_ort).
OrtStyle = Annotated[Optional[str], typer.Option("--ort-style", help="--to ort: fixed (default: optimised once, "
                     "for the CPU) or runtime (basic optimisations saved, the rest replayed at load by apps that set "
                     "session.enable_saved_runtime_optimizations; for NNAPI / Core ML, which take an unknown part "
                     "of the graph).")]
OrtPlatform = Annotated[Optional[str], typer.Option("--ort-platform", help="--to ort: arm (default: phones) or "
                        "amd64 (lets x86-only NCHWc kernels into the fixed style: the file then runs on x86 only).")]
