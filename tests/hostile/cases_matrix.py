"""Hostile cases: the matrix (issue 26: specs that bomb or hang, stores children cannot share, tampered or stale cell records, reports).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list.
"""
from __future__ import annotations

from tests.hostile.kit import Case  # noqa: F401

CASES: list = []
