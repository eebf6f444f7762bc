"""The JSON written beside every artifact: what it is, where it came from, and proof it matches."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Optional

from deploykit.fsutil import sha256_of

SCHEMA_VERSION = 1
SUFFIX = ".deploykit.json"


def manifest_path(artifact: "str | Path") -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


def library_versions(distributions: tuple) -> dict:
    """Python's version and the installed versions of ``distributions`` (missing ones left out)."""
    versions = {"python": platform.python_version()}
    for dist in distributions:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def file_entry(path: "str | Path", sha256: Optional[str] = None) -> dict:
    path = Path(path)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return {"path": path.name, "bytes": size, "sha256": sha256 or sha256_of(path)}


def build(artifact: Path, artifact_format: str, source, route: list, signature: dict, layout: dict,
          parity: Optional[dict], warnings: list, extra_files: list, libraries: tuple,
          artifact_sha256: Optional[str] = None) -> dict:
    """The manifest of an artifact; ``artifact_sha256`` is the hash taken when the artifact was made."""
    source_entry = {"path": str(Path(source.path).absolute()) if Path(source.path).exists() else source.path,
                    "format": source.format.value, "sha256": sha256_of(source.path)}
    if source.weights:
        source_entry["weights"] = {"path": str(Path(source.weights).absolute()), "sha256": sha256_of(source.weights)}
    artifact_entry = {**file_entry(artifact, artifact_sha256), "format": artifact_format,
                      "extra_files": [file_entry(f) for f in extra_files]}
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "artifact": artifact_entry, "source": source_entry, "signature": signature, "layout": layout,
        "route": route, "versions": library_versions(libraries), "parity": parity, "warnings": warnings,
    }


def dumps(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"


def read(artifact: "str | Path") -> Optional[dict]:
    """The manifest beside ``artifact``, or None when there is none (a file from another tool) or it is
    not one deploykit could have written (bad JSON, wrong types, a layout that is no permutation): a
    sidecar file is as untrusted as the artifact, and a malformed one is ignored rather than obeyed."""
    path = manifest_path(artifact)
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if well_formed(data) else None


MAX_MANIFEST_BYTES = 16 * 1024**2
# The JSON type of each section deploykit writes; a manifest with another type in one of them is not ours.
_SECTIONS = {"schema_version": int, "artifact": dict, "source": dict, "signature": dict, "layout": dict,
             "route": list, "routes": list, "parity": (dict, type(None)), "warnings": list, "precision": str,
             "versions": dict, "calibration": (dict, type(None)), "created": str, "contract": (dict, type(None)),
             "contract_choices": dict, "verified": bool, "unverified_reason": str, "causal_lm": dict,
             "kind": str}


def well_formed(data) -> bool:
    """True when ``data`` has the shape of a deploykit manifest (only what readers rely on is checked)."""
    if not isinstance(data, dict):
        return False
    if any(key in data and not isinstance(data[key], kind) for key, kind in _SECTIONS.items()):
        return False
    if not all(isinstance(hop, dict) for hop in data.get("route", []) + data.get("routes", [])):
        return False
    signature = data.get("signature") or {}
    if not all(isinstance(signature.get(kind, []), list) and all(isinstance(t, dict) for t in signature.get(kind, []))
               for kind in ("inputs", "outputs")):
        return False
    if not all(isinstance((data.get(section) or {}).get(key), (str, type(None)))
               for section in ("artifact", "source") for key in ("sha256", "path")):
        return False
    if not isinstance((data.get("source") or {}).get("weights") or {}, dict) \
            or not isinstance((data.get("calibration") or {}).get("normalize") or "", str):
        return False
    return _layout_ok(data.get("layout") or {})


def _layout_ok(layout: dict) -> bool:
    """Every recorded layout is {"inputs"|"outputs": {name: permutation of 0..n-1 or null}}."""
    for kind, perms in layout.items():
        if kind not in ("inputs", "outputs") or not isinstance(perms, dict):
            return False
        for perm in perms.values():
            if perm is None:
                continue
            if not isinstance(perm, list) or not all(type(axis) is int for axis in perm) \
                    or sorted(perm) != list(range(len(perm))):
                return False
    return True
