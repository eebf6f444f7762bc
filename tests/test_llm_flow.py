"""Causal LMs end to end: export → manifest → verify → bench through the API and the CLI, planted faults caught at
their step by the generation oracle, and every bad input refused in one line (most before any model loads)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import LLM_TEST_OPTIONS, ROOT, assert_clean_error

DATA = ROOT / "sample_models" / "data"
slow_llm = [pytest.mark.slow, pytest.mark.llm, pytest.mark.torch]


def _oracle_flags(*extra: str) -> list:
    return ["--prompts", str(DATA / "prompts.txt"), "--text", str(DATA / "heldout.txt"),
            "--tokens", str(LLM_TEST_OPTIONS["tokens"]), *extra]


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.torch
@pytest.mark.onnxruntime
def test_export_writes_a_cached_decoder_that_verify_passes(llm_exported, tiny_llama_dir, cli):
    onnx = llm_exported("onnx")
    record = json.loads(onnx.with_name(onnx.name + ".deploykit.json").read_text())
    assert record["kind"] == "causal_lm" and record["causal_lm"]["max_context"] == LLM_TEST_OPTIONS["max_context"]
    assert record["causal_lm"]["kv_heads"] == 2 and record["causal_lm"]["layers"] == 3     # tiny_llama's GQA shape
    assert set(record["parity"]["stages"]) == {"prefill", "decode", "greedy", "perplexity"}
    assert onnx.with_name(onnx.name + ".tokenizer.json").is_file()
    proc = cli("verify", str(tiny_llama_dir), str(onnx), *_oracle_flags(), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["reports"][0]
    assert report["passed"] and report["runtime"] == "onnxruntime"
    assert all(stage["passed"] for stage in report["stages"].values())
    # the trained sample continues its text: the artifact's own greedy tokens say so
    assert report["prompts"][0]["artifact_text"].startswith(" our fathers brought")
    assert abs(report["perplexity"]["delta"]) < 1e-3


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.torch
@pytest.mark.onnxruntime
@pytest.mark.parametrize("fault", ["cache", "rope"])
def test_a_planted_fault_is_caught_at_position_8(fault, tiny_llama_dir, tmp_path):
    """Faults start at position 8 (cached_decoder.FAULT_FROM); prompts of 3–4 tokens put it in the decode stage."""
    from deploykit.causal_lm import LLMOptions
    from deploykit.llm.flow import export

    prompts = tmp_path / "short.txt"
    prompts.write_text("Four score\nWe hold\n")
    options = LLMOptions(prompts=str(prompts), text=str(DATA / "heldout.txt"), **LLM_TEST_OPTIONS)
    result = export(str(tiny_llama_dir), "onnx", str(tmp_path / "faulty.onnx"), options=options, fault=fault)
    assert not result.passed and not result.published
    assert not (tmp_path / "faulty.onnx").exists() and list(tmp_path.iterdir()) == [prompts]   # nothing left
    stages = result.report.stages
    assert stages["prefill"]["passed"], stages["prefill"]
    assert not stages["decode"]["passed"]
    assert "(position 8)" in stages["decode"]["detail"], stages["decode"]["detail"]
    first = result.report.prompts[0]
    assert first.first_failing_step["position"] == 8
    assert first.first_failing_step["step"] == 8 - first.prompt_tokens + 1


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.torch
@pytest.mark.onnxruntime
def test_bench_reports_first_token_decode_speed_and_the_bandwidth_bound(llm_exported, tiny_llama_dir, cli):
    onnx = llm_exported("onnx")
    proc = cli("bench", str(tiny_llama_dir), str(onnx), "--tokens", "8", "--prompt-tokens", "16", "--iterations", "1",
               "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {row["row"]: row for row in data["rows"]}
    assert set(rows) == {"torch", "onnxruntime"} and data["prompt_tokens"] == 16
    for row in rows.values():
        assert row["ttft_ms"] > 0 and row["decode_tok_s"] > 0 and row["peak_mib"] > 0
        assert row["bound_tok_s"] == pytest.approx(data["bandwidth_gb_s"] * 1e9 / row["weight_bytes"])
        assert row["bound_fraction"] == pytest.approx(row["decode_tok_s"] / row["bound_tok_s"])
    assert rows["onnxruntime"]["size_bytes"] == onnx.stat().st_size
    assert data["headline"]["research"] == "torch" and data["headline"]["production"] == "onnxruntime"


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.torch
@pytest.mark.onnxruntime
def test_a_prompt_longer_than_the_context_is_one_line(llm_exported, tiny_llama_dir, cli, tmp_path):
    onnx = llm_exported("onnx")
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["Four score and seven years ago"] * 12) + "\n")
    proc = cli("verify", str(tiny_llama_dir), str(onnx), "--prompts", str(long), "--tokens", "8")
    assert_clean_error(proc, 2, "positions", "context of 64", "--max-context")


def _llm_edges() -> list:
    from deploykit import registry
    from deploykit.formats import LLM_FORMATS

    return [edge for edge in registry.EDGES if edge.src <= LLM_FORMATS]


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.torch
@pytest.mark.parametrize("edge", _llm_edges(), ids=lambda edge: edge.name)
def test_every_causal_lm_edge_writes_an_artifact_the_oracle_passes(edge, llm_exported):
    """Generated from the registry: each causal-LM edge exports tiny_llama through the API, judged on its runtime."""
    from deploykit import registry
    from deploykit.causal_lm import contract_of
    from deploykit.manifest import read

    missing = registry.missing_packages(edge.requires)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    to = next(name for name, fmt in registry.TARGETS.items() if fmt == edge.dst)
    record = read(llm_exported(to))
    assert record["route"] == [{"edge": edge.name, "tool": edge.tag}]
    assert record["parity"]["passed"] and record["parity"]["runtime"] == registry.runtime_for(edge.dst).name
    contract = contract_of(record)
    assert contract.max_context == LLM_TEST_OPTIONS["max_context"] and contract.quantization == "fp32"


# --- refused before anything loads (quick) -------------------------------------------------------------------

def _hf_folder(folder: Path, architecture: str = "LlamaForCausalLM", tokenizer: bool = True) -> Path:
    folder.mkdir()
    config = {"architectures": [architecture], "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "hidden_size": 64, "vocab_size": 300, "max_position_embeddings": 128}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def test_an_architecture_deploykit_does_not_cover_names_itself(cli, tmp_path):
    folder = _hf_folder(tmp_path / "gpt2", "GPT2LMHeadModel")
    assert_clean_error(cli("export", str(folder), "--to", "onnx"), 2, "GPT2LMHeadModel is not covered",
                       "LlamaForCausalLM")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


def test_a_source_without_its_tokenizer_is_one_line(cli, tmp_path):
    folder = _hf_folder(tmp_path / "m", tokenizer=False)
    assert_clean_error(cli("export", str(folder), "--to", "tflite"), 2, "no tokenizer.json")


@pytest.mark.parametrize("args, fragments", [
    (["--to", "tflite", "--quantize", "int4"], ("--quantize int4 is not offered", "dynamic")),
    (["--to", "saved_model"], ("exports causal LMs to",)),
    (["--to", "onnx", "--max-context", "200"], ("exceeds the model's 128 positions",)),
    (["--to", "onnx", "--max-context", "64", "--prefill-len", "0"], ("--prefill-len 0",)),
    (["--to", "onnx", "--tokens", "0"], ("--tokens 0",)),
    (["--to", "onnx", "--opset", "17"], ("--opset does not apply",)),
])
def test_bad_export_options_are_refused_before_loading(args, fragments, cli, tmp_path):
    folder = _hf_folder(tmp_path / "m")
    assert_clean_error(cli("export", str(folder), *args), 2, *fragments)


def test_causal_lm_flags_on_another_model_are_refused(cli, samples_dir):
    assert_clean_error(cli("export", str(samples_dir / "two_layer_net.pt2"), "--to", "onnx", "--tokens", "8"), 2,
                       "apply to causal LM sources")


def test_an_artifact_without_a_cache_is_one_line(cli, tmp_path):
    """A plain ONNX (no deploykit manifest saying it is a cached decoder) verified against a causal LM source."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), plain)
    folder = _hf_folder(tmp_path / "m")
    assert_clean_error(cli("verify", str(folder), str(plain)), 2, "cached decoder", "deploykit export")
