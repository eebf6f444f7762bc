"""What the converter tests of causal LMs share: a seeded random Llama as a Hugging Face folder, transformers'
full forward as the reference, and an artifact's logits through the one host loop (``DecoderSession``)."""
from __future__ import annotations

import numpy as np

VOCAB = 300


def write_random_llama(folder, tied: bool = False):
    """A seeded random Llama (2 layers, 4 query heads sharing 2 KV heads) as a Hugging Face folder: config,
    safetensors and a WordLevel tokenizer.json; returns the model. ``tied``: embedding and lm_head shared (SmolLM2's)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return model


def random_ids(count: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, VOCAB, size=count).astype(np.int32)


def reference_logits(model, ids) -> np.ndarray:
    """transformers' full forward over all the ids (no cache): logits [len(ids), V]."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(ids, np.int64))[None]).logits[0].numpy()


def artifact_logits(calls, contract: dict, ids, prompt: int) -> np.ndarray:
    """Prefill ``ids[:prompt]``, then decode the rest one id at a time through ``DecoderSession`` (the loop the oracle
    and bench use): logits [len(ids), V] in the reference's positions. ``calls``: a runtime's DecoderCalls."""
    from deploykit.causal_lm import DecoderContract
    from deploykit.llm.session import DecoderSession

    session = DecoderSession(calls, DecoderContract.from_dict(contract))
    try:
        rows = [session.prefill(ids[:prompt])]
        rows += [session.decode(int(token))[None] for token in ids[prompt:]]
    finally:
        calls.close()
    return np.concatenate(rows)


def convert_variants(convert, root, modes, suffix: str, max_context: int, prefill_len=None,
                     own_folders: bool = False) -> dict:
    """Each of ``modes`` converted in this process by a converter's ``convert`` from the random Llama at
    ``root / "tiny"``: {mode: (output path, the converter's answer)}. ``own_folders``: each output alone in a folder
    (a stray side file would show)."""
    results = {}
    for mode in modes:
        output = (root / mode / f"decoder{suffix}") if own_folders else root / f"{mode}{suffix}"
        output.parent.mkdir(parents=True, exist_ok=True)
        request = {"source": str(root / "tiny"), "output": str(output), "max_context": max_context,
                   "prefill_len": prefill_len, "quantize": mode, "fault": ""}
        results[mode] = (output, convert(request, {}))
    return results
