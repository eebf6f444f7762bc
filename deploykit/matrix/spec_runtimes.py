"""The runtimes a matrix spec names: ``verify_runtimes`` (an emulated ARM one with its ``arm_cpu``) and ``bench``
rows, each checked against the registries before any cell runs (a UsageError naming the key and the spec)."""
from __future__ import annotations

from deploykit.errors import UsageError
from deploykit.text import quoted


def known_runtimes(names: tuple, where: str) -> None:
    """Refuses a verify_runtimes name the registry does not know."""
    from deploykit.registry import RUNTIMES

    known = [entry.name for entry in RUNTIMES]
    bad = [n for n in names if n not in known]
    if bad:
        raise UsageError(f"{where}: [matrix] verify_runtimes has unknown runtime {quoted(bad[0])}", f"use {', '.join(known)}")


def arm_cpu(value, runtimes: tuple, where: str) -> str:
    """The core of the ARM runtimes in verify_runtimes (which must name one), by its canonical name."""
    from deploykit.emulation.cores import core
    from deploykit.registry import EMULATED_RUNTIMES

    if not set(runtimes) & set(EMULATED_RUNTIMES):
        raise UsageError(f"{where}: [matrix] arm_cpu is given, but verify_runtimes names no ARM runtime",
                         f"add {' or '.join(EMULATED_RUNTIMES)} to verify_runtimes, or remove arm_cpu")
    try:
        return core(value if isinstance(value, str) else repr(value)).name
    except UsageError as exc:
        raise UsageError(f"{where}: [matrix] {exc.message}", exc.remedy) from None


def bench_rows(names: list, where: str) -> tuple:
    """The bench rows named (benchmark.cases.ROWS), or a UsageError naming the first unknown one."""
    from deploykit.benchmark.cases import ROWS

    known = [row[0] for row in ROWS]
    bad = [n for n in names if n not in known]
    if bad:
        raise UsageError(f"{where}: [matrix] bench has unknown runtime {quoted(bad[0])}", f"use {', '.join(known)}")
    return tuple(names)
