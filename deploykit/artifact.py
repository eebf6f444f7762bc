"""An artifact is an object that runs itself: read once, handed from converter to checker to manifest.

    artifact = Artifact.open("model.tflite")            # detect + describe once (+ layout from its manifest)
    result = artifact.run([feeds], RunnerOptions(threads=1), timing=DEFAULT_TIMING)
    result.outputs[0]["output"], result.latency_ms["p50"]

``run`` always goes through the one child harness (``deploykit.child``): a runtime that
crashes on the file takes down a child, not the CLI. The child receives the artifact's
description, so it does not read the file's signature again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from deploykit.child import RUN, pack_samples, run_child, unpack_samples
from deploykit.errors import DeploykitError
from deploykit.fsutil import sha256_of
from deploykit.harness import Timing
from deploykit.layout import Layout
from deploykit.model import DEFAULT_TIMEOUT_S, LoadedModel, LoadOptions, load_model
from deploykit.runner import RunnerOptions


@dataclass
class RunResult:
    """Outputs per sample (in the artifact's own layout) and what ran them."""

    outputs: list
    runtime: str
    providers: list = field(default_factory=list)
    latency_ms: Optional[dict] = None       # latency_stats() when a Timing was asked for
    timing: str = ""
    cpu: str = ""                           # the emulated ARM core that ran it ("" on the host's own CPU)

    @property
    def ran_on(self) -> str:
        return f"{self.runtime} ({', '.join(self.providers) or 'default'})"


@dataclass
class Artifact(LoadedModel):
    """A model file (ONNX, TFLite, SavedModel, ...) with its signature, recorded layout and hash.

    ``layout`` (a Layout) maps the artifact's tensors to the source's axes; ``sha256`` is taken when the
    artifact is opened — for a converter's output, when the hop is made.
    """

    layout: Layout = field(default_factory=Layout)
    sha256: Optional[str] = None
    manifest: Optional[dict] = None

    @classmethod
    def open(cls, path: "str | Path", *, layout: Optional[Layout] = None, load: Optional[LoadOptions] = None,
             description: Optional[dict] = None) -> "Artifact":
        """Describe the file once (in a child for formats a runtime could crash on).

        ``description`` (a converter child's ``LoadedModel.description()`` of the file it wrote)
        saves reading it again; ``layout`` defaults to the one recorded in its manifest.
        """
        from deploykit import manifest

        path = str(path)
        if description is not None:
            from deploykit.model import model_from_request

            model = model_from_request(description)
        else:
            model = load_model(path, load or LoadOptions())
        stored = manifest.read(path)
        recorded = layout if layout is not None else Layout.from_dict((stored or {}).get("layout"))
        return cls.of(model, layout=recorded, manifest=stored)

    @classmethod
    def of(cls, model: LoadedModel, *, layout: Optional[Layout] = None, manifest: Optional[dict] = None) -> "Artifact":
        """An already loaded model as an artifact (hashing it now)."""
        if isinstance(model, Artifact) and layout is None:
            return model
        return cls(str(model.path), model.format, model.spec, model.handle, model.weights, dict(model.details),
                   model.load, layout=layout or Layout(), sha256=sha256_of(model.path), manifest=manifest)

    def with_layout(self, layout: Layout) -> "Artifact":
        return replace(self, layout=layout)

    def moved_to(self, path: "str | Path") -> "Artifact":
        """The same bytes under a new name (published from the staging folder)."""
        return replace(self, path=str(path))

    @property
    def name(self) -> str:
        return Path(self.path).name

    def run(self, feeds_list: list, options: RunnerOptions = RunnerOptions(), *, runtime: Optional[str] = None,
            timeout: float = DEFAULT_TIMEOUT_S, timing: Optional[Timing] = None, debug: bool = False) -> RunResult:
        """Run every feed dict (the artifact's own names and layout) in a child process.

        With ``timing`` the first feed is also timed by the one timing loop (``latency_ms``).
        A crash or time-out raises ParityError (exit 1): the artifact cannot be trusted.
        """
        inner, interpreter = _launch_for(runtime, options, timing)
        guess = None
        if interpreter is not None:     # emulation is 300-500x slower: refuse a run that cannot end in time
            from deploykit.emulation.estimate import refuse_if_too_slow

            guess = refuse_if_too_slow(str(self.path), self.format, len(feeds_list), interpreter.cpu, timeout)
        request = {"model": self.description(), "runtime": inner, "options": options.__dict__,
                   "samples": len(feeds_list), "timing": timing.to_dict() if timing else None}
        started = time.monotonic()
        try:
            child = run_child("deploykit.harness:run_job", request, arrays=pack_samples(feeds_list), stage=RUN,
                              what=self.name, timeout=timeout, debug=debug, reuse=self._reusable(timing),
                              interpreter=interpreter)
        except DeploykitError as exc:
            if guess is None or time.monotonic() - started < timeout:
                raise
            from deploykit.emulation.estimate import describe, suggested_timeout

            # The emulated child ran out of time: name what was expected and the limit that would do.
            raise type(exc)(f"{exc.message} (estimated {describe(guess)})",
                            f"raise --timeout to {max(suggested_timeout(guess), int(timeout * 2))}",
                            outcome=exc.outcome) from None
        order = child.info.get("output_names", [])
        outputs = [{n: o[n] for n in order if n in o} for o in unpack_samples(child.arrays, len(feeds_list))]
        ran = runtime if interpreter else child.info.get("runtime", "?")
        # An emulated run names the core it ran on, then what the runner inside used (e.g. "XNNPACK fp16").
        providers = ([interpreter.label] if interpreter else []) + list(child.info.get("providers") or [])
        return RunResult(outputs, ran, providers, child.info.get("latency_ms"), child.info.get("timing", ""),
                         cpu=interpreter.cpu if interpreter else "")

    def capture(self, feeds_list: list, options: RunnerOptions = RunnerOptions(), *, runtime: Optional[str] = None,
                timeout: float = DEFAULT_TIMEOUT_S) -> tuple:
        """(graph view dict, per sample {layer output: value}) for ``deploykit.checking.locate``, in a child process."""
        inner, interpreter = _launch_for(runtime, options, None)
        request = {"model": self.description(), "options": options.__dict__, "samples": len(feeds_list),
                   "runtime": inner}
        child = run_child("deploykit.harness:capture_job", request, arrays=pack_samples(feeds_list), stage=RUN,
                          what=self.name, timeout=timeout, reuse=self._reusable(None), interpreter=interpreter)
        return child.info["graph"], unpack_samples(child.arrays, len(feeds_list))

    def _reusable(self, timing: Optional[Timing]) -> bool:
        """A framework source (a .pt2 as the reference) runs in the command's reused child, where it is loaded
        once; a file artifact, and anything timed, runs in a child of its own."""
        from deploykit.registry import FILE_FORMATS

        return timing is None and self.format not in FILE_FORMATS


def _launch_for(runtime: Optional[str], options: RunnerOptions, timing) -> tuple:
    """(the runtime the child runs, the interpreter it runs in): an emulated ARM runtime is its native
    runtime's runner in an arm64 child (``deploykit.emulation``), which never times anything."""
    from deploykit import registry

    entry = registry.runtime_entry(runtime) if runtime else None
    if entry is None or not entry.emulates:
        return runtime, None
    if timing is not None:
        from deploykit.errors import UsageError

        raise UsageError(f"{runtime} runs under emulation: its wall time is not a phone's latency",
                         f"bench on {entry.emulates} or on the device; verify with --runtime {runtime} for parity")
    problem = registry.runtime_problem(entry, "needed for the ARM runtimes")
    if problem:
        raise problem
    from deploykit.emulation.userland import child_interpreter

    return entry.emulates, child_interpreter(options.arm_cpu or "")
