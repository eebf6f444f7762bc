"""Causal LM -> one ExecuTorch program (.pte) with the KV cache as explicit tensors, lowered to XNNPACK (child job).

The program has ONE method, ``forward``, with the token count T dynamic (``tokens[1, T]``, ``input_pos[T]``, T up to
the context; the caches fixed): prefill takes the whole prompt in one call (contract ``prefill_len=None``) and
decode is the same method with T = 1. Two static methods ("prefill" at a fixed length + "decode") were tried too:
ExecuTorch stores the weights once for both (SmolLM2 with 2 layers: 255.01 MB against 254.98 MB), but the prompt
would have to be padded or chunked, and the dynamic method runs as fast once its graph is shaped for XNNPACK.

That shaping is this module's own: ``cached_decoder.build`` gives the decoder every runtime exports, and XNNPACK
takes only part of it once T is symbolic — the GQA ``expand`` of the cache, ``k_cache[i]`` selects, rank-3
``mean``, ``masked_fill``, reshapes with a computed size and slices of a dynamic tensor stay on ExecuTorch's
portable kernels. On SmolLM2-135M that left 1154 portable ops between 363 delegate fragments (a decode step 196 ms
by ExecuTorch's own profiler, lowering 12.5 min, on this loaded 2-core machine). ``_xnnpack_class`` computes the
same function (the source's weights and rotary tables, the same cache rule and planted faults; SmolLM2's logits
identical in eager, 7.6e-5 from the generic decoder as a .pte) with ops XNNPACK takes — heads grouped on the query
side instead of expanding the cache, the cache written by a batched one-hot matmul, rotate-half as a matmul with a
signed permutation, RMSNorm's mean as XNNPACK's 4-D global average, one additive mask, the layers' caches stacked
by a tree of 5-way cats — so all layers land in one delegate (two when the lm_head shares the embedding's matrix)
and only per-call bookkeeping (token lookup, rotary rows, mask, one-hot) stays outside: 115 ms a step in the same
conditions, 58 ms (fp32) and 20 ms (8da4w) on a quieter machine, one thread; the PyTorch decoder 77 ms.

``8da4w`` is ExecuTorch's own LLM recipe (examples/models/llama, ``--qmode 8da4w``): torchao's
``Int8DynamicActivationIntxWeightConfig`` — int4 weights in groups of 32 (SmolLM2's width 576 is no multiple of
ExecuTorch's default 128), int8 activations quantized per token at run time — on every linear layer, the lm_head
included; XNNPACK runs them as dynamically quantized fully-connected ops. The embedding stays float32 (ExecuTorch's
4-bit embedding needs its quantized kernel library linked into the runtime).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from deploykit import causal_lm
from deploykit.errors import ConversionError, UsageError
from deploykit.quiet import captured_output

MODES = ("fp32", "8da4w")
GROUP_SIZE = 32                     # int4 weight groups; GGUF's Q4 blocks are 32 as well
METHOD = "forward"
REMEDY = "run with --debug for exir's log; try --to onnx or --to tflite"


def convert(request: dict, arrays: dict) -> dict:
    """Child side: load the source, shape the cached decoder for XNNPACK, quantize if asked, lower, write the .pte."""
    del arrays          # 8da4w quantizes activations at run time: no calibration feeds
    mode = request.get("quantize") or "fp32"
    if mode not in MODES:
        raise UsageError(f"--quantize {mode} is not an ExecuTorch mode for a causal LM",
                         f"give one of {', '.join(MODES)}")
    from deploykit.transforms import cached_decoder, causal_lm_source

    loaded = causal_lm_source.load(request["source"])
    max_context = int(request["max_context"])
    causal_lm.check_context(max_context, None, loaded.info)
    contract = dataclasses.replace(causal_lm_source.contract_for(loaded, max_context, None, mode),
                                   entry_points={"prefill": METHOD, "decode": METHOD})
    # quantize_ swaps the linear layers' weights in place: the child's cached source model must stay float.
    model = loaded.model if mode == "fp32" else copy.deepcopy(loaded.model)
    decoder = xnnpack_shaped(cached_decoder.build(model, max_context, request.get("fault") or ""))
    notes = [(f"one ExecuTorch method '{METHOD}' for prefill (any length up to {max_context}) and decode (T=1), "
              f"context {max_context}")]
    if mode == "8da4w":
        notes.append(_quantize(decoder))
    elif _tied(model):
        size = model.lm_head.weight.numel() * 4 / 1e6
        notes.append(f"the tied embedding/lm_head matrix is stored twice ({size:.0f} MB more): the token lookup "
                     "reads it on a portable kernel, XNNPACK packs its own copy for the lm_head")
    program = _export(decoder, contract)
    notes.append(_lower_and_write(program, Path(request["output"])))
    return {"contract": contract.to_dict(), "notes": notes, "files": []}


def xnnpack_shaped(decoder):
    """The cached decoder ``decoder`` (``cached_decoder.build``) recomputed with ops XNNPACK delegates whole when
    the token count is dynamic; it shares ``decoder``'s weights and tables and keeps its planted fault."""
    import torch

    return _xnnpack_class(torch)(decoder).eval()


