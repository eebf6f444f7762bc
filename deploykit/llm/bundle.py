"""`deploykit package` of a cached decoder: a text-generation folder an engineer copies to a device.

    bundle/
      model.onnx | model.tflite   the exported decoder, bytes unchanged (and any side file the converter wrote)
      tokenizer.json              the source's tokenizer (the one export wrote beside the artifact)
      generation_config.json      the context, the prefill entry's length, bos/eos ids, the default max_new_tokens
      contract.json               the DecoderContract and, in words, how the KV cache is fed back
      golden.json, golden.npz     prompts, their token ids, and from the SOURCE: greedy tokens for N steps and at
                                  each step its top-5 token ids, their logits and the step's largest |logit|;
                                  the tolerance and near-tie rule of the artifact's precision
      app.py, requirements.txt    `python app.py generate "..."` / `selftest`; numpy, the runtime, tokenizers
      runtime-bom.json            the operators the app's runtime must contain, and the readiness tables
      deploykit-bundle.json       what made it, and the sha256 of every file (kind: causal_lm)

The app holds its own copy of the cache loop (``deploykit.llm.session``) and reads every value from the JSON
files; it imports no torch, transformers or deploykit. An ExecuTorch .pte is refused: ExecuTorch's Python runtime
is no runtime-only install (its extension module links libtorch and takes torch tensors). The bundle's files are
written and published the way ``deploykit.bundle.packaging`` writes any bundle, and checked by its tamper checks.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import string
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from deploykit import causal_lm, fsutil, manifest, registry
from deploykit.bundle import runtime_bom
from deploykit.bundle.bundle_check import BUNDLE_FILE, BUNDLE_VERSION, MODEL_NAME
from deploykit.causal_lm import DecoderContract, LLMOptions
from deploykit.errors import ParityError, UsageError
from deploykit.formats import Format, detect
from deploykit.llm import bundle_verify, flow, oracle

DEFAULT_TOKENS = 16             # golden greedy tokens per prompt
TOP_K = 5                       # golden logits per step: the source's best tokens (the whole vocab is 49k on SmolLM2)
DEFAULT_MAX_NEW_TOKENS = 64
DISTRIBUTION = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}
PTE_REFUSAL = ("ExecuTorch's Python runtime needs torch: its extension module (executorch.extension.pybindings._C) "
               "links libtorch and takes torch tensors, so a .pte has no runtime-only app")
CACHE_PROTOCOL = [
    "k_cache and v_cache are float32 [layers, kv_heads, max_context, head_dim], zeros when a conversation starts",
    "each call takes tokens [1, T] int32 at positions input_pos [T] int32, writes their keys and values into the "
    "cache slots input_pos, and returns logits [1, T, vocab] with the caches as k_cache_out and v_cache_out: "
    "those are the next call's k_cache and v_cache (the model keeps no state)",
    "token i attends to the cache slots <= input_pos[i]",
    "prefill: the prompt in chunks of the prefill entry's length, the last chunk padded (any token id) at the "
    "positions after the prompt; the padding's logits are ignored and its slots are rewritten before being read",
    "decode: one token at the next position; greedy generation takes the argmax of its logits",
]


def is_llm_artifact(path: str) -> bool:
    """Whether ``path``'s deploykit manifest records a cached decoder (a causal_lm section)."""
    recorded = manifest.read(path)
    return isinstance((recorded or {}).get("causal_lm"), dict)


def package(artifact: str, output: str, options=None, force: bool = False, tokens: int = DEFAULT_TOKENS,
            prompts: Optional[str] = None) -> dict:
    """Write the text-generation bundle of the cached-decoder ``artifact`` into the folder ``output`` (atomically,
    after its model generated the golden tokens on its runtime here); returns its description. ``options`` is a
    PackageOptions: only ``source`` and ``verify.timeout`` apply; ``prompts`` is a file, one prompt per line."""
    from deploykit.bundle.packaging import PackageOptions

    options = options or PackageOptions()
    fmt, contract, side_files, source = _checked(artifact, options, tokens)
    out = Path(output).absolute()
    if fsutil.overlaps(out, artifact) or fsutil.overlaps(out, source):
        raise UsageError(f"the bundle folder {out} holds the artifact or its source", "choose another -o")
    texts = flow.read_prompts(prompts)
    prompt_ids = _prompt_ids(artifact, texts, tokens, contract)
    with fsutil.parents_removed_on_failure(out):
        fsutil.prepare_output(out, force, directory=True)
        golden = _golden(source, artifact, contract, texts, prompt_ids, tokens, options.verify.timeout)
        with fsutil.staging_dir(out.parent) as stage:
            folder = stage / out.name
            folder.mkdir()
            _stage(folder, fmt, Path(artifact), side_files, contract, golden, source, options.verify.timeout)
            fsutil.publish([(folder, out)], force=force)
    return describe(out)


