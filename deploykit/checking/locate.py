"""Where an artifact stops computing what its source computes: the first diverging layer.

Both models run once more on the verify's own feeds with every layer's output kept
(``Artifact.capture``: ONNX Runtime with the layers as graph outputs, LiteRT with all tensors
preserved, PyTorch through an FX interpreter). Layers are matched by provenance (``deploykit.graphview``):
the weight's name, then its values, then its size and order; a layer with no counterpart is
listed as such, never guessed from the values being compared. Each pair is judged by the parity
engine against the verify's preset, in the source's order, through layout changes (NCHW ↔ NHWC).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from deploykit import parity
from deploykit.errors import DeploykitError
from deploykit.graphview import GraphView, Layer


@dataclass
class LayerRow:
    """One source layer: where it is, what it was matched to, and how far apart the two are."""

    layer: str                   # the source's name for it (module path, node name)
    op: str                      # the source's op (and the ops fused after it)
    source_tensor: str
    artifact_tensor: str = ""    # "" when the artifact has no counterpart
    matched_by: str = ""         # weight name | weight values | weight size and order
    shape: list = field(default_factory=list)
    status: str = "unmatched"    # pass | fail | unmatched | incomparable
    max_abs: Optional[float] = None
    cosine: Optional[float] = None
    relative_error: Optional[float] = None     # rmse / rms(reference)
    growth: Optional[float] = None             # relative error here minus the worst of the layers feeding it
    reason: str = ""
    artifact_op: str = ""        # the artifact's op name (ONNX node, TFLite op): what a repair can exclude


@dataclass
class LocateReport:
    reference: str
    candidate: str
    samples: int
    preset: str
    rows: list = field(default_factory=list)
    first_diverging: Optional[int] = None    # index into rows: the first layer outside the preset
    largest_growth: Optional[int] = None     # index into rows: where the relative error grows most
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def matched(self) -> int:
        return sum(row.status in ("pass", "fail") for row in self.rows)

    def summary(self) -> str:
        if self.problems:
            return "cannot locate: " + "; ".join(self.problems)
        head = f"{self.matched} of {len(self.rows)} layer(s) of {self.reference} matched in {self.candidate}"
        if self.first_diverging is None:
            return head + f"; every matched layer is within the {self.preset} preset"
        row = self.rows[self.first_diverging]
        text = f"{head}; first layer outside the {self.preset} preset: {row.layer} ({row.op}, {row.reason})"
        if self.largest_growth is not None and self.largest_growth != self.first_diverging:
            grown = self.rows[self.largest_growth]
            text += f"; the error grows most at {grown.layer} ({grown.op})"
        return text

    def to_dict(self) -> dict:
        return {"reference": self.reference, "candidate": self.candidate, "samples": self.samples,
                "preset": self.preset, "rows": [asdict(r) for r in self.rows], "first_diverging": self.first_diverging,
                "largest_growth": self.largest_growth, "problems": list(self.problems), "notes": list(self.notes),
                "summary": self.summary()}


def locate(reference, candidate, feeds: tuple, tolerance: parity.Tolerance, labels: tuple) -> LocateReport:
    """Compare ``reference`` and ``candidate`` layer by layer. Each is ``capture(feeds) -> (view, values)``;
    ``feeds`` = (reference feeds, candidate feeds), the same samples in each model's names and layout."""
    report = LocateReport(labels[0], labels[1], len(feeds[0]), tolerance.preset)
    try:
        ref_view, ref_values = reference(feeds[0])
        cand_view, cand_values = candidate(feeds[1])
    except DeploykitError as exc:       # verify goes on: --locate adds to its report, it never ends it
        report.problems.append(f"{exc.message} ({exc.remedy})" if exc.remedy else exc.message)
        return report
    ref_view, cand_view = GraphView.from_dict(ref_view), GraphView.from_dict(cand_view)
    ref_layers, cand_layers = ref_view.layers(), cand_view.layers()
    pairs = match_layers(ref_view, ref_layers, cand_view, cand_layers)
    for layer in ref_layers:
        match = pairs.get(layer.index)
        report.rows.append(_row(layer, _label(ref_view, layer), match, ref_values, cand_values, tolerance))
    _growth(report.rows, feeding_layers(ref_view, ref_layers))
    _mark(report)
    if len(cand_layers) > len(pairs):
        report.notes.append(f"{len(cand_layers) - len(pairs)} weighted layer(s) of the artifact have no source "
                            "counterpart")
    return report


