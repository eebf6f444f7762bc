"""Remedies that can apply: a failure's remedy names other routes (``--via X``) and flags; printed for a given
source and target, it keeps only the routes the registry offers there (an ONNX source has no litert route), so
that every remedy printed can be followed. Used where export composes its verdict (``exporting.routing``) and where
verify reports an artifact that does not run (``checking.checker``)."""
from __future__ import annotations

import re

from deploykit import registry
from deploykit.errors import UsageError
from deploykit.formats import Format


def goes_via(route: list, via: str) -> bool:
    """Whether ``--via via`` keeps ``route``: it names one of its tools or a format it passes through."""
    return via in {e.tag for e in route} | {e.dst.value for e in route[:-1]}


def for_formats(remedy: str, src: Format, dst: Format) -> str:
    """``remedy`` as it can apply to making a ``dst`` artifact from a ``src`` source (any route the registry offers)."""
    try:
        routes = registry.plan(src, dst) if src != dst else []
    except UsageError:
        routes = []
    return applicable_remedy(remedy, routes, [])


# A remedy is one line of alternatives ("try --via onnx, or report the model to litert-torch"); one that names a
# route this export does not have (ONNX has no litert route) is dropped, so that every remedy printed can apply.
FALLBACK_REMEDY = "run with --debug for the converters' logs"
_VIA = re.compile(r"--via(?:[ =]([\w.-]+))?")
_ANOTHER_ROUTE = re.compile(r"(?:try )?another route with --via$")


def applicable_remedy(remedy: str, alternatives: list, tried: list) -> str:
    """``remedy`` less the suggestions it cannot keep: a ``--via X`` no route of ``alternatives`` (the untried routes
    the registry offers for this source and target) goes through; "another route with --via" names those routes,
    or is dropped when there are none. ``tried``: the routes that failed (a --via that names them says nothing)."""
    if "--via" not in (remedy or ""):
        return remedy
    kept = [_suggestion(part, alternatives, tried) for part in _alternatives(remedy)]
    kept = [part for part in kept if part]
    return ", or ".join(kept) if kept else FALLBACK_REMEDY


def _alternatives(text: str) -> list:
    """``text`` split at its top-level ", or " / " or " / "; " (not inside parentheses)."""
    parts, depth, start = [], 0, 0
    for match in re.finditer(r"[()]|,? or |; ", text):
        token = match.group(0)
        depth += 1 if token == "(" else -1 if token == ")" else 0
        if depth == 0 and token not in "()":
            parts.append(text[start:match.start()])
            start = match.end()
    return [part.strip() for part in parts + [text[start:]] if part.strip()]


def _suggestion(part: str, alternatives: list, tried: list) -> str:
    """One suggestion as it can apply here, or "" when it cannot."""
    if _ANOTHER_ROUTE.search(part):
        names = _route_names(alternatives, tried)
        return _ANOTHER_ROUTE.sub(f"try another route: --via {' or '.join(names)}", part) if names else ""
    group = re.search(r"\(e\.g\. ([^()]*)\)", part)
    if group and "--via" in group.group(1):       # "(e.g. --via litert, or ...)": the examples that apply, or none
        examples = [e for e in _alternatives(group.group(1)) if _vias_offered(e, alternatives)]
        return part.replace(group.group(0), f"(e.g. {', or '.join(examples)})") if examples else ""
    return part if _vias_offered(part, alternatives) else ""


def _vias_offered(text: str, alternatives: list) -> bool:
    return all(via and any(goes_via(r, via) for r in alternatives) for via in _VIA.findall(text))


def _route_names(alternatives: list, tried: list) -> list:
    """A --via name for each untried route, one that no failed route goes through: a format it passes, else a tool."""
    names = []
    for route in alternatives:
        choices = [e.dst.value for e in route[:-1]] + [e.tag for e in route]
        name = next((c for c in choices if c and not any(goes_via(t, c) for t in tried)), None)
        if name and name not in names:
            names.append(name)
    return names