def _checked(artifact: str, options, tokens: int) -> tuple:
    """(format, contract, side files, source) of an artifact a text-generation bundle can carry; else one line."""
    _refuse_options(options)
    fmt = detect(artifact)
    if fmt == Format.EXECUTORCH:
        raise UsageError(f"{artifact}: {PTE_REFUSAL}", "package the same source's .onnx or .tflite export "
                         "(deploykit export SRC --to onnx), or run the .pte with ExecuTorch's C++, Android or iOS "
                         "runtime")
    if fmt not in bundle_verify.RUNTIME_OF:
        raise UsageError(f"{artifact} is a {fmt.value}; a text-generation bundle carries an .onnx or .tflite "
                         "cached decoder", "export the causal LM with --to onnx or --to tflite")
    if not isinstance(tokens, int) or not 1 <= tokens <= bundle_verify.MAX_TOKENS:
        raise UsageError(f"{tokens!r} golden tokens is out of range", f"give 1 to {bundle_verify.MAX_TOKENS}")
    contract = flow.contract_for_artifact(artifact)
    recorded = manifest.read(artifact)
    side_files = _recorded_files(artifact, recorded)
    source = _source(artifact, recorded, options.source)
    registry.require(registry.runtime_entry(bundle_verify.RUNTIME_OF[fmt]).requires + ("tokenizers",),
                     "checking the bundle's model")
    return fmt, contract, side_files, source


def _stage(folder: Path, fmt: Format, artifact: Path, side_files: list, contract: DecoderContract, golden: tuple,
           source: str, timeout: float) -> None:
    """Every file of the bundle in ``folder``; the record last, once the bundled model generated its golden tokens
    (judged as `verify BUNDLE` and `app.py selftest` judge it)."""
    model, runtime = MODEL_NAME[fmt], bundle_verify.RUNTIME_OF[fmt]
    _copy(artifact, folder / model)
    for side in side_files:
        _copy(side, folder / side.name)
    _write_files(folder, model, runtime, contract, golden, source)
    report = bundle_verify.run_golden(folder / model, runtime, contract, *golden[:2], timeout)
    if not report.passed:
        raise ParityError(f"the bundled model does not generate its golden tokens: {report.summary()}",
                          "verify the artifact against its source first (`deploykit verify SRC ART`)",
                          details={"parity": report.to_dict()})
    from deploykit.bundle.packaging import _version

    runtime_bom.write(folder, model, runtime, _version(DISTRIBUTION[runtime]) or "unknown", timeout)
    _write_record(folder, model, runtime)


# PackageOptions fields that mean nothing for a text-generation bundle: refused rather than silently ignored.
_NOT_FOR_LLM = {"labels": "--labels", "normalize": "--normalize", "task": "--task",
                "keep_unverified": "--keep-unverified"}


def _refuse_options(options) -> None:
    for name, flag in _NOT_FOR_LLM.items():
        if getattr(options, name):
            raise UsageError(f"{flag} does not apply to a text-generation bundle", f"leave {flag} out")
    if options.app != "python":
        raise UsageError(f"--app {options.app} is not offered for a text-generation bundle",
                         "package it with --app python (the default)")
    if options.samples != type(options).samples or options.verify.inputs_npz:
        raise UsageError("--samples and --npz do not apply to a text-generation bundle (its golden data are the "
                         f"source's {DEFAULT_TOKENS} greedy tokens on each bundled prompt)", "leave them out")


def _recorded_files(artifact: str, recorded: dict) -> list:
    """The artifact and the side files its manifest lists must be the very files export wrote (the contract and
    the tokenizer apply to those bytes); the side files other than the tokenizer, which go into the bundle."""
    entry = recorded.get("artifact") if isinstance(recorded.get("artifact"), dict) else {}
    if fsutil.sha256_of(artifact) != entry.get("sha256"):
        raise UsageError(f"{artifact} is not the file its manifest records (changed since export)",
                         "export the model again")
    tokenizer = causal_lm.tokenizer_path(artifact)
    sides = []
    for item in entry.get("extra_files") or []:
        name = item.get("path") if isinstance(item, dict) else None
        if not isinstance(name, str) or not fsutil.plain_relative(name) or "/" in name:
            raise UsageError(f"{artifact}'s manifest names a side file {str(name)[:80]!r} outside its folder",
                             "export the model again")
        path = Path(artifact).with_name(name)
        if fsutil.sha256_of(path) != item.get("sha256"):
            raise UsageError(f"{path} is missing or not the file export wrote", "export the model again")
        if path != tokenizer:
            sides.append(path)
    if fsutil.sha256_of(tokenizer) is None:
        raise UsageError(f"{tokenizer.name} is missing beside {artifact}", "export the model again")
    return sides


