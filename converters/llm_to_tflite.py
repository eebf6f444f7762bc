"""Causal LM -> one LiteRT .tflite with "prefill" and "decode" signatures and the KV cache as tensors (child job).

litert-torch's multi-signature converter (the API its generative converter uses) traces the cached decoder
(``deploykit.transforms.cached_decoder``) twice — T = prefill_len and T = 1 — into one flatbuffer whose two
subgraphs share the weight buffers: the file holds one copy of the weights (checked on SmolLM2-135M: 0.54 GB
for 134.5 M float32 parameters). The signatures keep the contract's names (``deploykit.causal_lm``): the example
inputs go in as keyword arguments and the module returns a dict, so litert-torch names each input and output
after its key rather than ``args_0``/``output_0``. int32 tokens and positions stay int32.

``--quantize int8`` is ai-edge-quantizer's ``dynamic_wi8c_hr_afp32``, applied to the float file: every matmul's
input goes through a block Hadamard rotation (a small float FULLY_CONNECTED; the weights are rotated to match), the
weights are int8 per channel, and XNNPACK quantizes the rotated activations to int8 at run time. The rotation spreads
the few huge activation channels of a trained LM over their block, so per-tensor int8 activations keep the text.
``--quantize dynamic`` is litert-torch's generative ``full_dynamic_recipe``: the same without the rotation. The caches
stay float32 in both. On SmolLM2-135M (context 256; one thread, XNNPACK, x86; the oracle of ``deploykit export``):

    mode                          file     decode step   peak RSS   oracle
    fp32                          540 MB   ~55 ms        1.7 GB     pass, perplexity -0.00 %
    int8 (rotated, int8 compute)  142 MB   ~24 ms        0.64 GB    pass, +0.80 %, worst step cosine 0.995
    dynamic (no rotation)         141 MB   ~21 ms        0.57 GB    FAIL: step cosine 0.965 < 0.98, +5.88 %
    weight-only int8 (not used)   141 MB   ~55 ms        2.6 GB     pass, +1.13 %, worst step cosine 0.988

Weight-only int8 (litert-torch's ``full_weight_only_recipe``) is not offered: it puts a DEQUANTIZE before each
matmul; the float32 weights it yields are what XNNPACK computes with (fp32's speed, measured), and the dequantized
copies come on top of the packed ones (more memory than fp32).

No ``.litertlm`` bundle is written. ``litert_lm_builder`` 0.18.1 wraps this file and the tokenizer.json in a few
lines (litert-torch's ``litertlm_builder.build_litertlm``), but LiteRT-LM 0.18.1's engine refuses the result —
"No KV cache inputs found" (checked with ``litert-lm-api`` 0.18.1): it looks for one ``kv_cache_k_<i>`` /
``kv_cache_v_<i>`` tensor per layer, not the contract's stacked ``k_cache``/``v_cache``. A bundle that its own
runtime cannot open would be an artifact nothing verifies.
"""
from __future__ import annotations

import os
from pathlib import Path

from deploykit import causal_lm
from deploykit.errors import ConversionError, UsageError

MODES = ("fp32", "int8", "dynamic")
REMEDY = "run with --debug for litert-torch's log; try --to onnx or --to executorch"
INT8_REMEDY = "export without --quantize (fp32), or try --to onnx --quantize int8"


def convert(request: dict, arrays: dict) -> dict:
    """Child side: load the source, build the cached decoder, write one .tflite with prefill and decode."""
    del arrays      # a dynamic-range recipe needs no calibration feeds
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    mode = request.get("quantize") or "fp32"
    if mode not in MODES:
        raise UsageError(f"--quantize {mode} is not a LiteRT mode for a causal LM",
                         f"give one of {', '.join(MODES)}")
    from deploykit.transforms import cached_decoder, causal_lm_source

    loaded = causal_lm_source.load(request["source"])
    max_context = int(request["max_context"])
    prefill_len = int(request.get("prefill_len") or min(causal_lm.DEFAULT_PREFILL_LEN, max_context))
    causal_lm.check_context(max_context, prefill_len, loaded.info)
    contract = causal_lm_source.contract_for(loaded, max_context, prefill_len, mode)
    decoder = cached_decoder.build(loaded.model, max_context, request.get("fault") or "")
    _export(_named(decoder), contract, mode, request["output"])
    _check_signatures(request["output"], contract)
    notes = [f"one .tflite, signatures prefill (T={prefill_len}) and decode (T=1), context {max_context}"]
    if mode == "int8":
        notes.append("quantized with ai-edge-quantizer's Hadamard-rotated int8 recipe: int8 per-channel weights, "
                     "activations rotated and quantized to int8 at run time, float32 caches")
    if mode == "dynamic":
        notes.append("quantized with litert-torch's dynamic recipe: int8 per-channel weights, int8 activations "
                     "at run time, float32 caches")
    return {"contract": contract.to_dict(), "notes": notes, "files": []}


