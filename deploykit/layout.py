"""How an artifact's tensors relate to its source's axes: the permutations a converter introduced (onnx2tf
turns NCHW into NHWC, say), recorded so that every check feeds and compares in the source's layout.

    layout = Layout(input_perms={"image": [0, 2, 3, 1]})
    layout.to_dict()      # {"inputs": {"image": [0, 2, 3, 1]}, "outputs": {}}: the manifest's "layout" section

Tensors are keyed by the artifact's names. ``input_perms[name][j]`` is the source axis that artifact axis ``j``
holds; ``output_perms[name][i]`` is the artifact axis that holds source axis ``i``. A perm may be None (a
tensor whose layout is the source's). This module imports nothing of deploykit: any layer may hold a Layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Layout:
    """The recorded layout permutations of an artifact relative to its source (see the module's docstring)."""

    input_perms: dict = field(default_factory=dict)
    output_perms: dict = field(default_factory=dict)

    @property
    def permutes(self) -> bool:
        """Some tensor is transposed relative to the source (not merely named with a None perm)."""
        return any(self.input_perms.values()) or any(self.output_perms.values())

    def to_dict(self) -> dict:
        """The manifest's form: {"inputs": {name: perm}, "outputs": {name: perm}}."""
        return {"inputs": dict(self.input_perms), "outputs": dict(self.output_perms)}

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "Layout":
        """A layout from its manifest form (a missing or empty section: no permutation there)."""
        data = data or {}
        return cls(dict(data.get("inputs") or {}), dict(data.get("outputs") or {}))

    @classmethod
    def of(cls, value: "Layout | dict | None") -> "Layout":
        """``value`` as a Layout: converters written against the dict form may still pass one."""
        return value if isinstance(value, Layout) else cls.from_dict(value)

    def then(self, second: "Layout") -> "Layout":
        """This layout (source→A) followed by ``second`` (A→B): source→B.

        Inputs: a source tensor is transposed by this layout then ``second``; outputs: an artifact tensor by
        ``second`` then this one. Tensors are matched by position, since hops rename them.
        """
        if not (self.input_perms or self.output_perms):
            return second
        if not (second.input_perms or second.output_perms):
            return self
        return Layout(_merged(self.input_perms, second.input_perms, inputs=True),
                      _merged(self.output_perms, second.output_perms, inputs=False))


def _merged(first: dict, second: dict, inputs: bool) -> dict:
    """``second``'s tensors, each with its perm composed with the perm of ``first``'s tensor at its position."""
    earlier = list(first.values())
    merged = {}
    for index, (name, perm_b) in enumerate(second.items()):
        perm_a = earlier[index] if index < len(earlier) else None
        if perm_a and perm_b:
            merged[name] = [perm_a[j] for j in perm_b] if inputs else [perm_b[j] for j in perm_a]
        else:
            merged[name] = perm_b or perm_a
    return merged


# Where channels-last puts each axis of a channels-first tensor (onnx2tf's rule: NCW→NWC, NCHW→NHWC, NCDHW→NDHWC).
CHANNELS_LAST = {3: [0, 2, 1], 4: [0, 2, 3, 1], 5: [0, 2, 3, 4, 1]}
LAYOUT_CHOICES = ("auto", "none", "channels-last")


@dataclass(frozen=True)
class AxisOrder:
    """What the search found for one tensor: ``perm`` (artifact axis j holds source axis perm[j]; None: the
    source's order) and a sentence for the report ("" when nothing needed saying)."""

    perm: Optional[list]
    note: str = ""
    ambiguous: bool = False


def axis_order(source_shape: tuple, artifact_shape: tuple, mode: str = "auto",
               prefer: Optional[list] = None) -> AxisOrder:
    """The order of the source's axes in the artifact's tensor, read from the two shapes (named dims match any size).

    ``auto``: the source's own order or channels-last, whichever the shapes support better (more equal sizes, no
    conflicting one); when both fit equally (a square map whose H = W = C), the order cannot be read from the shapes:
    ``prefer`` decides — the order the converter is known to write (an exporter knows what its tool does) — else the
    source's order is taken and said to be ambiguous; when neither fits, the one permutation that explains the
    shapes, if only one does. ``none``: the source's order. ``channels-last``: channels moved last, where the shapes
    allow it.
    """
    rank = len(source_shape)
    last = CHANNELS_LAST.get(rank)
    if mode == "none" or len(artifact_shape) != rank:
        return AxisOrder(None)
    if mode == "channels-last":
        if last is None:        # no channel axis to move (rank 1, 2 or over 5)
            return AxisOrder(None)
        fits = _fit(source_shape, artifact_shape, last) is not None
        return AxisOrder(last if fits else None, "" if fits else "cannot be channels-last")
    same = _fit(source_shape, artifact_shape, list(range(rank)))
    moved = _fit(source_shape, artifact_shape, last) if last else None
    if same is not None and (moved is None or same > moved):
        return AxisOrder(None)
    if moved is not None and (same is None or moved > same):
        return AxisOrder(last, "channels last")
    if same is not None:        # both fit equally well
        return _tie(source_shape, artifact_shape, prefer)
    found = _only_order(source_shape, artifact_shape)
    return AxisOrder(found, "axes reordered" if found else "no axis order explains these shapes: taken as they are",
                     ambiguous=found is None)


def _tie(source_shape: tuple, artifact_shape: tuple, prefer: Optional[list]) -> AxisOrder:
    """A shape that reads the same in the source's order and channels-last: the preferred order when it fits."""
    rank = len(source_shape)
    if prefer is not None and len(prefer) == rank and _fit(source_shape, artifact_shape, list(prefer)) is not None:
        perm = None if list(prefer) == list(range(rank)) else list(prefer)
        written = ("channels last" if perm == CHANNELS_LAST.get(rank) else
                   "in the source's order" if perm is None else "axes reordered")
        return AxisOrder(perm, f"reads the same both ways: taken as the converter writes it, {written}")
    return AxisOrder(None, "ambiguous: its shape reads the same in the source's order and channels-last; "
                           "taken in the source's order (--layout channels-last overrides)", ambiguous=True)


def inverse(perm: Optional[list]) -> Optional[list]:
    """The axes that take the artifact's tensor back to the source's order (an output's recorded perm)."""
    return [perm.index(i) for i in range(len(perm))] if perm else None


def shown(shape: tuple) -> str:
    """(1,3,H,W)-style text of a shape (named dims by their name)."""
    return "(" + ",".join(str(d) for d in shape) + ")"


def _fit(source_shape: tuple, artifact_shape: tuple, perm: list) -> Optional[int]:
    """How many sizes agree when the artifact holds the source's axes in ``perm`` order; None on a conflict."""
    agree = 0
    for j, axis in enumerate(perm):
        a, b = source_shape[axis], artifact_shape[j]
        if isinstance(a, int) and isinstance(b, int) and a >= 0 and b >= 0:
            if a != b:
                return None
            agree += 1
    return agree


def _only_order(source_shape: tuple, artifact_shape: tuple) -> Optional[list]:
    """The one order (up to where size-1 axes go, which moves no data) whose sizes do not conflict (a named dim
    matches what is left), else None."""
    import itertools

    rank = len(source_shape)
    if rank > 6:
        return None
    best = [list(p) for p in itertools.permutations(range(rank))
            if _fit(source_shape, artifact_shape, list(p)) is not None]
    moved = {tuple(i for i in p if source_shape[i] != 1) for p in best}
    return best[0] if best and len(moved) == 1 else None
