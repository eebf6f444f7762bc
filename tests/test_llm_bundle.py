"""The text-generation bundle (issue 30, item 5): `deploykit package` of a cached decoder writes the model, the
source's tokenizer, generation config, contract, golden tokens and top-5 logits from the SOURCE, and an app.py that
runs in a venv holding only numpy, the runtime and tokenizers — where `selftest` passes and `generate` prints the
source's own greedy continuation. A changed golden file or model is caught by `verify BUNDLE` (also when the
record's sha256s were rewritten) and by the app; an ExecuTorch .pte is refused in one line.

The tiny_llama sample (trained: peaked distributions), exported once per run (conftest's llm_exported).
"""
from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_clean_error, run_cli

pytestmark = [pytest.mark.llm, pytest.mark.torch, pytest.mark.slow]
TARGETS = {"onnx": pytest.mark.onnxruntime, "tflite": pytest.mark.litert}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}
MAX_CONTEXT, GOLDEN_TOKENS = 64, 16
PROMPT = "Four score and seven years ago"     # a phrase of the text tiny_llama memorised
ALLOWED_IMPORTS = {"os", "sys", "argparse", "json", "pathlib", "importlib.metadata", "numpy", "tokenizers",
                   "onnxruntime", "ai_edge_litert.interpreter"}


@pytest.fixture(scope="module", params=[pytest.param(t, marks=m) for t, m in TARGETS.items()])
def bundle(request, llm_exported, tmp_path_factory):
    """(target, exported artifact, bundle folder): the shared tiny_llama export, packaged through the API (the
    bundled prompts, 16 golden tokens each)."""
    from deploykit import api

    artifact = llm_exported(request.param)
    folder = tmp_path_factory.mktemp(f"llm_bundle_{request.param}") / "bundle"
    api.package(str(artifact), str(folder))
    return request.param, artifact, folder


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory):
    """One venv holding only what these bundles pin (numpy, onnxruntime, ai-edge-litert, tokenizers at this
    checkout's versions): no torch, transformers or deploykit."""
    from deploykit.bundle.packaging import requirements

    folder = tmp_path_factory.mktemp("llm_runtime_only")
    pins = set(requirements("onnxruntime", False, extra=("tokenizers",)).split())
    pins |= set(requirements("ai-edge-litert", False).split())
    (folder / "requirements.txt").write_text("\n".join(sorted(pins)) + "\n")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True, timeout=300)
    python = folder / "venv" / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                              str(folder / "requirements.txt")], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"\nLLM runtime-only venv: {', '.join(sorted(pins))} installed in {time.perf_counter() - started:.1f} s")
    for name in ("torch", "transformers", "deploykit"):
        probe = subprocess.run([str(python), "-c", f"import {name}"], capture_output=True, text=True, cwd=folder)
        assert probe.returncode != 0, f"{name} is importable in the runtime-only venv"
    return python


def _app(python, folder: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-P", "app.py", *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout)


def _source_continuation(folder: Path, prompt: str, count: int) -> str:
    """transformers' greedy continuation of ``prompt`` (full recomputation each step, ending before an eos)."""
    import tokenizers
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    ids, new = tokenizer.encode(prompt).ids, []
    with torch.no_grad():
        while len(new) < count:
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token in eos:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=False)