def _named(decoder):
    """The decoder returning a dict, so that litert-torch names the signature outputs after the contract."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, tokens, input_pos, k_cache, v_cache):
            results = self.inner(tokens, input_pos, k_cache, v_cache)
            return dict(zip(causal_lm.OUTPUTS, results))

    return Named(decoder).eval()


def _export(module, contract: causal_lm.DecoderContract, mode: str, output: str) -> None:
    """Both signatures through litert-torch, quantized when asked; a failure is one line naming the tool."""
    import litert_torch
    import torch

    from deploykit.transforms.causal_lm_source import example_inputs

    def kwargs(steps: int) -> dict:
        return dict(zip(causal_lm.INPUTS, example_inputs(contract, steps)))

    quant_config = None
    if mode == "dynamic":
        from litert_torch.generative.quantize import quant_recipes

        quant_config = quant_recipes.full_dynamic_recipe()
    # int8 is quantized after conversion: litert-torch's recipes cannot ask for ai-edge-quantizer's rotations.
    float_file = Path(output).with_name(Path(output).name + ".float") if mode == "int8" else Path(output)
    try:
        try:
            with torch.no_grad():
                converter = litert_torch.signature("prefill", module, sample_kwargs=kwargs(contract.prefill_len))
                edge = converter.signature("decode", module, sample_kwargs=kwargs(1)).convert(quant_config=quant_config)
            edge.export(str(float_file))
        except Exception as exc:  # noqa: BLE001 - litert-torch raises anything from torch.export to MLIR lowering
            raise ConversionError(f"litert-torch could not convert the cached decoder ({_first_line(exc)})",
                                  REMEDY) from None
        if mode == "int8":
            _rotated_int8(float_file, output)
    finally:
        if mode == "int8":
            float_file.unlink(missing_ok=True)


def _rotated_int8(float_file: Path, output: str) -> None:
    """``--quantize int8``: ai-edge-quantizer's ``dynamic_wi8c_hr_afp32`` on the float file, written to output."""
    from ai_edge_quantizer import quantizer, recipe

    try:
        # The quantizer memory-maps its input: the result goes to another path, never over the file it reads.
        quantizer_ = quantizer.Quantizer(str(float_file), recipe.dynamic_wi8c_hr_afp32())
        quantized = quantizer_.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model
    except Exception as exc:  # noqa: BLE001 - the quantizer raises anything from recipe checks to flatbuffer edits
        raise ConversionError(f"ai-edge-quantizer could not quantize the cached decoder to int8 "
                              f"({_first_line(exc)})", INT8_REMEDY) from None
    Path(output).write_bytes(quantized)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _check_signatures(path: str, contract: causal_lm.DecoderContract) -> None:
    """The written file keeps the contract: both entries, its input/output names, int32 tokens and positions."""
    import numpy as np
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(model_path=path)
    lengths = {"prefill": contract.prefill_len, "decode": 1}
    for entry, steps in lengths.items():
        runner = interpreter.get_signature_runner(entry)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        problem = ""
        if set(inputs) != set(causal_lm.INPUTS) or set(outputs) != set(causal_lm.OUTPUTS):
            problem = f"names {sorted(inputs)} -> {sorted(outputs)}"
        elif any(np.dtype(inputs[name]["dtype"]) != np.int32 for name in ("tokens", "input_pos")):
            problem = "tokens/input_pos are not int32"
        elif list(inputs["tokens"]["shape"]) != [1, steps] or \
                list(inputs["k_cache"]["shape"]) != list(contract.cache_shape):
            problem = f"shapes tokens {list(inputs['tokens']['shape'])}, k_cache {list(inputs['k_cache']['shape'])}"
        if problem:
            Path(path).unlink(missing_ok=True)
            raise ConversionError(f"litert-torch wrote a {entry} signature that breaks the decoder contract "
                                  f"({problem})", REMEDY)
