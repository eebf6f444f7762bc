"""A causal LM re-authored as one static-shape call with its KV cache as explicit tensors (plug-in API, torch).

Every runtime deploykit targets runs the same module, so one cache protocol serves ONNX Runtime, LiteRT and
ExecuTorch and one host-side loop (``deploykit.llm.session``) drives them all::

    logits[1, T, V], k_cache_out, v_cache_out = decoder(tokens[1, T] int32, input_pos[T] int32,
                                                       k_cache[L, Hkv, C, D], v_cache[L, Hkv, C, D])

C is the fixed maximum context. ``input_pos`` holds each token's position; the call writes each token's key and
value into cache slot ``input_pos[i]`` and lets token i attend to the slots ``<= input_pos[i]`` — the causal mask
and the cache protocol in one rule. The write is a one-hot blend (``cache·keep + onehotᵀ·new``), not a scatter:
MatMul/Mul/Add/Equal lower on every converter and runtime alike, and with 0/1 weights the blend is exact in any
float type. A padded prefill (LiteRT's prefill signature has a fixed length) gives its padding positions past the
prompt: their writes land in slots a later decode step rewrites before it reads them, and a position ``>= C``
writes nothing (its one-hot row is all zeros; the rotary table is read at ``min(pos, C-1)``).

Weights are the source model's own parameters (shared, not copied); the rotary frequencies are the source's
``inv_freq`` buffer (so a scaled RoPE — Llama 3's — comes along) and its ``attention_scaling``. Covered:
Llama, Mistral (no sliding window inside the context) and Qwen2 (q/k/v biases) — ``deploykit.causal_lm``.

``fault`` plants a defect for the oracle's own tests (never reachable from the CLI): ``"rope"`` rotates
positions ``>= FAULT_FROM`` one step too far, ``"cache"`` writes those positions' keys and values one slot early.
"""
from __future__ import annotations

FAULT_FROM = 8
FAULTS = ("rope", "cache")


def build(model, max_context: int, fault: str = ""):
    """The cached decoder over ``model`` (a transformers Llama/Mistral/Qwen2 ``*ForCausalLM`` in eval mode)."""
    import torch

    if fault and fault not in FAULTS:
        raise ValueError(f"unknown planted fault {fault!r}")
    decoder = _decoder_class(torch)(model, int(max_context), fault)
    return decoder.eval()


def _decoder_class(torch):
    nn = torch.nn

    class CachedDecoder(nn.Module):
        def __init__(self, model, max_context: int, fault: str):
            super().__init__()
            config = model.config
            self.inner = model.model
            self.lm_head = model.lm_head
            self.heads = config.num_attention_heads
            self.kv_heads = config.num_key_value_heads
            self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
            self.eps = float(config.rms_norm_eps)
            self.context = max_context
            self.fault = fault
            rotary = self.inner.rotary_emb
            positions = torch.arange(max_context, dtype=torch.float32)
            freqs = torch.outer(positions, rotary.inv_freq.float())
            angles = torch.cat((freqs, freqs), dim=-1)
            scaling = float(getattr(rotary, "attention_scaling", 1.0))
            self.register_buffer("cos_table", angles.cos() * scaling, persistent=False)
            self.register_buffer("sin_table", angles.sin() * scaling, persistent=False)
            self.register_buffer("slots", torch.arange(max_context, dtype=torch.int32), persistent=False)

        def forward(self, tokens, input_pos, k_cache, v_cache):
            x = self.inner.embed_tokens(tokens)
            rope_pos = torch.clamp(input_pos, max=self.context - 1)
            write_pos = input_pos
            if self.fault:
                late = input_pos >= FAULT_FROM
                if self.fault == "rope":
                    rope_pos = torch.clamp(torch.where(late, input_pos + 1, input_pos), max=self.context - 1)
                else:
                    write_pos = torch.where(late, input_pos - 1, input_pos)
            cos, sin = self.cos_table[rope_pos], self.sin_table[rope_pos]
            write = (self.slots[None, :] == write_pos[:, None]).to(x.dtype)          # [T, C]
            keep = 1.0 - write.sum(dim=0)                                             # [C]
            allowed = self.slots[None, :] <= input_pos[:, None]                      # [T, C]
            keys, values = [], []
            for index, layer in enumerate(self.inner.layers):
                attn_out, k_new, v_new = self._attention(layer, x, cos, sin, write, keep, allowed,
                                                         k_cache[index], v_cache[index])
                keys.append(k_new)
                values.append(v_new)
                x = x + attn_out
                x = x + layer.mlp(_rms(layer.post_attention_layernorm, x, self.eps))
            logits = self.lm_head(_rms(self.inner.norm, x, self.eps))
            return logits, torch.stack(keys), torch.stack(values)

        def _attention(self, layer, x, cos, sin, write, keep, allowed, k_cache, v_cache):
            attn = layer.self_attn
            steps = x.shape[1]
            h = _rms(layer.input_layernorm, x, self.eps)
            q = attn.q_proj(h).view(steps, self.heads, self.head_dim).transpose(0, 1)        # [Hq, T, D]
            k = attn.k_proj(h).view(steps, self.kv_heads, self.head_dim).transpose(0, 1)     # [Hkv, T, D]
            v = attn.v_proj(h).view(steps, self.kv_heads, self.head_dim).transpose(0, 1)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            onehot = write.transpose(0, 1)                                                    # [C, T]
            k_all = k_cache * keep[None, :, None] + torch.matmul(onehot, k)                   # [Hkv, C, D]
            v_all = v_cache * keep[None, :, None] + torch.matmul(onehot, v)
            # Grouped-query attention without repeating the cache: each kv head's query group is one batch of
            # group·T rows ([Hkv, group·T, D] @ [Hkv, D, C]). Repeating k/v (expand + reshape) became a LiteRT
            # BROADCAST_TO over the whole cache on every call — ~3x slower decode at C=1024 (measured).
            group = self.heads // self.kv_heads
            q_grouped = q.reshape(self.kv_heads, group * steps, self.head_dim)
            scores = torch.matmul(q_grouped, k_all.transpose(1, 2)) * (self.head_dim ** -0.5)  # [Hkv, g·T, C]
            scores = scores.reshape(self.kv_heads, group, steps, self.context)
            scores = scores.masked_fill(~allowed[None, None], float("-inf"))
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            probs = probs.reshape(self.kv_heads, group * steps, self.context)
            out = torch.matmul(probs, v_all).reshape(self.heads, steps, self.head_dim)            # [Hq, T, D]
            out = out.transpose(0, 1).reshape(1, steps, self.heads * self.head_dim)
            return attn.o_proj(out), k_all, v_all

    return CachedDecoder


def _rms(norm, x, eps: float):
    """RMSNorm as transformers computes it (in float32, weight applied after the cast back)."""
    import torch

    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return norm.weight * h.to(dtype)


def _rotate(x, cos, sin):
    """Rotary embedding in the rotate-half form transformers' Llama uses ([..., T, D] with cos/sin [T, D])."""
    import torch

    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def empty_cache(decoder, dtype=None):
    """Zero key and value caches [L, Hkv, C, D] for ``decoder`` (numpy float32 unless ``dtype``)."""
    import numpy as np

    shape = (len(decoder.inner.layers), decoder.kv_heads, decoder.context, decoder.head_dim)
    return np.zeros(shape, dtype or np.float32), np.zeros(shape, dtype or np.float32)
