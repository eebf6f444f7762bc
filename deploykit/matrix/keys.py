"""What makes a matrix cell the same cell: its content key, and whether it can run at all.

A cell's key is the sha256 of (the model's bytes, the bytes of every file its options name, the cell's options,
deploykit's version and a digest of its own code, the versions of the libraries on the cell's routes and
runtimes). Same key, same result: a re-run skips it. Change the model, an option, deploykit, or upgrade onnx2tf,
and only the cells that depend on it run again.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

from deploykit.errors import DeploykitError, MissingDependency, UsageError
from deploykit.matrix.spec import PATH_KEYS, Cell, MatrixSpec, cell_options
from deploykit.matrix.store import Store

CODE_PACKAGES = ("deploykit", "converters", "runtimes")


@lru_cache(maxsize=None)
def code_digest() -> str:
    """sha256 of deploykit's own Python sources (a changed converter is a different tool)."""
    from deploykit.child import code_root

    digest = hashlib.sha256()
    root = Path(code_root())
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def content_digest(source: str) -> str:
    """sha256 of a file, of a folder's files (names and bytes), or of a factory's module source."""
    from deploykit.formats import is_factory_reference

    path = Path(source)
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(item.relative_to(path)).encode() + b"\0")
            _update_file(digest, item)
    elif path.is_file():
        _update_file(digest, path)
    elif is_factory_reference(source):
        digest.update(source.encode() + b"\0" + _module_bytes(source.partition(":")[0]))
    else:
        digest.update(source.encode())
    return digest.hexdigest()


def _update_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def _module_bytes(module: str) -> bytes:
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except Exception:  # noqa: BLE001 - a package that fails to import keys by name; the cell's load says why
        return b""
    origin = spec.origin if spec else None
    return Path(origin).read_bytes() if origin and Path(origin).is_file() else b""


def route_libraries(cell: Cell) -> tuple:
    """(distributions the cell's routes and runtimes use, None) — or ((), why it cannot run here).

    The same route selection `deploykit export` makes, so "unsupported" means what export would refuse."""
    from deploykit import registry
    from deploykit.exporting import routing
    from deploykit.formats import detect

    try:
        src, dst = detect(cell.model.source), registry.target_format(cell.target)
        quantize = None if cell.precision == "fp32" else cell.precision
        routes = routing.select_routes(src, dst, None, quantize, cell.model.options.get("io_dtype", "float"))
    except (MissingDependency, UsageError) as exc:      # what `deploykit export` refuses before converting
        return (), exc.message
    except DeploykitError:      # a file that does not load: the cell runs and its verdict says why, as export's
        return (), None
    requires = [p for route in routes for edge in route for p in edge.requires]
    for fmt in (src, dst):
        try:
            requires += registry.runtime_for(fmt).requires
        except UsageError:
            pass
    return tuple(dict.fromkeys(registry.PACKAGES.get(p, (p, ""))[0] for p in requires)), None


def versions(distributions: tuple) -> dict:
    """deploykit's version and code digest, and the installed version of each distribution."""
    from importlib import metadata

    from deploykit import __version__

    found = {"deploykit": f"{__version__}+{code_digest()}"}
    for name in sorted(distributions):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def cell_key(cell: Cell, spec: MatrixSpec, tool_versions: dict) -> str:
    """The content hash that names the cell's result."""
    options = cell_options(cell, spec)
    files = {name: content_digest(cell.model.options[name]) for name in PATH_KEYS if name in cell.model.options}
    payload = {"model": content_digest(cell.model.source), "files": files, "options": options,
               "versions": tool_versions}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def plan_cell(cell: Cell, spec: MatrixSpec) -> tuple:
    """(key, versions, why it is unsupported or None) for one cell."""
    libraries, unsupported = route_libraries(cell)
    tool_versions = versions(libraries)
    return cell_key(cell, spec, tool_versions), tool_versions, unsupported


