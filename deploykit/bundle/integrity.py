"""What `verify BUNDLE` checks before it reads or runs anything in a bundle: that the app can only run what verify
checks. A bundle ships into other people's apps (issue 26), and `app.py` runs whatever lies beside it and loads its
fixed model, so verify refuses:

- a file not listed in deploykit-bundle.json (a dropped-in numpy.py), and any link (it points outside);
- a listed path that resolves outside the bundle (``../../…`` would be read and hashed) or is no regular file (a
  FIFO or /dev/zero would block verify or stream forever);
- a manifest ``model`` other than the one the app loads (verify would judge one model, the device run another).

Each is a problem in the verdict (exit 1, as a changed file is), never an exception.
"""
from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

BUNDLE_FILE = "deploykit-bundle.json"
MODEL_NAMES = ("model.onnx", "model.tflite")          # packaging.MODEL_NAME's values: the only names apps load
REQUIRED = ("contract.json", "golden.json")           # read by verify itself, so they must be listed and regular


def tampering(folder: Path) -> tuple:
    """(the manifest as a dict, the problems found); no problem means the listed files are the bundle's regular
    files, all inside it, and the manifest's model is the one the app loads."""
    info, problems = _manifest(folder)
    files = info.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return info, problems or [f"{BUNDLE_FILE} lists no files (expected name: sha256 pairs)"]
    problems += _listed(folder, files)
    problems += _unlisted(folder, files)
    if not problems:          # app.py / web.json are read only once known to be regular files inside
        problems += _model(folder, info, files)
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        problems.append(f"not listed in {BUNDLE_FILE}: {', '.join(missing)}")
    return info, problems


def _manifest(folder: Path) -> tuple:
    path = folder / BUNDLE_FILE
    if path.is_symlink() or not stat.S_ISREG(os.lstat(path).st_mode):
        return {}, [f"{BUNDLE_FILE} is a link or not a regular file"]
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}, [f"{BUNDLE_FILE} is not valid JSON"]
    return (info, []) if isinstance(info, dict) else ({}, [f"{BUNDLE_FILE} is not a JSON object"])


def _listed(folder: Path, files: dict) -> list:
    """Listed names that lie outside the bundle (resolved, so a link or ``..`` cannot leave it) or are no regular
    file. Checked with lstat: nothing is opened, so a FIFO or device cannot block."""
    root, problems = folder.resolve(), []
    for name in files:
        path = folder / name
        if Path(name).is_absolute() or root not in path.resolve().parents:
            problems.append(f"listed path outside the bundle: {name}")
            continue
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            problems.append(f"listed but missing: {name}")
            continue
        if not stat.S_ISREG(mode):
            problems.append(f"listed but not a regular file (a link, FIFO, device or folder): {name}")
    return problems


def _unlisted(folder: Path, files: dict) -> list:
    """Links anywhere in the bundle, and files its manifest does not list (os.walk does not follow links)."""
    problems = []
    for directory, subdirs, names in os.walk(folder):
        here = Path(directory)
        for name in sorted(subdirs + names):
            path = here / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                problems.append(f"a link in the bundle: {relative}")
            elif name in names and relative not in files and relative != BUNDLE_FILE:
                problems.append(f"not listed in {BUNDLE_FILE}: {relative}")
    return problems


def _model(folder: Path, info: dict, files: dict) -> list:
    """The manifest's model must be the one the app loads: app.py's MODEL_FILE, or web.json's model."""
    model = info.get("model")
    loaded = _loaded_by_app(folder, files)
    if model not in MODEL_NAMES or model not in files or loaded != model:
        return [f"the manifest names the model {model!r}, but the app loads {loaded or 'no model verify can name'}"]
    return []


def _loaded_by_app(folder: Path, files: dict):
    """The model file the bundle's app loads, read from its own code or config (both listed, so hashed)."""
    try:
        if "app.py" in files:
            tree = ast.parse((folder / "app.py").read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MODEL_FILE"
                                                        for t in node.targets) \
                        and isinstance(node.value, ast.BinOp) and isinstance(node.value.right, ast.Constant):
                    return node.value.right.value
        elif "web.json" in files:
            return json.loads((folder / "web.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, SyntaxError, AttributeError):
        return None
    return None