def _imports(app: Path) -> set:
    tree = ast.parse(app.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_the_bundle_generates_the_sources_text_in_a_runtime_only_venv(bundle, tiny_llama_dir, runtime_python):
    target, _artifact, folder = bundle
    record = json.loads((folder / "deploykit-bundle.json").read_text())
    assert record["kind"] == "causal_lm" and record["model"] == f"model{SUFFIX[target]}"
    assert {"tokenizer.json", "generation_config.json", "contract.json", "golden.json", "golden.npz", "app.py",
            "requirements.txt", "runtime-bom.json"} <= set(record["files"])
    bom = json.loads((folder / "runtime-bom.json").read_text())     # readiness of the two-entry decoder worked
    assert bom["runtime"] == record["runtime"] and bom["readiness"]["tables"]
    listed = [row["op"] for row in bom["operators"].get("builtin_operators", bom["operators"].get("operators", []))]
    assert {"onnx": "MatMul", "tflite": "FULLY_CONNECTED"}[target] in listed, listed
    pins = [line.split("==")[0] for line in (folder / "requirements.txt").read_text().split()]
    assert pins == ["numpy", {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}[target], "tokenizers"]
    assert _imports(folder / "app.py") <= ALLOWED_IMPORTS, _imports(folder / "app.py")
    golden = json.loads((folder / "golden.json").read_text())
    assert golden["tokens"] == GOLDEN_TOKENS and golden["top_k"] == 5 and golden["tolerance"]["preset"] == "fp32"

    checked = _app(runtime_python, folder, "selftest", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    verdict = json.loads(checked.stdout)
    assert verdict["passed"] and len(verdict["prompts"]) == len(golden["prompts"])
    assert all(row["passed"] and row["tokens"] == GOLDEN_TOKENS for row in verdict["prompts"])
    print(f"\n{target} selftest: {verdict['verdict']}")

    generated = _app(runtime_python, folder, "generate", PROMPT, "--max-new-tokens", "24")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == _source_continuation(tiny_llama_dir, PROMPT, 24) + "\n"
    print(f"{target} generate {PROMPT!r} -> {generated.stdout.strip()!r}")

    too_long = _app(runtime_python, folder, "generate", PROMPT, "--max-new-tokens", str(MAX_CONTEXT))
    assert_clean_error(too_long, 2, "context is 64 tokens")

    verified = run_cli("verify", str(folder))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "PASS" in verified.stdout and f"the source's {GOLDEN_TOKENS} on each of" in verified.stdout


def _rewrite_record(folder: Path) -> None:
    """What someone who edits a bundle can do: recompute every sha256 in deploykit-bundle.json."""
    record = json.loads((folder / "deploykit-bundle.json").read_text())
    record["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in record["files"]}
    (folder / "deploykit-bundle.json").write_text(json.dumps(record))


def _verdict(folder: Path):
    from deploykit.api import verify_bundle

    report = verify_bundle(str(folder)).reports[0]
    return report.passed, report.summary()


def test_a_changed_golden_token_is_caught_by_verify_and_by_the_app(bundle, runtime_python, tmp_path):
    _target, _artifact, original = bundle
    folder = tmp_path / "bundle"
    shutil.copytree(original, folder)
    with np.load(folder / "golden.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays["greedy/1"][3] = (arrays["greedy/1"][3] + 1) % 50
    np.savez(folder / "golden.npz", **arrays)
    passed, summary = _verdict(folder)
    assert not passed and "tampered: changed since packaging: golden.npz" in summary
    _rewrite_record(folder)
    passed, summary = _verdict(folder)
    assert not passed and "prompt 2: generated token 4 is" in summary and "must match exactly" in summary, summary
    checked = _app(runtime_python, folder, "selftest")
    assert checked.returncode == 1 and "FAIL  prompt 2: generated token 4 is" in checked.stdout, checked.stdout
    prompts = len(json.loads((folder / "golden.json").read_text())["prompts"])
    assert checked.stdout.strip().splitlines()[-1].startswith(f"selftest FAILED: {prompts - 1}/{prompts} prompt(s)")


def test_a_changed_model_is_caught_by_verify_and_by_the_app(bundle, tiny_llama_dir, runtime_python, tmp_path):
    from safetensors.numpy import load_file

    target, _artifact, original = bundle
    folder = tmp_path / "bundle"
    shutil.copytree(original, folder)
    model = folder / f"model{SUFFIX[target]}"
    weights = load_file(str(tiny_llama_dir / "model.safetensors"))
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"]).astype("<f4")
    data = model.read_bytes()
    for stored in (head, np.ascontiguousarray(head.T)):     # the converter may keep the head [V, H] or [H, V]
        at = data.find(stored.tobytes())
        if at >= 0:
            break
    assert at >= 0, "the output head's float32 weights are not stored as they are in the model file"
    model.write_bytes(data[:at] + (stored * np.float32(1.05)).tobytes() + data[at + stored.nbytes:])
    passed, summary = _verdict(folder)
    assert not passed and f"tampered: changed since packaging: model{SUFFIX[target]}" in summary
    _rewrite_record(folder)
    passed, summary = _verdict(folder)
    assert not passed and "top-5 logits" in summary, summary
    checked = _app(runtime_python, folder, "selftest")
    assert checked.returncode == 1 and "selftest FAILED" in checked.stdout, checked.stdout


def test_a_tokenizer_or_contract_edited_with_the_record_is_caught(bundle, tmp_path):
    _target, _artifact, original = bundle
    for name, edit, expected in (
            ("tokenizer.json", lambda t: t.replace('"merges"', '"merges_"', 1), "tokenizer.json"),
            ("contract.json", lambda t: t.replace('"k_cache"', '"k_cache2"', 1), "contract.json's inputs"),
            ("runtime-bom.json", lambda t: json.dumps({**json.loads(t), "model_sha256": "0" * 64}),
             "runtime-bom.json was computed for another model")):
        folder = tmp_path / name
        shutil.copytree(original, folder)
        (folder / name).write_text(edit((folder / name).read_text()))
        _rewrite_record(folder)
        passed, summary = _verdict(folder)
        assert not passed and f"tampered: {expected}" in summary, summary


@pytest.mark.litert
def test_a_pte_and_classifier_options_are_refused_in_one_line(llm_exported, tmp_path):
    """An ExecuTorch .pte with a cached-decoder manifest: exit 2 naming why (no runtime-only ExecuTorch)."""
    artifact = llm_exported("tflite")
    pte = tmp_path / "decoder.pte"
    pte.write_bytes(b"\0" * 4 + b"ET12" + b"\0" * 56)
    recorded = json.loads(Path(f"{artifact}.deploykit.json").read_text())
    Path(f"{pte}.deploykit.json").write_text(json.dumps(recorded))
    refused = run_cli("package", str(pte), "-o", str(tmp_path / "out"))
    assert_clean_error(refused, 2, "ExecuTorch's Python runtime needs torch", ".onnx or .tflite")
    assert not (tmp_path / "out").exists()
    labelled = run_cli("package", str(artifact), "-o", str(tmp_path / "out"), "--task", "classify")
    assert_clean_error(labelled, 2, "--task does not apply to a text-generation bundle")


@pytest.mark.executorch
def test_executorch_python_runtime_cannot_load_without_torch():
    """Why a .pte gets no runtime-only app: executorch.runtime does not import where torch cannot be imported
    (its _C extension links libtorch). If a release drops torch, this fails: the refusal must then go."""
    def probe(without_torch: bool) -> subprocess.CompletedProcess:
        block = "import sys; sys.modules['torch'] = None\n" if without_torch else ""
        return subprocess.run([sys.executable, "-c", block + "import executorch.runtime"], capture_output=True,
                              text=True, timeout=300)

    assert probe(False).returncode == 0          # the control: it imports where torch does
    blocked = probe(True)
    assert blocked.returncode != 0 and "executorch.extension.pybindings._C" in blocked.stderr, blocked.stderr[-500:]
