"""Hostile cases: names and formats (issue 26: tensor names a converter cannot take, files that only look like a format).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list.
"""
from __future__ import annotations

from tests.hostile.kit import Case  # noqa: F401

CASES: list = []
