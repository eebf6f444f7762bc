"""`deploykit verify BUNDLE` for a text-generation bundle (``deploykit.llm.bundle``), and the golden judge that
`package` also runs on the bundled model before it publishes anything.

The bundle gets every check ``deploykit.bundle.bundle_check`` gives any bundle (no unlisted file, no link, no
listed path outside it, the model the app loads, every file unchanged), then the files only this kind reads must
have the shape `package` writes (the record itself can be rewritten with new sha256s by whoever edited them):
contract.json a cached-decoder contract, generation_config.json agreeing with it, golden.json/golden.npz the
prompts, greedy tokens and top-k logits of each step, tokenizer.json encoding each prompt into the ids the source's
tokenizer gave. Then the model runs on deploykit's runtime through ``DecoderSession`` (not the bundle's app.py,
which is as untrusted as the rest) and is judged as ``app.py selftest`` judges it: the source's greedy tokens on
every prompt (a differing token only as a near-tie flip of a quantized model) and, at each step, the logits of the
source's top-k tokens within the precision's tolerance.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np

from deploykit import child, parity
from deploykit.bundle import bundle_check
from deploykit.bundle.bundle_check import BUNDLE_FILE, FORMAT_OF, Tampered, read_golden
from deploykit.causal_lm import INPUTS, OUTPUTS, DecoderContract
from deploykit.errors import DeploykitError, UsageError
from deploykit.formats import Format
from deploykit.llm.session import DecoderSession

KIND = "causal_lm"
RUNTIME_OF = {Format.ONNX: "onnxruntime", Format.TFLITE: "litert"}
LLM_FILES = ("tokenizer.json", "generation_config.json")   # read by verify and the app, beyond any bundle's files
MAX_PROMPTS, MAX_TOKENS = 64, 4096
GOLDEN_KEYS = ("greedy", "top_ids", "top_logits", "scale")


def is_llm_bundle(folder: "str | Path") -> bool:
    """Whether ``folder``'s record says it is a text-generation bundle (checked in full by ``verify``)."""
    path = Path(folder) / BUNDLE_FILE
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(info, dict) and info.get("kind") == KIND


def verify(folder: "str | Path", timeout: float = 600.0, runtimes: tuple = ()) -> parity.ParityReport:
    """The bundle's checks, then its model against its golden tokens on deploykit's runtime (a report either way)."""
    folder = Path(folder)
    info, problems = bundle_check._tampering(folder)
    if not problems:
        problems = bundle_check._changed(folder, info["files"])
    if not problems:
        try:
            contract, golden, arrays = read_llm_files(folder, info)
        except Tampered as exc:
            problems = [str(exc)]
    model = info.get("model") if isinstance(info.get("model"), str) else "?"
    if problems:
        return parity.ParityReport("golden tokens", f"{folder.name}/{model}", 0, parity.PRESETS["fp32"],
                                   problems=[f"tampered: {p}" for p in problems])
    if any(name != info["runtime"] for name in runtimes):
        raise UsageError(f"a text-generation bundle runs on its own runtime ({info['runtime']}), not on "
                         f"{', '.join(n for n in runtimes if n != info['runtime'])}",
                         "verify it without --runtime")
    report = run_golden(folder / model, info["runtime"], contract, golden, arrays, timeout)
    report.notes.append(f"files unchanged since packaging ({len(info['files'])} listed)")
    return bundle_check.with_bom_checked(report, folder, info)


def run_golden(model: Path, runtime: str, contract: DecoderContract, golden: dict, arrays: dict,
               timeout: float) -> parity.ParityReport:
    """``model`` generates from the golden prompts on ``runtime`` (in a child) and is judged against the golden."""
    from deploykit import registry

    entry = registry.runtime_entry(runtime)
    problem = registry.runtime_problem(entry, f"running {model.name}")
    if problem:
        raise problem
    request = {"model": str(model), "runtime": runtime, "contract": contract.to_dict(),
               "prompt_ids": golden["prompt_ids"]}
    tops = {k: v for k, v in arrays.items() if k.startswith("top_ids/")}
    got = child.run_child("deploykit.llm.bundle_verify:golden_run", request, arrays=tops, stage=child.RUN,
                          what=model.name, timeout=timeout)
    report = judge(golden, arrays, got.arrays, _decoder(model.parent / "tokenizer.json"),
                   f"{model.parent.name}/{model.name}")
    entries = ", ".join(f"{k} {'any length' if v is None else f'{v} token(s)'}" for k, v in got.info["entries"].items())
    report.notes.append(f"ran on {runtime} through deploykit's cache loop; entry points: {entries}")
    return report


