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
    """The manifest beside ``artifact``, or None when there is none (a file from another tool)."""
    path = manifest_path(artifact)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