def _source(artifact: str, recorded: dict, given: Optional[str]) -> str:
    """The causal-LM source: given, or the one the manifest names if it is still the file that was exported."""
    entry = recorded.get("source") if isinstance(recorded.get("source"), dict) else {}
    path = given or entry.get("path")
    if not path:
        raise UsageError(f"{artifact}'s manifest names no source, and the golden tokens are the source's",
                         "give the source model with --source MODEL")
    if not given and fsutil.sha256_of(path) != entry.get("sha256"):
        raise UsageError(f"the source recorded in {artifact}'s manifest ({path}) is missing or has changed",
                         "give the source model with --source MODEL")
    if not flow.is_causal_lm(path):
        raise UsageError(f"{path} is no causal-LM source (a Hugging Face folder or a GGUF file)",
                         "give the model the artifact was exported from with --source")
    return str(path)


def _prompt_ids(artifact: str, texts: list, tokens: int, contract: DecoderContract) -> list:
    """Each prompt's token ids from the artifact's tokenizer, refused before the source loads when one does not fit."""
    import tokenizers

    from deploykit.llm.jobs import encode_prompts

    tokenizer = tokenizers.Tokenizer.from_file(str(causal_lm.tokenizer_path(artifact)))
    ids = encode_prompts(tokenizer, texts)
    longest = max(len(row) for row in ids)
    if longest + tokens > contract.max_context:
        raise UsageError(f"a prompt of {longest} tokens plus {tokens} golden tokens needs {longest + tokens} "
                         f"positions, but {Path(artifact).name} was exported with a context of {contract.max_context}",
                         f"give shorter prompts (--prompts), or re-export with --max-context {longest + tokens}")
    return ids


def _golden(source: str, artifact: str, contract: DecoderContract, texts: list, prompt_ids: list, tokens: int,
            timeout: float) -> tuple:
    """(golden.json, golden.npz arrays, tokenizer JSON) from the source's own run (the oracle's source side, full recomputation)."""
    prefill = min(contract.prefill_len or causal_lm.DEFAULT_PREFILL_LEN, contract.max_context)
    ref = flow.reference(source, LLMOptions(tokens=tokens, max_context=contract.max_context, prefill_len=prefill,
                                            timeout=timeout), texts, contract.max_context, perplexity=False)
    vocab = ref.arrays["prefill_0"].shape[-1]
    if (vocab, ref.info["family"]) != (contract.vocab, contract.family) or ref.info["prompt_ids"] != prompt_ids \
            or ref.info["tokenizer_json"] != causal_lm.tokenizer_path(artifact).read_text(encoding="utf-8"):
        raise UsageError(f"{Path(artifact).name} is not an export of {source} (its family, vocabulary or tokenizer "
                         "differ)", "give the source it was exported from with --source")
    arrays = {}
    for index in range(len(texts)):
        steps = np.concatenate([ref.arrays[f"prefill_{index}"][-1:], ref.arrays[f"steps_{index}"]]).astype(np.float32)
        top = np.argsort(-steps, axis=1, kind="stable")[:, :TOP_K]
        arrays[f"greedy/{index}"] = ref.arrays[f"greedy_{index}"].astype(np.int64)
        arrays[f"top_ids/{index}"] = top.astype(np.int64)
        arrays[f"top_logits/{index}"] = np.take_along_axis(steps, top, axis=1)
        arrays[f"scale/{index}"] = np.abs(steps).max(axis=1)
    judge = oracle.judge_for(contract.quantization)
    decode = flow._decoder(ref.info["tokenizer_json"])
    golden = {"prompts": texts, "prompt_ids": prompt_ids, "tokens": tokens, "top_k": TOP_K,
              "tolerance": dataclasses.asdict(judge.tolerance),
              "near_tie": {"allowed": judge.flips, "margin": judge.flip_margin},
              "continuations": [decode(arrays[f"greedy/{i}"]) for i in range(len(texts))],
              "source": {"name": Path(source).name, "format": detect(source).value,
                         "bos_token_id": ref.info["bos_token_id"], "eos_token_ids": ref.info["eos_token_ids"]},
              "precision": contract.quantization}
    return golden, arrays, ref.info["tokenizer_json"]


def _copy(source: Path, target: Path) -> None:
    """A file copied without following a link at its name (one that appeared since its sha256 was checked)."""
    try:
        handle = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise UsageError(f"{source} cannot be read ({exc.strerror})", "export the model again") from None
    with os.fdopen(handle, "rb") as read, fsutil.atomic_writer(target) as write:
        shutil.copyfileobj(read, write)