def golden_run(request: dict, arrays: dict) -> dict:
    """Child: greedy decoding of each golden prompt through the runtime's cache, and at every step the logits of
    the source's top-k tokens (the whole logits stay here: the vocabulary is tens of thousands)."""
    from deploykit import registry
    from deploykit.runner import RunnerOptions

    contract = DecoderContract.from_dict(request["contract"])
    entry = registry.runtime_entry(request["runtime"])
    calls = registry.resolve(entry.decoder)(request["model"], RunnerOptions())
    out = {}
    try:
        session = DecoderSession(calls, contract)
        for index, ids in enumerate(request["prompt_ids"]):
            top = arrays[f"top_ids/{index}"]
            session.reset()
            logits = session.prefill(ids)[-1]
            tokens, picked = [], []
            for step in range(len(top)):
                tokens.append(int(np.argmax(logits)))
                picked.append(logits[top[step]])
                if step + 1 < len(top):
                    logits = session.decode(tokens[-1])
            out[f"greedy/{index}"] = np.asarray(tokens, np.int64)
            out[f"picked/{index}"] = np.asarray(picked, np.float32).reshape(len(top), -1)
    finally:
        calls.close()
    return {"entries": dict(calls.entries), "arrays": out}


def judge(golden: dict, arrays: dict, got: dict, decode, candidate: str) -> parity.ParityReport:
    """The rule of ``app.py selftest``: per prompt, the source's greedy tokens (a differing one allowed only as a
    near-tie flip, after which the steps follow another text and are not compared) and the top-k logits of the
    compared steps within the tolerance (pooled over the steps, as the parity engine pools samples)."""
    tolerance = parity.Tolerance(**golden["tolerance"])
    report = parity.ParityReport("golden tokens", candidate, len(golden["prompts"]), tolerance)
    flips = []
    for index in range(len(golden["prompts"])):
        expected, tokens = arrays[f"greedy/{index}"], got[f"greedy/{index}"]
        top_logits, scale = arrays[f"top_logits/{index}"], arrays[f"scale/{index}"]
        compared = len(expected)
        differs = np.nonzero(np.asarray(expected) != np.asarray(tokens))[0]
        if differs.size:
            step = int(differs[0])
            margin = float(top_logits[step][0] - top_logits[step][1])
            near = golden["near_tie"]["allowed"] and margin <= golden["near_tie"]["margin"] * max(1.0, float(scale[step]))
            what = (f"prompt {index + 1}: generated token {step + 1} is {int(tokens[step])} "
                    f"{decode([tokens[step]])!r}, the source's {int(expected[step])} {decode([expected[step]])!r} "
                    f"(source's top-2 margin {margin:.3g})")
            if not near:
                report.problems.append(what + ("" if golden["near_tie"]["allowed"] else
                                               f"; {tolerance.preset} must match exactly"))
            else:
                flips.append(what)
            compared = step + 1
        report.outputs.append(parity.compare_tensor(
            f"prompt {index + 1} top-{top_logits.shape[1]} logits", "logits",
            [top_logits[s] for s in range(compared)], [got[f"picked/{index}"][s] for s in range(compared)], tolerance))
    if flips:
        report.notes.append("near-tie flips, allowed at this precision: " + "; ".join(flips))
    if not report.problems:
        report.notes.append(f"greedy tokens: the source's {golden['tokens']} on each of {len(golden['prompts'])} "
                            "prompt(s)" + (f", {len(flips)} near-tie flip(s)" if flips else ""))
    return report


def _decoder(tokenizer_file: Path):
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    return lambda ids: tokenizer.decode([int(t) for t in ids], skip_special_tokens=False)


# Each file this kind reads must have the shape `package` writes; the app reads them as data, never as code.

def read_llm_files(folder: Path, info: dict) -> tuple:
    """(contract, golden.json, golden arrays) once each file is as `package` writes it; else Tampered."""
    missing = [name for name in LLM_FILES if name not in info["files"]]
    if missing:
        raise Tampered(f"not listed in {BUNDLE_FILE}: {', '.join(missing)}")
    fmt = FORMAT_OF[info["model"]]
    if RUNTIME_OF.get(fmt) != info["runtime"]:
        raise Tampered(f"{BUNDLE_FILE} names the runtime {info['runtime']!r}, not the one of {info['model']}")
    contract = _contract(folder)
    _generation_config(folder, contract)
    golden = _golden_json(folder, contract)
    arrays = _golden_arrays(folder, contract, golden)
    _tokenizer(folder, golden)
    return contract, golden, arrays


def _json(folder: Path, name: str):
    try:
        value = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise Tampered(f"{name} is not valid JSON") from None
    if not isinstance(value, dict):
        raise Tampered(f"{name} is not a JSON object")
    return value


