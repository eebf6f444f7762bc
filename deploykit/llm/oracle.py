"""The generation oracle: does a cached-decoder artifact generate what its source generates, and if not, where?

Four stages, each judged through the one parity engine (``deploykit.parity.compare_tensor``) where values are
compared, over every prompt:

(a) **prefill** — the logits of every prompt token against the source's forward over the prompt;
(b) **decode** — each cached decode step (teacher-forced on the source's tokens) against the source's *full
    recomputation* of the same prefix; the first failing step is named with its position;
(c) **greedy** — the artifact's own greedy tokens equal the source's for N tokens, or the first diverging step is
    named with both tokens and the source's top-2 logit margin there. A margin within the precision's logit
    tolerance is a *near-tie flip*: allowed for quantized artifacts, never for fp32;
(d) **perplexity** — on a bundled public-domain text, the artifact's perplexity within the precision's bound of
    the source's (fp32: 1 %).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from deploykit.parity import PRESETS, Tolerance, compare_tensor


@dataclass(frozen=True)
class Judge:
    """How a precision is judged: the logits tolerance, whether near-tie flips are allowed (and the margin, as a
    fraction of the step's largest |logit|, under which a flip counts as one), and the perplexity bound."""

    precision: str
    tolerance: Tolerance
    flips: bool
    flip_margin: float
    perplexity_bound: float


# Quantized weights move every logit a little: their steps are judged by direction (cosine), their text by
# near-tie flips and perplexity. The bounds are stated in docs/llm.md with what they were measured on.
JUDGES = {
    "fp32": Judge("fp32", PRESETS["fp32"], False, 0.0, 0.01),
    # min_cosine as deploykit's int8 preset has it (parity.PRESETS["int8"]): SmolLM2 with int8 activations (ONNX
    # Runtime's only fast 8-bit kernel) bottoms out at 0.986 on one step, with its text and perplexity (+0.9 %) intact.
    "int8": Judge("int8", Tolerance(atol=0.1, rtol=0.1, min_cosine=0.98, max_mismatch=1.0, preset="llm-int8"),
                  True, 0.05, 0.05),
    "int4": Judge("int4", Tolerance(atol=0.2, rtol=0.2, min_cosine=0.95, max_mismatch=1.0, preset="llm-int4"),
                  True, 0.1, 0.25),
}
# Each export --quantize mode's judge.
MODE_JUDGE = {"fp32": "fp32", "int8": "int8", "dynamic": "int8", "int4": "int4", "8da4w": "int4"}


@dataclass
class Divergence:
    step: int                   # 0-based index of the first differing generated token
    position: int               # its position in the sequence
    source_token: int
    artifact_token: int
    source_text: str
    artifact_text: str
    margin: float               # the source's top-1 minus top-2 logit at that step
    near_tie: bool


@dataclass
class PromptResult:
    prompt: str
    prompt_tokens: int
    prefill: dict                           # the parity engine's OutputResult, as a dict
    worst_step: Optional[dict] = None       # the decode step with the largest max_abs
    first_failing_step: Optional[dict] = None
    divergence: Optional[Divergence] = None
    source_text: str = ""
    artifact_text: str = ""


@dataclass
class OracleReport:
    source: str
    artifact: str
    runtime: str
    precision: str
    tokens: int
    prompts: list = field(default_factory=list)
    perplexity: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)      # stage -> {"passed": bool, "detail": str}
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and bool(self.stages) and all(s["passed"] for s in self.stages.values())

    def summary(self) -> str:
        if self.passed:
            return ("PASS: " + "; ".join(s["detail"] for s in self.stages.values()))
        failing = [f"{name}: {s['detail']}" for name, s in self.stages.items() if not s["passed"]]
        return "FAIL: " + "; ".join(self.problems + failing)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "summary": self.summary(), "source": self.source, "artifact": self.artifact,
                "runtime": self.runtime, "precision": self.precision, "tokens": self.tokens,
                "stages": self.stages, "perplexity": self.perplexity, "problems": self.problems,
                "notes": self.notes, "prompts": [_prompt_dict(p) for p in self.prompts]}


def _prompt_dict(result: PromptResult) -> dict:
    data = asdict(result)
    return data


def judge_for(mode: str) -> Judge:
    return JUDGES[MODE_JUDGE.get(mode, "int4")]


def judge(reference: dict, candidate: dict, *, prompts: list, prompt_ids: list, judge_: Judge, decode,
          names: tuple, tokens: int) -> OracleReport:
    """The oracle's report from the two jobs' arrays (``reference``: the source's, ``candidate``: the artifact's).
    ``decode(ids) -> str`` turns tokens into text; ``names``: (source, artifact, runtime)."""
    report = OracleReport(*names, precision=judge_.precision, tokens=tokens)
    for index, text in enumerate(prompts):
        report.prompts.append(_judge_prompt(index, text, prompt_ids[index], reference, candidate, judge_, decode))
    report.stages["prefill"] = _prefill_stage(report.prompts)
    report.stages["decode"] = _decode_stage(report.prompts, tokens, judge_)
    report.stages["greedy"] = _greedy_stage(report.prompts, judge_, tokens)
    report.perplexity = _perplexity(reference.get("nll"), candidate.get("nll"))
    report.stages["perplexity"] = _perplexity_stage(report.perplexity, judge_)
    return report