def match_layers(ref_view: GraphView, ref_layers: list, cand_view: GraphView, cand_layers: list) -> dict:
    """{reference layer index: (candidate Layer, how)}: by weight name, then weight values, then weight size
    and order (paired in order where both sides have as many unmatched layers of that size between the same
    two matched layers: a layer present on one side only, such as an unused pooler, spoils only its stretch)."""
    pairs: dict = {}
    keys = (("weight name", _name_key),
            ("weight values", lambda view, layer: view.constants[layer.weight].digest))
    for how, key in keys:
        _pair_unique(pairs, how, [(layer, key(ref_view, layer)) for layer in ref_layers if layer.index not in pairs],
                     [(layer, key(cand_view, layer)) for layer in cand_layers if not _taken(pairs, layer)])
    sizes = ({layer.index: ref_view.constants[layer.weight].count for layer in ref_layers},
             {layer.index: cand_view.constants[layer.weight].count for layer in cand_layers})
    while _pair_in_order(pairs, ref_layers, cand_layers, sizes):
        pass
    return pairs


def _name_key(view: GraphView, layer: Layer):
    """A weight's name with its number of values: generated names (``onnx::MatMul_12``) recur across files by
    chance, a parameter path with the same size does not."""
    weight = view.constants[layer.weight]
    return (weight.origin, weight.count) if weight.origin else None


def _pair_in_order(pairs: dict, ref_layers: list, cand_layers: list, sizes: tuple) -> bool:
    """One pass of size-and-order pairing within each stretch between consecutive matched layers; True if any
    layer was paired (new pairs split the stretches further)."""
    bounds = [(-1, -1)] + _monotone(sorted((ref, cand.index) for ref, (cand, _how) in pairs.items()))
    bounds.append((len(ref_layers), len(cand_layers)))
    taken = {cand.index for cand, _how in pairs.values()}
    paired = False
    for (ref_from, cand_from), (ref_to, cand_to) in zip(bounds, bounds[1:]):
        refs = [layer for layer in ref_layers if ref_from < layer.index < ref_to and layer.index not in pairs]
        cands = [layer for layer in cand_layers if cand_from < layer.index < cand_to and layer.index not in taken]
        for count in {sizes[0][layer.index] for layer in refs}:
            group_ref = [layer for layer in refs if sizes[0][layer.index] == count]
            group_cand = [layer for layer in cands if sizes[1][layer.index] == count]
            if len(group_ref) == len(group_cand):
                for ref, cand in zip(group_ref, group_cand):
                    pairs[ref.index] = (cand, "weight size and order")
                paired = True
    return paired


def _monotone(anchors: list) -> list:
    """The matched pairs, sorted by reference order, that also go forward in the candidate (others are skipped)."""
    kept, last = [], -1
    for ref, cand in anchors:
        if cand > last:
            kept.append((ref, cand))
            last = cand
    return kept


def _taken(pairs: dict, layer: Layer) -> bool:
    return any(cand.index == layer.index for cand, _how in pairs.values())


def _pair_unique(pairs: dict, how: str, refs: list, cands: list) -> None:
    """Pair layers whose key occurs exactly once on each side (a shared weight is ambiguous: left for later)."""
    def unique(items: list) -> dict:
        counts = {}
        for layer, key in items:
            counts.setdefault(key, []).append(layer)
        return {key: layers[0] for key, layers in counts.items() if key and len(layers) == 1}

    ref_keys, cand_keys = unique(refs), unique(cands)
    for key, layer in ref_keys.items():
        if key in cand_keys:
            pairs[layer.index] = (cand_keys[key], how)


def _label(view: GraphView, layer: Layer) -> str:
    """The source's name for a layer: its module path (PyTorch), else its weight's name without ``.weight``
    (an ONNX initializer keeps the PyTorch parameter's path: more telling than ``node_Conv_841``)."""
    if layer.op.label != layer.op.name:
        return layer.op.label
    return view.constants[layer.weight].origin.removesuffix(".weight") or layer.op.name


def _row(layer: Layer, label: str, match, ref_values: list, cand_values: list,
         tolerance: parity.Tolerance) -> LayerRow:
    """Compare a matched layer at its group's end; when the two graphs split the layer differently (ONNX Gemm
    then a decomposed Gelu; TFLite FULLY_CONNECTED with the activation fused), at the point both have."""
    row = LayerRow(label, " → ".join(_short(t) for t in layer.chain), layer.end)
    if match is None:
        row.reason = "no counterpart in the artifact (no weight of the same name, values or size and order)"
        return row
    cand, row.matched_by = match
    row.artifact_op = cand.op.name
    tried = []
    for ref_point, cand_point in dict.fromkeys([(layer.end, cand.end), (layer.start, cand.start),
                                                (layer.start, cand.end), (layer.end, cand.start)]):
        judged = _judge(ref_point, cand_point, ref_values, cand_values, tolerance)
        if judged.status == "pass":
            return _filled(row, judged, ref_point, cand_point)
        tried.append((judged.relative_error if judged.relative_error is not None else float("inf"), len(tried),
                      judged, ref_point, cand_point))
    _error, _order, judged, ref_point, cand_point = min(tried)    # outside the preset at every point: the closest
    return _filled(row, judged, ref_point, cand_point)