def _contract(folder: Path) -> DecoderContract:
    data = _json(folder, "contract.json")
    try:
        contract = DecoderContract.from_dict(data)
    except DeploykitError:
        raise Tampered("contract.json is not a cached-decoder contract") from None
    entries = data.get("entry_points")
    if data.get("inputs") != list(INPUTS) or data.get("outputs") != list(OUTPUTS) or not isinstance(entries, dict) \
            or set(entries) != {"prefill", "decode"} or not all(_plain(v) for v in entries.values()):
        raise Tampered(f"contract.json's inputs, outputs or entry points are not {', '.join(INPUTS)} -> "
                       f"{', '.join(OUTPUTS)} with prefill and decode")
    return contract


def _plain(value) -> bool:
    return isinstance(value, str) and value.isidentifier() and len(value) <= 64


def _int(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _generation_config(folder: Path, contract: DecoderContract) -> None:
    config = _json(folder, "generation_config.json")
    eos = config.get("eos_token_ids")
    bos = config.get("bos_token_id")
    ok = (config.get("max_context") == contract.max_context and config.get("prefill_len") == contract.prefill_len
          and isinstance(eos, list) and all(_int(t, 0, contract.vocab - 1) for t in eos)
          and (bos is None or _int(bos, 0, contract.vocab - 1))
          and _int(config.get("max_new_tokens"), 1, contract.max_context))
    if not ok:
        raise Tampered("generation_config.json does not agree with contract.json (max_context, prefill_len, token "
                       "ids within the vocabulary, max_new_tokens within the context)")


def _golden_json(folder: Path, contract: DecoderContract) -> dict:
    golden = _json(folder, "golden.json")
    prompts, ids = golden.get("prompts"), golden.get("prompt_ids")
    if not (isinstance(prompts, list) and 1 <= len(prompts) <= MAX_PROMPTS and all(isinstance(p, str) for p in prompts)
            and isinstance(ids, list) and len(ids) == len(prompts)
            and all(isinstance(row, list) and row and all(_int(t, 0, contract.vocab - 1) for t in row) for row in ids)):
        raise Tampered(f"golden.json's prompts and prompt_ids are not 1 to {MAX_PROMPTS} prompts with their token ids")
    tokens, top_k, near = golden.get("tokens"), golden.get("top_k"), golden.get("near_tie")
    if not _int(tokens, 1, MAX_TOKENS) or not _int(top_k, 2, min(contract.vocab, 100)) \
            or max(len(row) for row in ids) + tokens > contract.max_context:
        raise Tampered("golden.json's tokens and top_k are not counts that fit the model's context and vocabulary")
    if not isinstance(near, dict) or set(near) != {"allowed", "margin"} or type(near["allowed"]) is not bool \
            or type(near["margin"]) not in (int, float) or not 0 <= near["margin"] < math.inf:
        raise Tampered("golden.json's near_tie is not {allowed: true|false, margin: a number >= 0}")
    bundle_check._tolerance(golden.get("tolerance"))
    return golden


def _golden_arrays(folder: Path, contract: DecoderContract, golden: dict) -> dict:
    count, tokens, k = len(golden["prompts"]), golden["tokens"], golden["top_k"]
    shapes = {"greedy": (tokens,), "top_ids": (tokens, k), "top_logits": (tokens, k), "scale": (tokens,)}
    wanted = {f"{key}/{i}" for key in GOLDEN_KEYS for i in range(count)}
    arrays = read_golden(folder, wanted, "greedy, top_ids, top_logits and scale for each prompt")
    for key, value in arrays.items():
        kind = key.split("/")[0]
        integer = kind in ("greedy", "top_ids")
        if value.shape != shapes[kind] or value.dtype.kind not in ("iu" if integer else "f") or \
                (integer and value.size and not (0 <= value.min() and value.max() < contract.vocab)):
            raise Tampered(f"golden.npz's {key!r} is {value.dtype} {value.shape}, not "
                           f"{'token ids' if integer else 'floats'} of shape {shapes[kind]}")
    return arrays


def _tokenizer(folder: Path, golden: dict) -> None:
    """tokenizer.json loads and encodes each golden prompt into the ids golden.json records (what the source's
    tokenizer gave): the app's text in and out depends on it."""
    import tokenizers

    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        encoded = [tokenizer.encode(prompt).ids for prompt in golden["prompts"]]
    except Exception:       # tokenizers raises its own Exception subclass for any malformed file
        raise Tampered("tokenizer.json is not a tokenizer the tokenizers library loads") from None
    differ = [str(i + 1) for i, (a, b) in enumerate(zip(encoded, golden["prompt_ids"])) if list(a) != b]
    if differ:
        raise Tampered(f"tokenizer.json encodes prompt(s) {', '.join(differ)} into other tokens than the source's "
                       "tokenizer gave (golden.json)")

