"""Hostile cases: writes and bundles (issue 26: links planted where deploykit writes, `--force` on user files, tampered bundle files and carried contracts, the generated app.py).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list.
"""
from __future__ import annotations

from tests.hostile.kit import Case  # noqa: F401

CASES: list = []
