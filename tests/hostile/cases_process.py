"""Hostile cases: processes and signals (issue 26: framework loaders that crash, SIGTERM during an export).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list.
"""
from __future__ import annotations

from tests.hostile.kit import Case  # noqa: F401

CASES: list = []
