"""What `inspect --readiness` answers, as objects: per artifact, one coverage table per accelerator or delegate the
app could hand the model to, each saying how much of the model it takes, what it refuses and why, where the verdict
comes from, and the known rewrite that would fix a refusal.

Plain data: no framework is imported here. The probes (``deploykit.readiness.tflite``, ``.onnx``, ``.executorch``)
run in a child and return ``to_dict()`` forms; the parent rebuilds the objects with ``from_dict``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

# One vocabulary for every table. ORT's mobile checker says YES/MAYBE/NO from partitions and coverage; deploykit's
# own predictions (the LiteRT GPU delegate) use the same thresholds so the columns compare, and a measured table
# (what the runtime here really delegated) says ALL, PARTIAL or NONE.
YES, MAYBE, NO = "YES", "MAYBE", "NO"
ALL, PARTIAL, NONE = "ALL", "PARTIAL", "NONE"
NO_STATIC_ANSWER = "no static answer"


def suitability(supported: int, total: int, partitions: int) -> str:
    """ORT's mobile checker rule (usability_checker.PartitioningInfo.suitability), applied to any delegate: one
    partition over > 75 % of the nodes is YES, > 50 % MAYBE; two partitions over > 75 % MAYBE; anything else NO —
    every extra partition is a device round trip that usually costs more than it saves."""
    if total <= 0 or partitions <= 0:
        return NO
    share = supported / total * 100
    if partitions == 1:
        return YES if share > 75 else MAYBE if share > 50 else NO
    if partitions == 2:
        return MAYBE if share > 75 else NO
    return NO


def measured_verdict(supported: int, total: int) -> str:
    """ALL / PARTIAL / NONE of a delegation that really happened here."""
    return ALL if total and supported == total else NONE if not supported else PARTIAL


@dataclass(frozen=True)
class OpIssue:
    """An operator a delegate refuses: how many nodes, why, and which source says so."""

    op: str
    count: int
    reason: str
    source: str
    nodes: tuple = ()          # node indices (the first few), for finding them in a graph viewer
    fix: str = ""              # the known rewrite, when there is one

    @classmethod
    def from_dict(cls, data: dict) -> "OpIssue":
        return cls(op=str(data["op"]), count=int(data["count"]), reason=str(data["reason"]),
                   source=str(data["source"]), nodes=tuple(data.get("nodes", ())), fix=str(data.get("fix", "")))


@dataclass(frozen=True)
class Fix:
    """A rewrite deploykit can make itself, with the readiness it was seen to give (``checked``) — never a promise
    that was not re-run."""

    op: str
    rewrite: str
    nodes: int
    before: str                 # e.g. "CoreML NeuralNetwork: 99/100 nodes, 2 partitions, MAYBE"
    after: str                  # the same table on the rewritten model

    @classmethod
    def from_dict(cls, data: dict) -> "Fix":
        return cls(**{key: data[key] for key in ("op", "rewrite", "before", "after")}, nodes=int(data["nodes"]))


@dataclass(frozen=True)
class Coverage:
    """One delegate's (or execution provider's) take on one artifact."""

    runtime: str                # the deploykit runtime it belongs to: litert, onnxruntime, executorch, ...
    target: str                 # XNNPACK (CPU), GPU delegate, NNAPI, CoreML NeuralNetwork, ...
    source: str                 # where the verdict comes from (tool and version, or the rules' source file)
    verdict: str
    measured: bool = False      # True: what the runtime here did; False: predicted from published rules
    supported: Optional[int] = None
    total: Optional[int] = None
    partitions: Optional[int] = None
    flop_share: Optional[float] = None
    unsupported: tuple = ()     # OpIssue
    blockers: tuple = ()        # what else keeps nodes off it (dynamic dims, with the --input that fixes them)
    if_fixed_shapes: str = ""   # the verdict with every dim fixed, when the tool computes it
    notes: tuple = ()
    unit: str = "nodes"         # what supported/total count: graph nodes, or a program's instructions (ExecuTorch)

    @property
    def share(self) -> Optional[float]:
        """Fraction of nodes taken (None when the tool gives no node counts)."""
        return None if not self.total or self.supported is None else self.supported / self.total

    def summary(self) -> str:
        """One cell: "99/100 nodes · 2 partitions · MAYBE"."""
        parts = []
        if self.total:
            parts.append(f"{self.supported}/{self.total} {self.unit}")
        if self.partitions is not None:
            parts.append(f"{self.partitions} partition{'s' * (self.partitions != 1)}")
        if self.flop_share is not None:
            parts.append(f"{self.flop_share:.0%} of FLOPs")
        parts.append(self.verdict)
        return " · ".join(parts)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["unsupported"] = [asdict(issue) for issue in self.unsupported]
        data["blockers"], data["notes"] = list(self.blockers), list(self.notes)
        for issue in data["unsupported"]:
            issue["nodes"] = list(issue["nodes"])
        data["share"] = self.share
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Coverage":
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        known["unsupported"] = tuple(OpIssue.from_dict(item) for item in data.get("unsupported", ()))
        known["blockers"], known["notes"] = tuple(data.get("blockers", ())), tuple(data.get("notes", ()))
        return cls(**known)


@dataclass(frozen=True)
class Readiness:
    """Every table for one artifact, the operators its runtime must ship (the bundle's bill of materials) and the
    rewrites deploykit checked."""

    path: str
    format: str
    tables: tuple = ()          # Coverage
    fixes: tuple = ()           # Fix
    operators: dict = field(default_factory=dict)   # {"runtime": ..., "format": ..., "operators": [...], ...}
    notes: tuple = ()           # runtimes with no static answer, and why
    tools: dict = field(default_factory=dict)       # tool -> version that gave the answers

    def table(self, target: str) -> Optional[Coverage]:
        return next((t for t in self.tables if t.target == target), None)

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "tables": [t.to_dict() for t in self.tables],
                "fixes": [asdict(f) for f in self.fixes], "operators": self.operators, "notes": list(self.notes),
                "tools": dict(self.tools)}

    @classmethod
    def from_dict(cls, data: dict) -> "Readiness":
        return cls(path=str(data["path"]), format=str(data["format"]),
                   tables=tuple(Coverage.from_dict(t) for t in data.get("tables", ())),
                   fixes=tuple(Fix.from_dict(f) for f in data.get("fixes", ())),
                   operators=dict(data.get("operators") or {}), notes=tuple(data.get("notes", ())),
                   tools=dict(data.get("tools") or {}))
