"""Progress of long work on stderr: a bar with step, fields (loss…) and ETA on a terminal, else one line per 10 %.

Used by the one-time sample training, ``--route all``, ``--quantize all``, int8 repair's attempts and the first
install of the npm runtimes. A CI log keeps the plain lines; a terminal shows the bar (rich). Part of the plug-in
API: sample_models imports it; it imports no framework.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

from deploykit.text import printable


def _format_seconds(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """``with Progress("training mobilenet_v2", total=500) as bar: bar.update(step, loss=1.2)``.

    ``total`` may be None (attempts of unknown count): then each update is a line. The ETA is the mean time per
    step so far times the steps left. ``stream`` defaults to stderr; a terminal gets a live bar unless
    ``DEPLOYKIT_PROGRESS=lines`` asks for plain lines.
    """

    def __init__(self, label: str, total: Optional[int], stream: Optional[TextIO] = None,
                 every: float = 0.1, enabled: bool = True, intro: str = "") -> None:
        self.label, self.total, self.enabled = printable(label), total, enabled
        self.intro = printable(intro)        # said once, on the start line (how long it usually takes, why)
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self._marks, self._next_mark = max(1, round(1 / every)), 1   # integer tenths: no float drift
        self._bar = None
        self._task = None

    def __enter__(self) -> "Progress":
        if not self.enabled:
            return self
        interactive = getattr(self.stream, "isatty", lambda: False)() and os.environ.get("DEPLOYKIT_PROGRESS") != "lines"
        if not (interactive and self.total) or self.intro:
            print(f"{self.label} ({self.intro}) …" if self.intro else f"{self.label} …", file=self.stream, flush=True)
        if interactive and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn(self.label.replace("[", r"\[")), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.description}"), TextColumn("ETA"), TimeRemainingColumn(),
                            console=Console(file=self.stream, highlight=False), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def eta(self, done: int) -> Optional[float]:
        """Seconds left, from the mean time per finished step; None before the first step or without a total."""
        if not self.total or done <= 0:
            return None
        return (time.perf_counter() - self.started) / done * (self.total - done)

    def update(self, done: int, note: str = "", **fields) -> None:
        """``done`` steps are finished; ``fields`` (loss=…) and ``note`` are shown beside the count."""
        if not self.enabled:
            return
        described = "  ".join([f"{k} {_value(v)}" for k, v in fields.items()] + ([printable(note)] if note else []))
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=described.replace("[", r"\["))
            return
        if self.total:
            if done < self.total and done * self._marks < self._next_mark * self.total:
                return
            while self._next_mark * self.total <= done * self._marks:
                self._next_mark += 1
            eta = self.eta(done)
            tail = f"  ETA {_format_seconds(eta)}" if eta and done < self.total else ""
            line = f"{self.label}: {done}/{self.total} ({100 * done // self.total}%)  {described}{tail}"
        else:
            line = f"{self.label}: {done} {described}"
        print(line.rstrip(), file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.stop()
        if exc[0] is None:
            took = _format_seconds(time.perf_counter() - self.started)
            print(f"{self.label}: done in {took}", file=self.stream, flush=True)


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else printable(str(value))