def _write_files(folder: Path, model: str, runtime: str, contract: DecoderContract, golden: tuple,
                 source: str) -> None:
    """Every file but the record; ``golden`` is what ``_golden`` returned."""
    from deploykit.bundle.packaging import requirements

    golden, arrays, tokenizer_json = golden
    fsutil.write_text_atomic(folder / "tokenizer.json", tokenizer_json)
    eos = [int(t) for t in contract.eos_token_ids] or [int(t) for t in golden["source"]["eos_token_ids"]]
    bos = contract.bos_token_id if contract.bos_token_id is not None else golden["source"]["bos_token_id"]
    config = {"max_context": contract.max_context, "prefill_len": contract.prefill_len, "bos_token_id": bos,
              "eos_token_ids": eos, "max_new_tokens": min(DEFAULT_MAX_NEW_TOKENS, contract.max_context - 1)}
    fsutil.write_text_atomic(folder / "generation_config.json", json.dumps(config, indent=2) + "\n")
    fsutil.write_text_atomic(folder / "contract.json", json.dumps(
        {**contract.to_dict(), "cache_protocol": CACHE_PROTOCOL}, indent=2) + "\n")
    fsutil.write_text_atomic(folder / "golden.json", json.dumps(golden, indent=2) + "\n")
    with fsutil.atomic_writer(folder / "golden.npz") as handle:
        np.savez(handle, **arrays)
    distribution = DISTRIBUTION[runtime]
    fsutil.write_text_atomic(folder / "app.py", render_app(model, runtime, distribution, source))
    fsutil.write_text_atomic(folder / "requirements.txt", requirements(distribution, False, extra=("tokenizers",)))


def render_app(model_file: str, runtime: str, distribution: str, source: str) -> str:
    """app.py from the LLM template and the runtime's block; values go in through repr() or as sanitised words."""
    from deploykit.bundle.packaging import _version

    templates = resources.files("deploykit.bundle") / "app_templates"
    block = (templates / f"llm_runtime_{runtime}.py.txt").read_text()
    return string.Template((templates / "llm_app.py.txt").read_text()).substitute(
        model_file=repr(model_file), runtime_block=block.strip(), runtime_distribution=distribution,
        source=re.sub(r"[^\w.+-]", "_", Path(source).name), deploykit_version=_version("deploykit") or "dev",
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))


def _write_record(folder: Path, model: str, runtime: str) -> None:
    """deploykit-bundle.json: the record every bundle has (``bundle_check`` reads it), kind causal_lm."""
    files = {f.relative_to(folder).as_posix(): fsutil.sha256_of(f) for f in sorted(folder.rglob("*")) if f.is_file()}
    record = {"bundle": BUNDLE_VERSION, "kind": bundle_verify.KIND, "app": "python", "model": model,
              "runtime": runtime,
              "files": files, "verified": True}
    fsutil.write_text_atomic(folder / BUNDLE_FILE, json.dumps(record, indent=2) + "\n")


def describe(folder: "str | Path") -> dict:
    """The bundle as `package` reports it (the CLI prints ``summary``; --json gives all of it)."""
    folder = Path(folder)
    info = json.loads((folder / BUNDLE_FILE).read_text())
    contract = json.loads((folder / "contract.json").read_text())
    golden = json.loads((folder / "golden.json").read_text())
    config = json.loads((folder / "generation_config.json").read_text())
    prefill = f"prefill {contract['prefill_len']} tokens (padded)" if contract["prefill_len"] else \
        "prefill any length"
    summary = [
        f"cached decoder: {contract['family']}, {contract['layers']} layers, {contract['kv_heads']} KV heads x "
        f"{contract['head_dim']}, vocabulary {contract['vocab']}, context {contract['max_context']} tokens, "
        f"{contract['quantization']}",
        f"entry points: {prefill}, decode 1 token; caches fed back by the app (contract.json says how)",
        f"golden: {len(golden['prompts'])} prompt(s) x {golden['tokens']} greedy tokens of the source, top-"
        f"{golden['top_k']} logits per step within {golden['tolerance']['preset']}",
        f"generate: at most {config['max_new_tokens']} new tokens by default, ending at token(s) "
        f"{', '.join(map(str, config['eos_token_ids'])) or 'none'}",
    ]
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"bundle": str(folder), "kind": bundle_verify.KIND, "passed": True, "app": "python",
            "model": info["model"], "runtime": info["runtime"], "bytes": size,
            "files": sorted(info["files"]) + [BUNDLE_FILE], "contract": contract, "summary": summary,
            "runtime_requirements": (folder / "requirements.txt").read_text().split(),
            "verified": True, "unverified": False, "unverified_reason": None,
            "runtime_bom": runtime_bom.describe(folder)}
