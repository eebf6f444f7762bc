"""Text helpers shared by every layer: trimming framework errors to one line, natural sort.

Framework errors run to pages (C++ traces, ANSI colours, chained causes); a user sees one
line. Every place that turns an exception or a child's stderr into a message uses these,
so that the trimming rules are the same everywhere.
"""
from __future__ import annotations

import re
import unicodedata

MAX_DETAIL = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` with ANSI colours removed and all whitespace collapsed, cut to ``limit`` characters."""
    return " ".join(_ANSI.sub("", text or "").split())[:limit]


def first_line(text: str, limit: int = MAX_DETAIL) -> str:
    """The first non-empty line of ``text`` (trimmed), or '' when there is none."""
    for line in (text or "").splitlines():
        if line.strip():
            return one_line(line, limit)
    return ""


def last_line(text: str, limit: int = 200) -> str:
    """The last non-empty line of ``text`` (a log's final word is usually the error), or '(no output)'."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return one_line(lines[-1], limit) if lines else "(no output)"


def exception_line(exc: BaseException, limit: int = MAX_DETAIL) -> str:
    """``Type: first line of the message`` for an exception from a framework."""
    return f"{type(exc).__name__}: {first_line(str(exc), limit)}".rstrip(": ")


def exception_chain(exc: BaseException) -> str:
    """Every exception in the cause/context chain, one per paragraph (exporters hide the reason in a cause)."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def brief(text: str, limit: int = 240) -> str:
    """The most telling line of a long exporter error: the first line that names an error type."""
    for line in (text or "").splitlines():
        if "GuardOnDataDependentSymNode" in line or "Error" in line.split(":")[0]:
            return one_line(line, limit)
    return first_line(text, limit) or "unknown error"


def natural_key(name: str) -> tuple:
    """Sort key that puts output_2 before output_10."""
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return (head, int(tail) if tail else -1)


def printable(text: str) -> str:
    """``text`` with control and format characters (ESC, BEL, CR, bidi overrides, ...) written as escapes,
    so that a tensor name or producer string from a model file cannot drive the user's terminal."""
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf")
                   else ascii(ch)[1:-1] for ch in text)


def quoted(value, width: int = 80) -> str:
    """A value from an untrusted file (a spec, a contract, a bundle record) as an error line quotes it: its repr,
    bounded in length and depth (a value may be huge, deeply nested or an alias repeated many times), with control
    characters escaped as repr does; an int past Python's 4,300-digit str limit is "a huge number"."""
    import reprlib

    shown = reprlib.Repr()
    shown.maxlevel, shown.maxstring, shown.maxother, shown.maxlong = 3, width, width, 40
    try:
        return shown.repr(value)
    except ValueError:
        return "a huge number"


def short_number(value, digits: int = 3) -> str:
    """A metric for a table cell: "—" for None, ``digits`` significant digits, exponent form from 1e4."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[:width - 1] + "…"