def _filled(row: LayerRow, judged: LayerRow, ref_point: str, cand_point: str) -> LayerRow:
    row.source_tensor, row.artifact_tensor = ref_point, cand_point
    for name in ("shape", "status", "max_abs", "cosine", "relative_error", "reason"):
        setattr(row, name, getattr(judged, name))
    return row


def _judge(ref_point: str, cand_point: str, ref_values: list, cand_values: list,
           tolerance: parity.Tolerance) -> LayerRow:
    judged = LayerRow("", "", ref_point, cand_point)
    refs = [values.get(ref_point) for values in ref_values]
    cands = [values.get(cand_point) for values in cand_values]
    if any(v is None for v in refs + cands) or any(np.asarray(v).dtype.kind != "f" for v in refs + cands):
        judged.status, judged.reason = "incomparable", "not a floating-point tensor on both sides"
        return judged
    aligned = [align(np.asarray(c), np.shape(r)) for r, c in zip(refs, cands)]
    if any(a is None for a in aligned):
        judged.status = "incomparable"
        judged.reason = f"shape {list(np.shape(cands[0]))} cannot be laid out as {list(np.shape(refs[0]))}"
        return judged
    result = parity.compare_tensor(ref_point, cand_point, refs, aligned, tolerance)
    judged.shape, judged.max_abs, judged.cosine = list(np.shape(refs[0])), result.max_abs, result.cosine
    judged.status = "fail" if result.status == "fail" else "pass"
    judged.relative_error = _relative_error(refs, aligned)
    judged.reason = (f"max_abs {judged.max_abs:.3g}, cosine {judged.cosine:.6f}, "
                     f"relative error {judged.relative_error:.3g}")
    return judged


def _short(op_type: str) -> str:
    return op_type.removeprefix("aten.").removesuffix(".default")


def align(value: np.ndarray, shape: tuple) -> Optional[np.ndarray]:
    """``value`` in the reference's layout: as is, through the one channels-last permutation that fits (or the
    only permutation that does), or with size-1 axes dropped or added; None when no layout fits."""
    shape = tuple(shape)
    if value.shape == shape:
        return value
    if value.size != int(np.prod(shape)):
        return None
    rank = value.ndim
    if rank == len(shape) and rank >= 3:
        channels_last = (0, rank - 1) + tuple(range(1, rank - 1))
        if value.transpose(channels_last).shape == shape:
            return value.transpose(channels_last)
        fits = {p for p in itertools.permutations(range(rank)) if value.transpose(p).shape == shape}
        if len(fits) == 1:
            return value.transpose(fits.pop())
    if [d for d in value.shape if d != 1] == [d for d in shape if d != 1]:
        return value.reshape(shape)
    return None


def _relative_error(refs: list, cands: list) -> float:
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in refs])
    got = np.concatenate([np.asarray(c, np.float64).ravel() for c in cands])
    scale = float(np.sqrt(np.mean(np.square(ref)))) or 1.0
    return float(np.sqrt(np.mean(np.square(got - ref))) / scale)


def feeding_layers(view: GraphView, layers: list) -> dict:
    """{layer index: indices of the nearest layers upstream of it} (through ops without weights: q, k and v feed
    the attention's output projection; the previous block's output feeds q, k and v)."""
    producer = {name: op for op in view.ops for name in op.outputs}
    owner = {}
    for layer in layers:
        owner[layer.start], owner[layer.end] = layer.index, layer.index
    feeding = {}
    for layer in layers:
        found, seen, stack = set(), set(), [n for n in layer.op.inputs if n not in view.constants]
        while stack:
            tensor = stack.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            if tensor in owner and owner[tensor] != layer.index:
                found.add(owner[tensor])
            elif tensor in producer:
                stack.extend(n for n in producer[tensor].inputs if n and n not in view.constants)
        feeding[layer.index] = sorted(found)
    return feeding


def _growth(rows: list, feeding: dict) -> None:
    """Each compared layer's own share of the error: its relative error minus the largest among the layers that
    feed it (so a layer is not blamed for the error it receives)."""
    for index, row in enumerate(rows):
        if row.relative_error is None:
            continue
        upstream = [rows[i].relative_error for i in feeding.get(index, []) if rows[i].relative_error is not None]
        row.growth = row.relative_error - max(upstream, default=0.0)


def _mark(report: LocateReport) -> None:
    """The first layer outside the preset, and the layer where the relative error grows most."""
    compared = [(i, row) for i, row in enumerate(report.rows) if row.status in ("pass", "fail")]
    report.first_diverging = next((i for i, row in compared if row.status == "fail"), None)
    best = max(((row.growth, i) for i, row in compared if row.growth is not None), default=(0.0, None))
    report.largest_growth = best[1] if best[0] > 0 else None