def _judge_prompt(index, text, ids, reference, candidate, judge_, decode) -> PromptResult:
    tol = judge_.tolerance
    prefill = compare_tensor("prefill logits", "logits", [reference[f"prefill_{index}"]],
                             [candidate[f"prefill_{index}"]], tol)
    result = PromptResult(text, len(ids), asdict(prefill))
    ref_steps, cand_steps = reference[f"steps_{index}"], candidate[f"steps_{index}"]
    for step in range(min(len(ref_steps), len(cand_steps))):
        one = compare_tensor(f"decode step {step + 1}", "logits", [ref_steps[step][None]], [cand_steps[step][None]],
                             tol)
        entry = {"step": step + 1, "position": len(ids) + step, "status": one.status, "reason": one.reason,
                 "max_abs": one.max_abs, "cosine": one.cosine, "top1_agreement": one.top1_agreement}
        if result.worst_step is None or (one.max_abs or 0) > (result.worst_step["max_abs"] or 0):
            result.worst_step = entry
        if one.status == "fail" and result.first_failing_step is None:
            result.first_failing_step = entry
    ref_tokens, cand_tokens = reference[f"greedy_{index}"], candidate[f"greedy_{index}"]
    result.source_text, result.artifact_text = decode(list(ref_tokens)), decode(list(cand_tokens))
    differs = np.nonzero(np.asarray(ref_tokens) != np.asarray(cand_tokens))[0]
    if differs.size:
        step = int(differs[0])
        logits = reference[f"prefill_{index}"][-1] if step == 0 else ref_steps[step - 1]
        top = np.sort(logits.astype(np.float64))[-2:]
        margin = float(top[1] - top[0])
        limit = judge_.flip_margin * max(1.0, float(np.abs(logits).max()))
        result.divergence = Divergence(step, len(ids) + step, int(ref_tokens[step]), int(cand_tokens[step]),
                                       decode([int(ref_tokens[step])]), decode([int(cand_tokens[step])]), margin,
                                       judge_.flips and margin <= limit)
    return result


def _prefill_stage(prompts: list) -> dict:
    failing = [(i, p) for i, p in enumerate(prompts, 1) if p.prefill["status"] == "fail"]
    worst = max((p.prefill["max_abs"] or 0.0) for p in prompts) if prompts else 0.0
    if failing:
        i, p = failing[0]
        return {"passed": False, "detail": f"prompt {i}'s prefill logits differ ({p.prefill['reason']})"}
    return {"passed": bool(prompts), "detail": f"prefill logits match on {len(prompts)} prompt(s) (max_abs {worst:.3g})"}


def _decode_stage(prompts: list, tokens: int, judge_: Judge) -> dict:
    for i, p in enumerate(prompts, 1):
        if p.first_failing_step:
            s = p.first_failing_step
            why = (f"beyond the {judge_.precision} bound (cosine >= {judge_.tolerance.min_cosine})" if judge_.flips
                   else "every earlier step matched, so the cache or the position is wrong there")
            return {"passed": False, "detail": f"prompt {i}, decode step {s['step']} (position {s['position']}) "
                    f"differs from the source's full recomputation: max_abs {s['max_abs']:.3g}, cosine "
                    f"{s['cosine']:.6f} — {why}"}
    worst = max(((p.worst_step or {}).get("max_abs") or 0.0) for p in prompts) if prompts else 0.0
    return {"passed": bool(prompts), "detail": f"{max(tokens - 1, 0)} cached decode steps match the full "
            f"recomputation on {len(prompts)} prompt(s) (max_abs {worst:.3g})"}


def _greedy_stage(prompts: list, judge_: Judge, tokens: int) -> dict:
    flips = []
    for i, p in enumerate(prompts, 1):
        d = p.divergence
        if d is None:
            continue
        what = (f"prompt {i} diverges at generated token {d.step + 1} (position {d.position}): source "
                f"{d.source_token} {d.source_text!r}, artifact {d.artifact_token} {d.artifact_text!r}, source's top-2 "
                f"margin {d.margin:.3g}")
        if not d.near_tie:
            why = "fp32 must match exactly" if not judge_.flips else "not a near-tie"
            return {"passed": False, "detail": f"{what} ({why})"}
        flips.append(what + " (a near-tie flip, allowed at this precision)")
    if flips:
        return {"passed": True, "detail": f"{len(flips)} near-tie flip(s): " + "; ".join(flips)}
    return {"passed": bool(prompts), "detail": f"greedy tokens identical for {tokens} tokens on {len(prompts)} prompt(s)"}


def _perplexity(nll_source, nll_artifact) -> dict:
    if nll_source is None or nll_artifact is None or not len(nll_source) or len(nll_source) != len(nll_artifact):
        return {}
    source = math.exp(float(np.mean(nll_source)))
    artifact = math.exp(float(np.mean(nll_artifact)))
    return {"source": source, "artifact": artifact, "delta": artifact / source - 1.0, "tokens": int(len(nll_source))}


def _perplexity_stage(ppl: dict, judge_: Judge) -> dict:
    if not ppl:
        return {"passed": False, "detail": "no perplexity could be computed (the text gave no token window)"}
    ok = abs(ppl["delta"]) <= judge_.perplexity_bound and math.isfinite(ppl["artifact"])
    return {"passed": ok, "detail": f"perplexity {ppl['artifact']:.4g} vs source {ppl['source']:.4g} "
            f"({ppl['delta']:+.2%}, bound ±{judge_.perplexity_bound:.0%}) on {ppl['tokens']} tokens"}
