"""Safe outputs: never overwrite without --force, never leave a half-written artifact."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from typing import Optional

from deploykit.errors import OutputExistsError, UsageError


def prepare_output(path: "str | Path", force: bool, directory: bool = False) -> Path:
    """Check that ``path`` may be written (a file, or with ``directory`` a folder artifact such as a
    SavedModel); create its parent directory.

    Raises OutputExistsError without --force, UsageError when the directory is unusable.
    """
    path = Path(path).absolute()
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", "pass --force to overwrite it, or choose -o elsewhere")
    if path.is_dir() and not directory:
        raise UsageError(f"{path} is a directory", "give a file path with -o")
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise UsageError(f"{path} is not a regular file (a device, FIFO or socket): --force never replaces one",
                         "choose another -o")
    if path.is_dir() and not _written_by_deploykit(path):
        raise UsageError(f"{path} is a directory deploykit did not write: --force replaces only an artifact "
                         "folder with its deploykit manifest beside it", "choose a new -o")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"cannot write to {parent}: a part of that path is a file", "choose another -o") from None
    except OSError as exc:
        raise UsageError(f"cannot create the output directory {parent} ({exc.strerror})", "choose another -o") from None
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".deploykit-probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"the output directory {parent} is not writable ({exc.strerror})",
                         "choose a writable -o, or fix the directory's permissions") from None
    return path


def require_regular_file(path: "str | Path", what: str, fix: str) -> Path:
    """``path`` if it is a regular file; a FIFO, device or socket would block or stream forever when read."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such {what}", fix)
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file (a directory, FIFO, device or socket): not read as {what}",
                         fix)
    return path


def _written_by_deploykit(folder: Path) -> bool:
    """A SavedModel folder that deploykit exported (saved_model.pb inside, its manifest beside it), or a bundle
    that `deploykit package` wrote (its deploykit-bundle.json inside)."""
    saved_model = (folder / "saved_model.pb").is_file() and folder.with_name(folder.name + ".deploykit.json").is_file()
    return saved_model or (folder / "deploykit-bundle.json").is_file()


def overlaps(a: "str | Path", b: "str | Path") -> bool:
    """True when one path is the other or lies inside it (an output must never contain or be its source)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


@contextlib.contextmanager
def parents_removed_on_failure(path: "str | Path"):
    """The folders that writing ``path`` will create are removed again (when still empty) if the block
    fails: a failed export leaves no empty output directory behind."""
    path = Path(path).absolute()
    missing = [folder for folder in [path.parent, *path.parent.parents] if not folder.exists()]
    try:
        yield
    except BaseException:
        for folder in missing:          # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def private_tempdir():
    """Point TMPDIR (and Python's tempfile) at a new folder for the duration, removed afterwards with all
    that is in it: deploykit's child folders, and what libraries drop in the temporary directory and
    never remove (ONNX Runtime's telemetry session file, compiler caches). A run leaves $TMPDIR as it was."""
    folder = tempfile.mkdtemp(prefix="deploykit-run-")
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    try:
        yield Path(folder)
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(final_dir: Path):
    """A temp directory beside the final output (same filesystem, so rename is atomic); always removed."""
    folder = Path(tempfile.mkdtemp(prefix=".deploykit-tmp-", dir=final_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(moves: list, force: bool = True) -> None:
    """Rename staged files into place: side files first, the main artifact last.

    Without ``force`` the no-clobber check is atomic with the publish: a file is hard-linked into
    place (which fails if the name exists, even if another export created it a moment ago) and the
    staged name removed; a folder is renamed only onto a name that does not exist. With ``force`` a
    folder artifact (SavedModel) that exists is set aside first and removed only once the new one
    is in place (the caller already checked that deploykit wrote it)."""
    for source, target in moves:
        source, target = Path(source), Path(target)
        if not force:
            _publish_new(source, target)
        elif source.is_dir() and target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(source, target)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)     # --force turned a file into a folder artifact
        else:
            os.replace(source, target)


def _publish_new(source: Path, target: Path) -> None:
    clash = OutputExistsError(f"{target} appeared while exporting (another process wrote it)",
                              "pass --force to overwrite it, or choose -o elsewhere")
    if source.is_dir():
        if target.exists() or target.is_symlink():
            raise clash
        os.rename(source, target)
        return
    try:
        os.link(source, target)
    except FileExistsError:
        raise clash from None
    except OSError:          # a filesystem without hard links: check, then rename (a narrow window remains)
        if target.exists() or target.is_symlink():
            raise clash from None
        os.replace(source, target)
        return
    os.unlink(source)


def write_text_atomic(path: "str | Path", text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sha256_of(path: "str | Path") -> Optional[str]:
    """sha256 of a file, or of a directory's files in name order; None when nothing is there."""
    p = Path(path)
    if not p.exists():
        return None
    digest = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