def unsupported_record(cell: Cell, key: str, why: str, tool_versions: Optional[dict] = None) -> dict:
    """The verdict of a cell that no route can make here, recorded without running anything."""
    return {**cell_identity(cell, key), "status": "unsupported", "verdict": why, "versions": tool_versions or {},
            "attempts": 0, "seconds": 0.0}


def cell_identity(cell: Cell, key: str) -> dict:
    return {"key": key, "model": cell.model.name, "source": cell.model.source, "target": cell.target,
            "precision": cell.precision}


# --- records: what a stored record must be before it is reused ---------------------------------------------------

STORED_STATUSES = ("passed", "failed", "unsupported", "crashed", "error")
_TEXT_FIELDS = ("model", "source", "target", "precision", "verdict", "finished_at", "outcome", "rerun_because",
                "artifact_sha256", "manifest_sha256")
_DICT_FIELDS = ("export", "verify", "bench", "phases", "versions", "metrics")
_INT_FIELDS = ("attempts", "exit_code", "bench_core", "bench_attempts")
_NUMBER_METRICS = ("cosine", "max_abs", "artifact_bytes", "artifact_p50_ms", "source_p50_ms", "speedup")
_TEXT_METRICS = ("artifact_row", "source_row", "delegated")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def reusable(store: Store, key: str) -> tuple:
    """(the stored record of a finished cell, None) — or (None, why the stored one is not reused; None when the
    store holds none). A cell whose record is refused simply runs again, and its new record says why."""
    record, why = store.stored(key)
    if record is None:
        return None, why
    why = record_problem(record, key, store)
    return (None, why) if why else (record, None)


def record_problem(record, key: str, store: Store) -> Optional[str]:
    """Why a stored record may not be reused ('' or None when it may): a record is data from the store, which
    anyone with access to it may have edited, so its shape, its key, the places it names and the bytes of its
    artifact are checked before it stands for a finished cell."""
    if not isinstance(record, dict):
        return "its stored record is not a JSON object"
    if record.get("key") != key:
        return "its stored record names another cell's key"
    if record.get("status") not in STORED_STATUSES:
        return "its stored record has no known status"
    wrong = ([f for f in _TEXT_FIELDS if record.get(f) is not None and not isinstance(record[f], str)]
             + [f for f in _DICT_FIELDS if record.get(f) is not None and not isinstance(record[f], dict)]
             + [f for f in _INT_FIELDS if record.get(f) is not None and not _is_int(record[f])])
    if wrong:
        return f"its stored record's {wrong[0]} is not what deploykit writes"
    why = _metrics_problem(record.get("metrics") or {})
    if why:
        return why
    if record["status"] == "passed" and record.get("artifact") is None:
        return "its stored record passed without naming its artifact"
    return _artifact_problem(record, key, store)


def _metrics_problem(metrics: dict) -> Optional[str]:
    if any(m in metrics and not _is_number(metrics[m]) for m in _NUMBER_METRICS):
        return "its stored record's metrics are not numbers"
    # Text the grid shows: a stored record may predate "delegated" and "predicted" (then "—"), never hold other types.
    predicted = metrics.get("predicted", [])
    if any(not isinstance(metrics.get(r, ""), str) for r in _TEXT_METRICS) or \
            not (isinstance(predicted, list) and all(isinstance(p, str) for p in predicted)):
        return "its stored record's metrics are not the text deploykit writes"
    return None


def _artifact_problem(record: dict, key: str, store: Store) -> Optional[str]:
    for field in ("artifact", "manifest"):
        reference = record.get(field)
        if reference is None:
            continue
        name = store.name_of(reference)
        if name is None or not name.startswith(f"artifacts/{key}/") or name.count("/") != 2:
            return f"its stored record's {field} is not in its own artifacts/{key}/ folder of the store"
        sha = record.get(f"{field}_sha256")
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            return f"its stored record holds no sha256 of its {field}"
        if store.digest(reference) != sha:
            return f"its {field} changed (or went missing) since the record was written"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
