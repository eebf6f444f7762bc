"""Load a causal-LM source into PyTorch (plug-in API; runs in a child: imports torch and transformers).

A Hugging Face folder is read from its safetensors only (never a pickle, never remote code); a GGUF file is
dequantized by transformers' own GGUF loader. Either way the tokenizer comes back as the ``tokenizers`` JSON text,
the one form every later step (oracle, bundle app) reads without transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from deploykit import causal_lm
from deploykit.errors import ModelLoadError

# One loaded model per child: a command verifies several artifacts against the same source.
_LOADED: dict = {}


@dataclass
class LoadedLM:
    model: object                   # transformers *ForCausalLM, float32, eval mode
    tokenizer_json: str
    bos_token_id: Optional[int]
    eos_token_ids: tuple
    info: causal_lm.SourceInfo


def load(path: str) -> LoadedLM:
    """The source model and tokenizer (cached per child process)."""
    key = str(Path(path).resolve())
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = _load(path)
    return _LOADED[key]


def _load(path: str) -> LoadedLM:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    info = causal_lm.read_source(path)
    p = Path(path)
    try:
        if info.format == "gguf":
            tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
            model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
            tokenizer_json = tokenizer.backend_tokenizer.to_str()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32, use_safetensors=True,
                                                         trust_remote_code=False, local_files_only=True)
            tokenizer_json = (p / "tokenizer.json").read_text()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: transformers cannot load the model ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else ''})",
                             "check the folder holds the model's config.json, safetensors and tokenizer.json") from None
    model.eval()
    config = model.config
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None) if generation is not None else None
    eos = config.eos_token_id if eos is None else eos
    eos_ids = tuple(int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos]) if t is not None)
    bos = getattr(config, "bos_token_id", None)
    return LoadedLM(model, tokenizer_json, int(bos) if bos is not None else None, eos_ids, info)


def contract_for(loaded: LoadedLM, max_context: int, prefill_len: Optional[int],
                 quantization: str = "fp32") -> causal_lm.DecoderContract:
    """The DecoderContract of the cached decoder built from ``loaded``."""
    info = loaded.info
    return causal_lm.DecoderContract(
        family=info.family, layers=info.layers, kv_heads=info.kv_heads, head_dim=info.head_dim, vocab=info.vocab,
        max_context=max_context, prefill_len=prefill_len, bos_token_id=loaded.bos_token_id,
        eos_token_ids=loaded.eos_token_ids, quantization=quantization)


def example_inputs(contract: causal_lm.DecoderContract, steps: int):
    """Torch example inputs for a call of ``steps`` tokens (zeros caches; positions 0..steps-1)."""
    import torch

    return (torch.zeros((1, steps), dtype=torch.int32), torch.arange(steps, dtype=torch.int32),
            torch.zeros(contract.cache_shape, dtype=torch.float32),
            torch.zeros(contract.cache_shape, dtype=torch.float32))
