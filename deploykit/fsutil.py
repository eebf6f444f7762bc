"""Safe outputs: never overwrite without --force, never leave a half-written artifact."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from typing import Optional

from deploykit.errors import OutputExistsError, UsageError


def prepare_output(path: "str | Path", force: bool, directory: bool = False) -> Path:
    """Check that ``path`` may be written (a file, or with ``directory`` a folder artifact such as a
    SavedModel); create its parent directory.

    Nothing here follows a link at ``path``: a link planted there is an existing name (refused without
    --force) and with --force is replaced as a file entry by publish, never written through or looked into.
    Raises OutputExistsError without --force, UsageError when the directory is unusable.
    """
    path = Path(path).absolute()
    entry = _lstat(path)
    if entry is not None and not force:
        what = "already exists (a link)" if stat.S_ISLNK(entry.st_mode) else "already exists"
        raise OutputExistsError(f"{path} {what}", "pass --force to overwrite it, or choose -o elsewhere")
    if entry is not None and not stat.S_ISLNK(entry.st_mode):
        _check_replaceable(path, entry, directory)
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


def _lstat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except OSError:       # missing, or a parent that is a file or unreadable: the parent checks below say which
        return None


def _check_replaceable(path: Path, entry: os.stat_result, directory: bool) -> None:
    """--force on an existing (non-link) ``path``: a regular file, or a folder exactly as deploykit left it."""
    if stat.S_ISDIR(entry.st_mode) and not directory:
        raise UsageError(f"{path} is a directory", "give a file path with -o")
    if not (stat.S_ISREG(entry.st_mode) or stat.S_ISDIR(entry.st_mode)):
        raise UsageError(f"{path} is not a regular file (a device, FIFO or socket): --force never replaces one",
                         "choose another -o")
    if stat.S_ISDIR(entry.st_mode):
        why = _not_written_by_deploykit(path)
        if why:
            raise UsageError(f"{path} is a directory deploykit did not write ({why}): --force replaces only an "
                             "artifact folder exactly as deploykit left it", "remove it yourself or choose a new -o")


def require_regular_file(path: "str | Path", what: str, fix: str) -> Path:
    """``path`` if it is a regular file; a FIFO, device or socket would block or stream forever when read."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such {what}", fix)
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file (a directory, FIFO, device or socket): not read as {what}",
                         fix)
    return path


def _not_written_by_deploykit(folder: Path) -> str:
    """Why ``folder`` is not an artifact folder deploykit wrote ('' when it is): a folder artifact deploykit
    exported (a SavedModel, a Core AI .aimodel, a Core ML .mlpackage: its manifest beside it), or a bundle `deploykit package` wrote, holding exactly the
    files its deploykit-bundle.json records, each unchanged (a user's file added or edited inside must survive)."""
    beside = folder.with_name(folder.name + ".deploykit.json")
    if _regular(beside) and not _regular(folder / BUNDLE_FILE):
        return _artifact_folder_changed(folder, beside)
    if not _regular(folder / BUNDLE_FILE):
        return "no deploykit manifest in or beside it"
    listed, why = recorded_files(folder)
    if why:
        return why
    for name, digest in listed.items():
        if not _regular(folder / name):
            return f"{name} is missing, a link or not a regular file"
        if sha256_of(folder / name) != digest:
            return f"{name} changed since deploykit wrote it"
    extra = [p for p in _tree(folder) if p not in listed and p != BUNDLE_FILE]
    return f"{extra[0]} is not one of the files deploykit wrote" if extra else ""


def _artifact_folder_changed(folder: Path, manifest: Path) -> str:
    """'' when the artifact folder's files are still those its manifest's artifact sha256 was taken of (a file the
    user added or edited inside changes it), else why not."""
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))["artifact"]["sha256"]
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError):
        return f"{manifest.name} is not a manifest deploykit wrote"
    if not isinstance(recorded, str) or sha256_of(folder) != recorded:
        return f"its files changed since deploykit wrote it (the sha256 {manifest.name} records)"
    return ""


BUNDLE_FILE = "deploykit-bundle.json"       # a bundle's record of what deploykit wrote (bundle/packaging.py)
_DIGEST = re.compile(r"[0-9a-f]{64}")


