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
