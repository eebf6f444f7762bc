"""tiny_llama: a small Llama decoder trained here on a bundled public-domain text, written as a Hugging Face folder.

The causal-LM sample (issue 30). A random-init decoder gives near-ties everywhere, so a greedy comparison of an
artifact against it proves little; this one is trained (about a minute on one CPU thread) until it has memorised
``data/corpus.txt`` (the Gettysburg Address and the opening of the Declaration of Independence): its greedy
continuations of ``data/prompts.txt`` reproduce the text, with top-2 logit margins of several units.

- ``tokenizer()``: a byte-level BPE (``tokenizers``), VOCAB entries, trained deterministically on the text; ``<s>``
  (id 0) and ``</s>`` (id 1) are its special tokens; encoding adds neither (a caller prepends ``<s>`` if it likes:
  the model was trained on windows that start at ``<s>`` and on windows that start mid-text, so it continues a
  prompt either way).
- ``tiny_llama()``: the untrained ``LlamaForCausalLM`` (3 layers, hidden 128, 4 query heads sharing 2 key/value
  heads -- grouped-query attention on purpose, as in SmolLM2 and Llama 3 -- max_position_embeddings 256).
- ``train(model)``: AdamW on random 128-token windows of the text, fixed seed, one thread (so two builds give the
  same bytes whatever the machine's core count).
- ``write_folder(model, folder)``: config.json, generation_config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json.

Texts: ``CORPUS`` (trained on), ``PROMPTS`` (one per line, phrases of the text), ``HELDOUT`` (never trained on: the
perplexity text; the model is confidently wrong there, perplexity ~5,500 against ~1.06 on the first 256 tokens of
each document, so an artifact's log-probabilities of unexpected tokens are judged too). Measured greedy horizon:
from ``<s>`` alone it recites the Declaration's opening for 210 tokens; past position 128 (the training window)
it drifts, with smaller margins.
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().with_name("data")
CORPUS, PROMPTS, HELDOUT = DATA / "corpus.txt", DATA / "prompts.txt", DATA / "heldout.txt"
DOCUMENT_SEPARATOR = "\n%%\n"
BOS, EOS = "<s>", "</s>"
BOS_ID, EOS_ID = 0, 1
VOCAB, HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, MAX_POSITIONS = 512, 128, 256, 3, 4, 2, 256
SEED, STEPS, BATCH, WINDOW, LEARNING_RATE = 0, 400, 8, 128, 3e-3
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
TRAINING_TIME = "about a minute"
MARGIN_TOKENS = 32          # greedy steps per prompt over which the top-2 margins are averaged


def read_text(path: "str | Path") -> str:
    """A bundled text without its '#' header lines."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("#")).strip("\n")


def documents() -> list:
    """The training documents (the Gettysburg Address, the Declaration's opening)."""
    return read_text(CORPUS).split(DOCUMENT_SEPARATOR)


def prompts() -> list:
    """The bundled prompts, one per line of ``data/prompts.txt``."""
    return [line for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def heldout_text() -> str:
    """The held-out passage for perplexity (never trained on)."""
    return read_text(HELDOUT)


@lru_cache(maxsize=1)
def tokenizer_json() -> str:
    """The byte-level BPE trained on the documents, as tokenizers' JSON (deterministic: same text, same merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents(), trainer)
    if tok.get_vocab_size() != VOCAB or tok.token_to_id(BOS) != BOS_ID or tok.token_to_id(EOS) != EOS_ID:
        raise RuntimeError(f"the BPE trainer made {tok.get_vocab_size()} entries, not {VOCAB} with <s>=0 </s>=1")
    return tok.to_str()


def tokenizer():
    """A fresh ``tokenizers.Tokenizer`` of the sample."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json())


def token_stream() -> list:
    """The training tokens: ``<s> document </s>`` for each document, concatenated."""
    tok = tokenizer()
    stream: list = []
    for document in documents():
        stream += [BOS_ID] + tok.encode(document).ids + [EOS_ID]
    return stream


def tiny_llama():
    """The untrained decoder (fixed seed)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         max_position_embeddings=MAX_POSITIONS, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                         tie_word_embeddings=False)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
                                               do_sample=False)
    return model.eval()


def train(model, steps: int = STEPS) -> dict:
    """Train on random WINDOW-token windows of the text until its next tokens are near certain; what it reached."""
    import torch

    from deploykit.progress import Progress

    stream = torch.tensor(token_stream())
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=steps, pct_start=0.1)
    threads, started = torch.get_num_threads(), time.perf_counter()
    # One thread: the same sums in the same order on every machine (bit-identical weights), and on a small model
    # two threads on a busy 2-core host were measured 5-10x slower per step than one.
    torch.set_num_threads(1)
    model.train()
    try:
        with Progress("training tiny_llama", total=steps, intro=f"{TRAINING_TIME}, on one thread") as bar:
            for step in range(steps):
                starts = torch.randint(0, len(stream) - WINDOW, (BATCH,), generator=generator)
                batch = torch.stack([stream[s:s + WINDOW + 1] for s in starts.tolist()])
                logits = model(input_ids=batch[:, :-1]).logits
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(step + 1, loss=round(loss.item(), 4))
    finally:
        torch.set_num_threads(threads)
        model.eval()
    seconds = time.perf_counter() - started
    return {"steps": steps, "train_loss": round(loss.item(), 4), "seconds": round(seconds, 1),
            "tokens": len(stream), **evaluate(model)}


def greedy(model, ids: list, new_tokens: int) -> tuple:
    """(generated ids, top-2 logit margin at each step): full recomputation each step, stops after ``</s>``."""
    import torch

    ids, generated, margins = list(ids), [], []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            top = torch.topk(logits, 2).values
            margins.append(float(top[0] - top[1]))
            generated.append(int(torch.argmax(logits)))
            ids.append(generated[-1])
            if generated[-1] == EOS_ID:
                break
    return generated, margins


def evaluate(model, new_tokens: int = MARGIN_TOKENS) -> dict:
    """Greedy continuations of the bundled prompts: how many reproduce the text, and the top-2 margins."""
    tok, text = tokenizer(), "\n".join(documents())
    margins, reproduced, continuations = [], 0, {}
    for prompt in prompts():
        generated, step_margins = greedy(model, tok.encode(prompt).ids, new_tokens)
        margins += step_margins
        continuation = tok.decode([t for t in generated if t != EOS_ID])
        reproduced += (prompt + continuation) in text
        continuations[prompt] = continuation
    return {"reproduced": f"{reproduced}/{len(continuations)}", "mean_top2_margin": round(sum(margins) / len(margins), 3),
            "min_top2_margin": round(min(margins), 3), "continuations": continuations}


def write_folder(model, folder: "str | Path") -> list:
    """The Hugging Face folder (config, generation config, safetensors, tokenizer); the names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    # What AutoTokenizer needs to name the special tokens (tokenizer.json alone does not say which is BOS).
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
              "add_bos_token": False, "model_max_length": MAX_POSITIONS, "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # transformers writes the safetensors through a private temp file (mode 0600): give it the umask's mode,
    # that of the files written here, so the folder can be shared like the other samples.
    mode = (folder / "tokenizer.json").stat().st_mode & 0o777
    for name in FILES:
        (folder / name).chmod(mode)
    written = sorted(p.name for p in folder.iterdir())
    if set(written) != set(FILES):
        raise RuntimeError(f"transformers wrote {written}, not the sample's files {sorted(FILES)}")
    return written