def recorded_files(folder: Path) -> tuple:
    """({relative name: sha256} that ``folder``'s deploykit-bundle.json records, '') or ({}, why not): only plain
    relative names inside the folder count (a forged ``../x`` or ``/etc/x`` makes the whole record untrusted)."""
    try:
        info = json.loads((folder / BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}, f"its {BUNDLE_FILE} is not JSON deploykit wrote"
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict) or not files:
        return {}, f"its {BUNDLE_FILE} records no files"
    for name, digest in files.items():
        if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)) or not plain_relative(name):
            return {}, f"its {BUNDLE_FILE} records {str(name)[:80]!r}, which deploykit never writes"
    return files, ""


def plain_relative(name: str) -> bool:
    """A relative name that stays inside its folder: no absolute path, no '..', '.', empty part or backslash."""
    parts = name.split("/")
    return bool(name) and "\\" not in name and "\0" not in name and \
        all(part not in ("", ".", "..") for part in parts) and not Path(name).is_absolute()


def _regular(path: Path) -> bool:
    """A regular file, not through a link (lstat)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def tree_entries(folder: "str | Path") -> list:
    """[(relative name, path, kind)] of every entry under ``folder`` that is not a folder, sorted; kind is "link"
    (a link to anything, folders included: never followed), "file" (a regular file) or "other" (a FIFO, device or
    socket)."""
    folder, found = Path(folder), []
    for directory, subdirs, names in os.walk(folder):         # os.walk does not descend into linked folders
        here = Path(directory)
        for name in sorted(names + [d for d in subdirs if (here / d).is_symlink()]):
            path = here / name
            kind = "link" if path.is_symlink() else "file" if path.is_file() else "other"
            found.append((path.relative_to(folder).as_posix(), path, kind))
    return sorted(found)


def _tree(folder: Path) -> list:
    """Every entry under ``folder`` that is not a folder (links included, never followed), as relative names."""
    return [relative for relative, _path, _kind in tree_entries(folder)]


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
    folder artifact (SavedModel, bundle) that exists is set aside first and, once the new one is in
    place, only what deploykit wrote in it is removed (the caller already checked that). A link at a
    target is replaced as a name: rename never follows it."""
    for source, target in moves:
        source, target = Path(source), Path(target)
        if not force:
            _publish_new(source, target)
        elif source.is_dir() and os.path.lexists(target):
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(source, target)
            _remove_set_aside(old)
        else:
            os.replace(source, target)


def _remove_set_aside(old: Path) -> None:
    """Remove what --force replaced: a link or file as such; a bundle's recorded files only (so a file that
    appeared in it after the check survives, in the set-aside folder); a SavedModel folder whole."""
    if old.is_symlink() or not old.is_dir():
        old.unlink(missing_ok=True)       # --force turned a file (or a link, never followed) into a folder
        return
    listed, why = recorded_files(old) if _regular(old / BUNDLE_FILE) else ({}, "not a bundle")
    if why:
        shutil.rmtree(old, ignore_errors=True)
        return
    for name in [*listed, BUNDLE_FILE]:
        if _regular(old / name):
            (old / name).unlink()
    for directory, _subdirs, _names in sorted(os.walk(old), key=lambda w: -len(w[0])):   # deepest first
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _publish_new(source: Path, target: Path) -> None:
    clash = OutputExistsError(f"{target} appeared while exporting (another process wrote it)",
                              "pass --force to overwrite it, or choose -o elsewhere")
    if source.is_dir():
        if os.path.lexists(target):
            raise clash
        os.rename(source, target)
        return
    try:
        os.link(source, target)       # linkat(2) neither follows a link at target nor replaces one
    except FileExistsError:
        raise clash from None
    except OSError:          # a filesystem without hard links: check, then rename (a narrow window remains)
        if os.path.lexists(target):
            raise clash from None
        os.replace(source, target)
        return
    os.unlink(source)


@contextlib.contextmanager
def atomic_writer(path: "str | Path"):
    """A binary handle whose bytes become ``path`` when the block succeeds, for writers that take a file object
    (matplotlib's savefig, np.savez). The handle is a mkstemp file in ``path``'s folder (O_CREAT|O_EXCL, so
    never a planted link), renamed over ``path`` (rename replaces a link there, never follows it); the final
    name is never opened for writing. On failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())        # mkstemp's 0600 would make a report unreadable to others
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only be read by setting
    it, and for that instant a file another thread creates would get the wrong mode)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: "str | Path", data: bytes) -> None:
    """Write ``data`` to ``path`` through atomic_writer (never through a link, never half-written)."""
    with atomic_writer(path) as handle:
        handle.write(data)


def write_text_atomic(path: "str | Path", text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through atomic_writer (never through a link, never half-written)."""
    write_bytes_atomic(path, text.encode("utf-8"))


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