def _xnnpack_class(torch):
    nn = torch.nn
    from deploykit.transforms.cached_decoder import FAULT_FROM

    class XnnpackDecoder(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.inner, self.lm_head = base.inner, base.lm_head
            self.heads, self.kv_heads, self.head_dim = base.heads, base.kv_heads, base.head_dim
            self.eps, self.context, self.fault = base.eps, base.context, base.fault
            self.register_buffer("cos_table", base.cos_table, persistent=False)
            self.register_buffer("sin_table", base.sin_table, persistent=False)
            self.register_buffer("slots", base.slots, persistent=False)
            # rotate_half(x) == x @ R with R a signed permutation: exact in float (one nonzero term per output).
            half, eye = self.head_dim // 2, torch.eye(self.head_dim // 2)
            rotation = torch.zeros(self.head_dim, self.head_dim)
            rotation[half:, :half], rotation[:half, half:] = -eye, eye
            self.register_buffer("rotation_t", rotation.T.contiguous(), persistent=False)   # linear() takes Rᵀ

        def forward(self, tokens, input_pos, k_cache, v_cache):
            x = self.inner.embed_tokens(tokens)
            rope_pos = torch.clamp(input_pos, max=self.context - 1)
            write_pos = input_pos
            if self.fault:          # the same planted defects as cached_decoder's
                late = input_pos >= FAULT_FROM
                if self.fault == "rope":
                    rope_pos = torch.clamp(torch.where(late, input_pos + 1, input_pos), max=self.context - 1)
                else:
                    write_pos = torch.where(late, input_pos - 1, input_pos)
            cos = self.cos_table[rope_pos].view(-1, 1, self.head_dim)                     # [T, 1, D]
            sin = self.sin_table[rope_pos].view(-1, 1, self.head_dim)
            onehot = (self.slots[:, None] == write_pos[None, :]).to(x.dtype)              # [C, T]
            keep = 1.0 - onehot.sum(dim=1, keepdim=True)                                   # [C, 1]
            write = onehot.view(1, self.context, -1)                                       # [1, C, T]
            bias = torch.where(self.slots[None, :] <= input_pos[:, None], 0.0, float("-inf"))   # [T, C]
            keys, values = [], []
            for index, layer in enumerate(self.inner.layers):
                # A slice of a static tensor is delegated; k_cache[index] (select) is not.
                layer_k = k_cache[index:index + 1].view(k_cache.shape[1:])
                layer_v = v_cache[index:index + 1].view(v_cache.shape[1:])
                attn_out, k_new, v_new = self._attention(layer, x, cos, sin, write, keep, bias, layer_k, layer_v)
                keys.append(k_new.view((1,) + tuple(k_new.shape)))
                values.append(v_new.view((1,) + tuple(v_new.shape)))
                x = x + attn_out
                x = x + layer.mlp(self._rms(layer.post_attention_layernorm, x))
            logits = self.lm_head(self._rms(self.inner.norm, x))
            return logits, _concat(torch, keys), _concat(torch, values)

        def _attention(self, layer, x, cos, sin, write, keep, bias, k_cache, v_cache):
            attn, d = layer.self_attn, self.head_dim
            group = self.heads // self.kv_heads
            h = self._rms(layer.input_layernorm, x)
            q = attn.q_proj(h).view(-1, self.heads, d)                                     # [T, Hq, D]
            k = attn.k_proj(h).view(-1, self.kv_heads, d)                                  # [T, Hkv, D]
            q = q * cos + nn.functional.linear(q, self.rotation_t) * sin
            k = (k * cos + nn.functional.linear(k, self.rotation_t) * sin).view(1, -1, self.kv_heads * d)
            v = attn.v_proj(h).view(1, -1, self.kv_heads * d)
            k_all = k_cache * keep + self._scatter(write, k)                                # [Hkv, C, D]
            v_all = v_cache * keep + self._scatter(write, v)
            # Query head h reads kv head h // group: stack each kv head's group of queries instead of
            # expanding the cache group-fold (an expand stays on a portable kernel and copies the cache).
            qg = q.view(-1, self.kv_heads, group, d).permute(1, 2, 0, 3).contiguous().view(self.kv_heads, -1, d)
            scores = torch.bmm(qg, k_all.transpose(1, 2)) * (d ** -0.5)                    # [Hkv, g*T, C]
            scores = scores.view(self.kv_heads, group, -1, self.context) + bias
            probs = torch.softmax(scores, dim=-1).view(self.kv_heads, -1, self.context)
            out = torch.bmm(probs, v_all).view(self.kv_heads, group, -1, d)                # [Hkv, g, T, D]
            out = out.permute(2, 0, 1, 3).contiguous().view(1, -1, self.heads * d)
            return attn.o_proj(out), k_all, v_all

        def _scatter(self, write, new):
            """[1, C, T] one-hot times [1, T, Hkv*D] -> [Hkv, C, D]: batched, since XNNPACK's mm wants a
            constant weight."""
            return torch.bmm(write, new).view(self.context, self.kv_heads, self.head_dim).transpose(0, 1)

        def _rms(self, norm, x):
            """RMSNorm with its mean as a 4-D mean over the two innermost dims (XNNPACK's global average pool:
            it takes no other mean)."""
            width = x.shape[-1]
            mean = (x * x).view(1, -1, 1, width).mean((2, 3), keepdim=True).view(1, -1, 1)
            return norm.weight * (x * torch.rsqrt(mean + self.eps))

    return XnnpackDecoder


def _concat(torch, parts: list):
    """torch.cat(parts) as a tree of cats of at most 5: XNNPACK concatenates 5 tensors per op and turns a longer cat
    into a chain that copies the growing result again at every link (SmolLM2's 30 layers: each cache copied ~5x
    per call, 12 of a 46 ms 8da4w step); split into 5 near-equal chunks, the tree copies it ~2.3x."""
    if len(parts) > 5:
        base, extra = divmod(len(parts), 5)
        sizes = [base + (i < extra) for i in range(5)]
        starts = [sum(sizes[:i]) for i in range(5)]
        parts = [_concat(torch, parts[start:start + size]) for start, size in zip(starts, sizes)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _tied(model) -> bool:
    return model.lm_head.weight is model.model.embed_tokens.weight


def _quantize(decoder) -> str:
    """8da4w in place (torchao ``quantize_``): int4 weights per group of 32, int8 activations per token."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    def chosen(module, _name) -> bool:
        return isinstance(module, torch.nn.Linear) and module.in_features % GROUP_SIZE == 0

    count = sum(1 for _name, module in decoder.named_modules() if chosen(module, _name))
    linears = sum(1 for _name, module in decoder.named_modules() if isinstance(module, torch.nn.Linear))
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP_SIZE))
    try:
        with _quiet():
            quantize_(decoder, config, filter_fn=chosen)
    except Exception as exc:  # noqa: BLE001 - torchao raises asserts and ValueErrors alike
        raise ConversionError(f"torchao's 8da4w quantize_ failed ({_first_line(exc)})",
                              "export without --quantize, or report it") from None
    kept = f"; {linears - count} kept float32 (width not a multiple of {GROUP_SIZE})" if count < linears else ""
    return (f"8da4w: {count} linear layers (the lm_head included) with int4 weights in groups of {GROUP_SIZE} and "
            f"int8 activations quantized per token at run time{kept}; embedding, caches and logits float32")


def _export(decoder, contract: causal_lm.DecoderContract):
    """torch.export with T dynamic (1..context); a failure is one line naming torch.export."""
    import torch

    from deploykit.transforms.causal_lm_source import example_inputs

    steps = torch.export.Dim("steps", min=1, max=contract.max_context)
    shapes = ({1: steps}, {0: steps}, None, None)
    try:
        with torch.no_grad(), _quiet():
            # torch.export specializes a dim whose example size is 1: the example takes 2 tokens.
            return torch.export.export(decoder, example_inputs(contract, 2), dynamic_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - guards, unsupported ops, data-dependent shapes
        raise ConversionError(f"torch.export could not export the cached decoder ({_first_line(exc)})",
                              REMEDY) from None


def _lower_and_write(program, output: Path) -> str:
    """Lower to XNNPACK, write the program; returns the note saying what XNNPACK took and what it left out."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        with _quiet():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            placement = _placement(edge.exported_program().graph_module)   # before to_executorch rewrites it
            buffer = edge.to_executorch().buffer
    except Exception as exc:  # noqa: BLE001 - exir raises anything from its passes and the XNNPACK preprocess
        raise ConversionError(f"ExecuTorch's XNNPACK lowering failed ({_first_line(exc)})", REMEDY) from None
    with open(output, "wb") as handle:
        handle.write(buffer)
    return placement


def _placement(graph) -> str:
    """'XNNPACK took 1412 ops in 1 delegate call; on portable kernels (per call, outside the layers): ...'"""
    delegates = [lowered for _name, lowered in graph.named_children() if hasattr(lowered, "original_module")]
    taken = sum(1 for lowered in delegates for node in lowered.original_module.graph.nodes
                if node.op == "call_function")
    left = Counter()
    for node in graph.graph.nodes:
        name = getattr(node.target, "__name__", str(node.target))
        if node.op == "call_function" and name not in ("getitem", "executorch_call_delegate") \
                and not name.startswith(("sym_size", "mul", "add", "floordiv")):
            left[name.split(".")[1] if name.startswith("aten.") else name] += 1
    outside = ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in left.most_common())
    return (f"XNNPACK took {taken} ops in {len(delegates)} delegate call{'s' * (len(delegates) != 1)}; "
            f"on portable kernels: {outside or 'none'}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


@contextmanager
def _quiet():
    """exir and torchao print warnings by the dozen and C++ logs to the file descriptors."""
    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
