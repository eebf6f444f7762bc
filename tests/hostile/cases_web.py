"""Hostile cases: the web app, `serve` and the browser runtimes (issue 26: stored XSS, links out of the served folder, long $TMPDIR, model URLs).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list.
"""
from __future__ import annotations

from tests.hostile.kit import Case  # noqa: F401

CASES: list = []
