"""The one comparison engine: every verify and every export check goes through here.

Values are cast to float64 before differencing; integers and booleans compare exactly;
NaN never matches. Every output's result is collected before the verdict, and the
verdict says *why*, never a bare bool.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import numpy as np

from deploykit.errors import UsageError

# Outputs whose reference is this close to zero or to a constant make every metric
# "pass" while proving nothing (a random classifier's uniform softmax, say).
_DEGENERATE_EPS = 1e-6
UNPROVEN = ("uninformative", "unverifiable")     # output statuses that neither pass nor fail


@dataclass(frozen=True)
class Tolerance:
    """When two float outputs count as equal.

    An element matches when ``|got - ref| <= atol_eff + rtol * |ref|``; with
    ``scale_by_reference`` the preset's atol is scaled by ``max(1, max|ref|)`` so
    that large logits get a proportionally larger absolute budget. An output passes
    when its mismatch fraction is at most ``max_mismatch`` and its cosine similarity
    is at least ``min_cosine``.
    """

    atol: float
    rtol: float
    min_cosine: float
    max_mismatch: float = 0.0
    scale_by_reference: bool = True
    preset: str = "custom"


PRESETS = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999, preset="fp32"),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.999, preset="fp16"),
    # int8 changes every value a little: judged mainly by direction (cosine), with element-wise
    # outliers bounded; the task-level agreement (top-1/top-5) is reported beside it.
    "int8": Tolerance(atol=5e-2, rtol=1e-1, min_cosine=0.98, max_mismatch=0.25, preset="int8"),
}


def looser_preset(a: str, b: str) -> str:
    """The looser of two presets (fp32 < fp16 < int8; a user's "+custom" counts as its base); ``a`` when either is
    not one of the three."""
    order = ("fp32", "fp16", "int8")
    base_a, base_b = a.split("+")[0], b.split("+")[0]
    if base_a not in order or base_b not in order:
        return a
    return b if order.index(base_b) > order.index(base_a) else a


def tolerance_for(precision: str = "fp32", atol: Optional[float] = None,
                  rtol: Optional[float] = None) -> Tolerance:
    """The preset for ``precision``; a user's --atol/--rtol replace its values and are absolute."""
    if precision not in PRESETS:
        raise UsageError(f"unknown precision {precision!r}", f"use one of {', '.join(PRESETS)}")
    base = PRESETS[precision]
    for label, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and (not np.isfinite(value) or value < 0):
            raise UsageError(f"{label} must be a non-negative number, got {value}", f"e.g. {label} 1e-4")
    if atol is None and rtol is None:
        return base
    return replace(base, atol=base.atol if atol is None else atol, rtol=base.rtol if rtol is None else rtol,
                   scale_by_reference=atol is None, preset=f"{base.preset}+custom")


@dataclass
class OutputResult:
    name: str
    candidate_name: str
    status: str = "pass"             # pass | fail | uninformative | unverifiable (nothing here could run the candidate)
    reason: str = ""
    shape: list = field(default_factory=list)
    dtype: str = ""
    candidate_dtype: str = ""
    max_abs: Optional[float] = None
    mean_abs: Optional[float] = None
    max_rel: Optional[float] = None
    rmse: Optional[float] = None
    cosine: Optional[float] = None
    mismatch_fraction: Optional[float] = None
    atol_used: Optional[float] = None
    top1_agreement: Optional[float] = None
    top5_agreement: Optional[float] = None
    failing_samples: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class ParityReport:
    """Result of comparing one candidate against one reference over N samples."""

    reference: str
    candidate: str
    samples: int
    tolerance: Tolerance
    outputs: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    location: Optional[dict] = None       # the layer table of deploykit.checking.locate, when it was asked for
    compared_on: Optional[tuple] = None   # (count, kind) of the feeds it was judged on, when not the seeded samples
    pairing: str = "by name"              # how outputs were paired with the reference's (one of PAIRINGS)

    @property
    def passed(self) -> bool:
        return not self.problems and all(o.passed for o in self.outputs)

    @property
    def uninformative_only(self) -> bool:
        """Nothing differs, but some output proves nothing — its reference cannot tell (a constant or ~0 output), or
        no runtime here could run the candidate (``unverifiable``): unverified, not failed (--keep-unverified keeps
        such an artifact, marked unverified)."""
        return (not self.problems and bool(self.outputs) and all(o.status in ("pass",) + UNPROVEN
                                                                  for o in self.outputs)
                and any(o.status in UNPROVEN for o in self.outputs))

    @property
    def unverifiable(self) -> bool:
        """The candidate was never run: no runtime on this host runs its format (see ``unverifiable``)."""
        return any(o.status == "unverifiable" for o in self.outputs)

    @property
    def failing_samples(self) -> list:
        return sorted({s for o in self.outputs for s in o.failing_samples})

    def summary(self) -> str:
        if self.unverifiable and self.uninformative_only:
            reasons = sorted({o.reason for o in self.outputs if o.status == "unverifiable"})
            return f"UNVERIFIED: {self.candidate} was not run: {'; '.join(reasons)}; static checks only"
        if self.passed:
            worst = max((o.max_abs or 0.0) for o in self.outputs) if self.outputs else 0.0
            return f"PASS: {len(self.outputs)} output(s) match on {self.samples} sample(s), max_abs {worst:.3g}"
        reasons = self.problems + [f"{o.name}: {o.reason}" for o in self.outputs if not o.passed]
        where = f" on sample(s) {', '.join(map(str, self.failing_samples))} of {self.samples}" \
            if self.failing_samples else ""
        located = f" — {self.location['summary']}" if self.location else ""
        return f"FAIL{where}: " + "; ".join(reasons) + located

    def to_dict(self) -> dict:
        return {
            "passed": self.passed, "reference": self.reference, "candidate": self.candidate,
            "samples": self.samples, "tolerance": asdict(self.tolerance),
            "outputs": [asdict(o) for o in self.outputs], "problems": list(self.problems),
            "notes": list(self.notes), "pairing": self.pairing, "summary": self.summary(),
            **({"unverifiable": True} if self.unverifiable else {}),
            **({"location": self.location} if self.location else {}),
        }


def unverifiable(reference: str, candidate: str, outputs: list, reason: str, tolerance: Tolerance) -> ParityReport:
    """The report on a candidate no runtime on this host can run (``reason``: why): no sample compared, every output
    (by name) "unverifiable". It never passes; like a reference that cannot tell, it is kept only with
    --keep-unverified, marked unverified (``conversion.keep_unverifiable``)."""
    report = ParityReport(reference, candidate, 0, tolerance)
    report.outputs = [OutputResult(name, name, status="unverifiable", reason=reason) for name in outputs]
    return report


def permute(arrays: dict, perms: Optional[dict]) -> dict:
    """Apply recorded layout permutations ({name: axes}) to a dict of arrays."""
    if not perms:
        return arrays
    return {k: (np.transpose(v, perms[k]) if perms.get(k) else v) for k, v in arrays.items()}


def compare(references: list, candidates: list, tolerance: Tolerance, reference: str = "reference",
            candidate: str = "candidate", output_perms: Optional[dict] = None,
            aliases: Optional[dict] = None) -> ParityReport:
    """Compare per-sample output dicts of a candidate against those of the reference.

    Outputs are paired by name first (``pair_names``; ``aliases``: {name: other names of that tensor}, such as a
    TFLite signature name's flatbuffer tensor name), by shape and position only where names cannot pair them."""
    report = ParityReport(reference, candidate, len(references), tolerance)
    if len(references) != len(candidates):
        report.problems.append(f"{len(references)} reference runs but {len(candidates)} candidate runs")
        return report
    if not references:
        report.problems.append("no samples were compared")
        return report
    candidates = [permute(c, output_perms) for c in candidates]
    for ref_name, cand_name in _pair_outputs(references[0], candidates[0], report, aliases):
        refs = [r[ref_name] for r in references]
        cands = [c[cand_name] for c in candidates]
        report.outputs.append(_compare_output(ref_name, cand_name, refs, cands, tolerance))
    return report


def compare_tensor(name: str, candidate_name: str, refs: list, cands: list, tolerance: Tolerance) -> OutputResult:
    """One tensor over every sample, judged as ``compare`` judges an output (the locator's per-layer verdict)."""
    return _compare_output(name, candidate_name, refs, cands, tolerance)


def _pair_outputs(references: dict, candidates: dict, report: ParityReport, aliases: Optional[dict]) -> list:
    """Each reference output's candidate (see ``pair_names``); the report says which pairing was used."""
    shapes = ({n: np.shape(v) for n, v in references.items()}, {n: np.shape(v) for n, v in candidates.items()})
    pairs, how, unmatched = pair_names(list(references), list(candidates), shapes, aliases)
    report.pairing = how
    renamed = [f"{a}→{b}" for a, b in pairs if a != b]
    if renamed:
        report.notes.append(f"outputs paired {how}: " + ", ".join(renamed))
    if unmatched:
        report.problems.append(f"the reference has {len(references)} output(s) ({', '.join(references)}) but the "
                               f"candidate has {len(candidates)} ({', '.join(candidates)}); no counterpart for "
                               + ", ".join(unmatched))
    return pairs


PAIRINGS = ("by name", "by normalised name", "by TensorFlow output index", "by shape and position",
            "by position")


def pair_names(ref_names: list, cand_names: list, shapes: Optional[tuple] = None,
               aliases: Optional[dict] = None) -> tuple:
    """(pairs [(reference name, candidate name)], how, reference names left without a counterpart).

    Tensors are paired, weakest step last: (1) the same name, or a name a runtime records for the same tensor
    (``aliases``: a TFLite signature name and its flatbuffer tensor name); (2) the same name after exporters'
    mangling (``normalised_name``: ``:0`` suffixes, ``serving_default_`` prefixes, sanitised characters, onnx2tf's
    ``Identity_k`` for the k-th output); (2b) a SavedModel's output keys against a graph's
    ``StatefulPartitionedCall:k`` (``_by_tf_index``); (3) with ``shapes`` ({name: shape} for each side), the one candidate of
    the same shape, or same-shaped tensors in order; (4) what is left, by position when the counts agree. ``how``
    names the weakest step used (one of PAIRINGS).
    """
    pairs: dict = {}
    steps = [(_exact, "by name"), (_normalised, "by normalised name"), (_by_tf_index, "by TensorFlow output index")]
    if shapes:
        steps.append((_by_shape, "by shape and position"))
    steps.append((_by_position, "by position"))
    how = "by name"
    for step, label in steps:
        rest_ref = [n for n in ref_names if n not in pairs]
        rest_cand = [n for n in cand_names if n not in pairs.values()]
        if not rest_ref or not rest_cand:
            break
        found = step(rest_ref, rest_cand, shapes, aliases or {})
        if found:
            pairs.update(found)
            how = label
    ordered = [(n, pairs[n]) for n in ref_names if n in pairs]
    return ordered, how, [n for n in ref_names if n not in pairs]


def normalised_name(name: str) -> str:
    """``name`` without the marks exporters add: TensorFlow's ``:0``, a signature's ``serving_default_`` prefix,
    characters a converter sanitises (``.``, ``/``, ``:``, ``-`` → ``_``), case, a trailing ``_0``/``:0`` index
    (``output`` is ``output_0``)."""
    text = re.sub(r"^serving_default_", "", name.strip())
    text = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()
    return re.sub(r"_0$", "", text) or text


def _exact(refs: list, cands: list, _shapes, aliases: dict) -> dict:
    found = {n: n for n in refs if n in cands}
    for ref in (n for n in refs if n not in found):
        known = set(aliases.get(ref, ())) | {c for c in cands if ref in aliases.get(c, ())}
        hits = [c for c in cands if c in known and c not in found.values()]
        if len(hits) == 1:
            found[ref] = hits[0]
    return found


def _normalised(refs: list, cands: list, shapes, _aliases) -> dict:
    ref_keys, cand_keys = _unique_keys(refs), _unique_keys(cands)
    found = {ref_keys[k]: cand_keys[k] for k in ref_keys if k in cand_keys}
    identity = [c for c in cands if re.fullmatch(r"Identity(_\d+)?", c) and c not in found.values()]
    left = [n for n in refs if n not in found]
    if identity and len(identity) == len([c for c in cands if c not in found.values()]) == len(left):
        # onnx2tf names the k-th output of the ONNX graph Identity_k (Identity for k = 0)
        index = {c: int(c.rpartition("_")[2]) if "_" in c else 0 for c in identity}
        paired = {left[k]: c for c, k in index.items()} if sorted(index.values()) == list(range(len(left))) else {}
        if not shapes or all(tuple(shapes[0].get(r, ())) == tuple(shapes[1].get(c, ())) for r, c in paired.items()):
            found.update(paired)      # never against the shapes: the shape step pairs those
    return found


_TF_CALL_OUTPUT = re.compile(r"(?:Stateful)?PartitionedCall(?:_\d+)?:(\d+)")


def _by_tf_index(refs: list, cands: list, shapes, _aliases) -> dict:
    """A SavedModel signature's outputs are a dict; TensorFlow flattens a dict in sorted key order, so its graph's
    ``StatefulPartitionedCall:k`` (the names tf2onnx and the TFLite converter keep) is the k-th key in sorted order.
    Either side may hold the keys. Pairs nothing unless the indices are exactly 0..n-1 and the shapes agree."""
    for keys, indexed, flip in ((refs, cands, False), (cands, refs, True)):
        index = {n: int(m.group(1)) for n in indexed if (m := _TF_CALL_OUTPUT.fullmatch(n))}
        if len(index) != len(indexed) or sorted(index.values()) != list(range(len(keys))) or \
                any(_TF_CALL_OUTPUT.fullmatch(k) for k in keys):
            continue
        by_key = {key: next(n for n, k in index.items() if k == i) for i, key in enumerate(sorted(keys))}
        pairs = {v: k for k, v in by_key.items()} if flip else by_key
        if shapes and any(tuple(shapes[0].get(r, ())) != tuple(shapes[1].get(c, ())) for r, c in pairs.items()):
            return {}
        return pairs
    return {}


def _unique_keys(names: list) -> dict:
    keys: dict = {}
    for name in names:
        keys.setdefault(normalised_name(name), []).append(name)
    return {k: v[0] for k, v in keys.items() if len(v) == 1}


def _by_shape(refs: list, cands: list, shapes: tuple, _aliases) -> dict:
    """Same-shaped tensors, in order, where each shape has as many tensors on both sides (never a tensor of
    another shape while one of its own shape is there)."""
    ref_shapes, cand_shapes = shapes
    found = {}
    for shape in dict.fromkeys(tuple(ref_shapes.get(n, ())) for n in refs):
        same_ref = [n for n in refs if tuple(ref_shapes.get(n, ())) == shape]
        same_cand = [n for n in cands if tuple(cand_shapes.get(n, ())) == shape]
        if len(same_ref) == len(same_cand):
            found.update(zip(same_ref, same_cand))
    return found


def _by_position(refs: list, cands: list, _shapes, _aliases) -> dict:
    return dict(zip(refs, cands)) if len(refs) == len(cands) else {}


def _compare_output(name: str, cand_name: str, refs: list, cands: list, tol: Tolerance) -> OutputResult:
    result = OutputResult(name, cand_name, shape=list(np.shape(refs[0])), dtype=str(np.asarray(refs[0]).dtype),
                          candidate_dtype=str(np.asarray(cands[0]).dtype))
    for index, (ref, got) in enumerate(zip(refs, cands)):
        if np.shape(ref) != np.shape(got):
            result.status, result.reason = "fail", f"shape {list(np.shape(got))} != reference {list(np.shape(ref))}"
            result.failing_samples = [index]
            return result
    ref_kind, got_kind = np.asarray(refs[0]).dtype.kind, np.asarray(cands[0]).dtype.kind
    if (ref_kind == "f") != (got_kind == "f"):
        result.status, result.reason = "fail", f"dtype {result.candidate_dtype} != reference {result.dtype}"
        return result
    if ref_kind != "f":
        return _compare_exact(result, refs, cands)
    return _compare_float(result, refs, cands, tol)


def _compare_exact(result: OutputResult, refs: list, cands: list) -> OutputResult:
    unequal = [np.asarray(r) != np.asarray(c) for r, c in zip(refs, cands)]
    total = sum(u.size for u in unequal) or 1
    result.mismatch_fraction = float(sum(int(u.sum()) for u in unequal) / total)
    diffs = [np.abs(np.asarray(r, np.float64) - np.asarray(c, np.float64)) for r, c in zip(refs, cands)]
    result.max_abs = float(max((d.max() if d.size else 0.0) for d in diffs))
    result.failing_samples = [i for i, u in enumerate(unequal) if u.any()]
    if result.failing_samples:
        result.status = "fail"
        result.reason = f"{result.mismatch_fraction:.2%} of integer values differ (exact match required)"
    return result


def _compare_float(result: OutputResult, refs: list, cands: list, tol: Tolerance) -> OutputResult:
    ref_all = np.concatenate([np.asarray(r, np.float64).ravel() for r in refs])
    got_all = np.concatenate([np.asarray(c, np.float64).ravel() for c in cands])
    finite_ref = ref_all[np.isfinite(ref_all)]
    scale = float(np.abs(finite_ref).max()) if finite_ref.size else 0.0
    atol = tol.atol * max(1.0, scale) if tol.scale_by_reference else tol.atol
    result.atol_used = atol
    bad = _outside(ref_all, got_all, atol, tol.rtol)
    with np.errstate(invalid="ignore"):
        diff = np.where(bad | np.isfinite(ref_all), np.abs(got_all - ref_all), 0.0)  # equal infinities differ by 0
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN never matches, not even NaN
    _fill_metrics(result, ref_all, got_all, diff, bad, atol)
    result.failing_samples = _failing_samples(refs, cands, atol, tol.rtol)
    _fill_topk(result, refs, cands)
    degenerate = _degenerate_reason(refs, ref_all, scale)
    if result.mismatch_fraction > tol.max_mismatch or not result.cosine >= tol.min_cosine:
        result.status = "fail"
        result.reason = (f"{result.mismatch_fraction:.2%} of values outside atol {atol:.3g} + rtol {tol.rtol:g}"
                         f" (max_abs {result.max_abs:.3g}, cosine {result.cosine:.6f})" + _non_finite_note(ref_all,
                                                                                                  got_all))
    elif degenerate:
        result.status = "uninformative"
        result.reason = (f"{_seen(degenerate, scale, len(refs))}, so matching proves nothing — give trained weights "
                         "(random-init networks collapse), realistic inputs with --inputs, or logits rather than "
                         "probabilities")
    return result


def _outside(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Elements that do not match. Finite pairs: |got - ref| > atol + rtol·|ref|. Non-finite values compare by
    exact class: +inf only matches +inf, -inf only -inf, NaN nothing (inf <= inf must never pass a sign flip)."""
    both_finite = np.isfinite(ref) & np.isfinite(got)
    with np.errstate(invalid="ignore"):
        close = np.abs(got - ref) <= atol + rtol * np.abs(np.where(both_finite, ref, 0.0))
        same_infinity = np.isinf(ref) & (ref == got)
    return np.where(both_finite, ~close, ~same_infinity)


def _non_finite_note(ref: np.ndarray, got: np.ndarray) -> str:
    ref_bad, got_bad = int((~np.isfinite(ref)).sum()), int((~np.isfinite(got)).sum())
    if not ref_bad and not got_bad:
        return ""
    differ = int((~np.isfinite(ref) | ~np.isfinite(got))[_outside(ref, got, 0.0, 0.0)].sum())
    return (f"; non-finite values: {ref_bad} in the reference, {got_bad} in the candidate, {differ} of them not "
            "the same inf/NaN")


def _fill_metrics(result: OutputResult, ref: np.ndarray, got: np.ndarray, diff: np.ndarray,
                  bad: np.ndarray, atol: float) -> None:
    finite = np.isfinite(diff)
    result.max_abs = float(diff.max()) if diff.size else 0.0
    result.mean_abs = float(diff[finite].mean()) if finite.any() else float("inf")
    result.rmse = float(np.sqrt(np.mean(np.square(diff)))) if diff.size else 0.0
    significant = (np.abs(ref) > atol) & np.isfinite(ref)
    result.max_rel = float((diff[significant] / np.abs(ref[significant])).max()) if significant.any() else 0.0
    result.mismatch_fraction = float(bad.mean()) if bad.size else 0.0
    both_finite = np.isfinite(ref) & np.isfinite(got)
    # Direction of the finite part; non-finite pairs are judged by class in the mismatch fraction.
    result.cosine = _cosine(ref[both_finite], got[both_finite]) if both_finite.any() else float("nan")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _failing_samples(refs: list, cands: list, atol: float, rtol: float) -> list:
    return [index for index, (r, c) in enumerate(zip(refs, cands))
            if _outside(np.asarray(r, np.float64).ravel(), np.asarray(c, np.float64).ravel(), atol, rtol).any()]


def _fill_topk(result: OutputResult, refs: list, cands: list) -> None:
    """Top-1/top-5 agreement for outputs shaped like class scores: [batch, classes]."""
    if len(result.shape) != 2 or result.shape[1] < 2:
        return
    ref = np.concatenate([np.asarray(r) for r in refs])
    got = np.concatenate([np.asarray(c) for c in cands])
    ref_top1 = ref.argmax(axis=1)
    result.top1_agreement = float(np.mean(ref_top1 == got.argmax(axis=1)))
    if result.shape[1] >= 5:
        got_top5 = np.argsort(-got, axis=1)[:, :5]
        result.top5_agreement = float(np.mean([t in row for t, row in zip(ref_top1, got_top5)]))


def degenerate_reason(refs: list) -> str:
    """Why one output's reference values (one array per sample) cannot tell a right candidate from a wrong one,
    with the largest |value| seen; "" when they can."""
    ref_all = np.concatenate([np.asarray(r, np.float64).ravel() for r in refs]) if refs else np.zeros(0)
    finite = ref_all[np.isfinite(ref_all)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    reason = _degenerate_reason(refs, ref_all, scale) if ref_all.size else ""
    return _seen(reason, scale, len(refs)) if reason else ""


def _seen(reason: str, scale: float, samples: int) -> str:
    return f"{reason} (max |reference| {scale:.3g} over {samples} samples)"


def _degenerate_reason(refs: list, ref_all: np.ndarray, scale: float) -> str:
    if not np.isfinite(ref_all).all():
        return ""
    if scale <= _DEGENERATE_EPS:
        return "the reference output is (near) zero everywhere"
    if float(ref_all.max() - ref_all.min()) <= _DEGENERATE_EPS * max(1.0, scale):
        return "the reference output is one constant value"
    if len(refs) > 1:
        first = np.asarray(refs[0], np.float64)
        spread = max(float(np.abs(np.asarray(r, np.float64) - first).max()) for r in refs[1:])
        if spread <= _DEGENERATE_EPS * max(1.0, scale):
            return "the reference output is the same for every input sample"
    return ""
