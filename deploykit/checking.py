"""Run a source and its artifacts on the same inputs and compare them with the parity engine."""
from __future__ import annotations

from typing import Optional

from deploykit import parity, registry
from deploykit.errors import UsageError
from deploykit.inputs import random_feeds
from deploykit.isolation import run_isolated
from deploykit.model import LoadedModel, load_model
from deploykit.parity import Tolerance


class ReferenceRunner:
    """Runs the source once per distinct input and remembers the outputs.

    A framework source (torch) runs in this process, where it is already loaded;
    a file source (ONNX) runs in a child process like any artifact.
    """

    def __init__(self, model: LoadedModel, timeout: float, device: str = "cpu"):
        self.model, self.timeout, self.device = model, timeout, device
        self._runner, self._cache = None, {}

    def outputs(self, key: tuple, feeds: dict) -> dict:
        if key not in self._cache:
            self._cache[key] = self._run([feeds])[0]
        return self._cache[key]

    def _run(self, feeds_list: list) -> list:
        if self.model.handle is None:
            return run_isolated(self.model.path, feeds_list, timeout=self.timeout, device=self.device)[0]
        if self._runner is None:
            entry = registry.runtime_for(self.model.format)
            self._runner = registry.resolve(entry.target)(self.model)
            self._runner.open()
        return self._runner.run_many(feeds_list)


class Checker:
    """Compares candidates against the source on seeded random inputs plus the user's data."""

    def __init__(self, source: LoadedModel, tolerance: Tolerance, seed: int = 0,
                 user_feeds: Optional[list] = None, timeout: float = 600.0, device: str = "cpu"):
        self.source, self.tolerance, self.seed = source, tolerance, seed
        self.user_feeds = list(user_feeds or [])
        self.reference = ReferenceRunner(source, timeout, device)
        self.timeout, self.device = timeout, device
        self.runtime_options: dict = {}     # e.g. {"xnnpack": False} for LiteRT
        self.last_runtime = ""

    def feeds(self, samples: int, batch: Optional[int] = None) -> list:
        generated = random_feeds(self.source.spec, samples, self.seed, batch)
        keyed = [(("random", i, batch), f) for i, f in enumerate(generated)]
        return keyed + [(("user", i), f) for i, f in enumerate(self.user_feeds)]

    def check(self, candidate_path, samples: int, batch: Optional[int] = None,
              candidate: Optional[LoadedModel] = None, layout: Optional[dict] = None,
              tolerance: Optional[parity.Tolerance] = None, feeds: Optional[tuple] = None) -> parity.ParityReport:
        """Run the candidate file (isolated) and the source on the same feeds and compare.

        ``layout`` is the candidate's recorded permutation relative to the source
        ({"inputs": {name: axes}, "outputs": {name: axes}}, keyed by the candidate's names).
        """
        candidate = candidate or load_model(str(candidate_path))
        references, outputs = self.run_both(candidate, samples, batch, layout, feeds)
        report = self.compare(references, outputs, self.source.label, candidate.label, layout, tolerance)
        if feeds:
            report.notes.append(f"compared on {len(feeds[1])} {feeds[0]} sample(s)")
        return report

    def compare(self, references: list, outputs: list, reference_label: str, candidate_label: str,
                layout: Optional[dict] = None, tolerance: Optional[parity.Tolerance] = None) -> parity.ParityReport:
        """Compare outputs that are already in the source's layout."""
        report = parity.compare(references, outputs, tolerance or self.tolerance, reference_label, candidate_label)
        if self.last_runtime:
            report.notes.append(f"{candidate_label} ran on {self.last_runtime}")
        if self.user_feeds:
            count = len(references) - len(self.user_feeds)
            report.notes.append(f"{count} random + {len(self.user_feeds)} user sample(s)")
        layout = layout or {}
        if any((layout.get("inputs") or {}).values()) or any((layout.get("outputs") or {}).values()):
            report.notes.append(f"layout permutations applied: {layout}")
        return report

    def run_both(self, candidate: LoadedModel, samples: int, batch: Optional[int] = None,
                 layout: Optional[dict] = None, feeds: Optional[tuple] = None) -> tuple:
        """Source outputs and candidate outputs (permuted back to the source's layout) on the same feeds.

        ``feeds`` = (label, [feed, ...]) replaces the seeded random samples (a quantized artifact is
        judged on the distribution it was calibrated for, not on 3-sigma inputs it clips).
        """
        keyed = [((feeds[0], i), f) for i, f in enumerate(feeds[1])] if feeds else self.feeds(samples, batch)
        references = [self.reference.outputs(key, feeds) for key, feeds in keyed]
        layout = layout or {}
        feeds_for_candidate = [self.feeds_for(candidate, feeds, layout) for _key, feeds in keyed]
        outputs, info = run_isolated(str(candidate.path), feeds_for_candidate, timeout=self.timeout,
                                     device=self.device, runtime_options=self.runtime_options)
        self.last_runtime = f"{info.get('runtime')} ({', '.join(info.get('providers') or []) or 'default'})"
        return references, [parity.permute(o, layout.get("outputs")) for o in outputs]

    def feeds_for(self, candidate, feeds: dict, layout: Optional[dict] = None) -> dict:
        """Source-layout feeds renamed (by position, if the names differ) and permuted for the candidate."""
        if not isinstance(candidate, LoadedModel):
            candidate = load_model(str(candidate))
        return parity.permute(self._rename(feeds, candidate), (layout or {}).get("inputs"))

    def _rename(self, feeds: dict, candidate: LoadedModel) -> dict:
        """Feed a candidate whose input names differ (another exporter's) by position."""
        names = candidate.spec.input_names
        if set(names) == set(feeds):
            return feeds
        if len(names) != len(feeds):
            raise UsageError(f"{candidate.label} takes {len(names)} input(s) ({', '.join(names)}) but the source "
                             f"takes {len(feeds)} ({', '.join(feeds)})", "compare models with the same inputs")
        return dict(zip(names, feeds.values()))
