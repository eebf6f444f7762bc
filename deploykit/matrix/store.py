"""Where a matrix keeps its results: a local folder, or shared storage given by URI (fsspec).

    OUT/cells/<key>.json        one finished cell, written atomically: a re-run skips its key
    OUT/artifacts/<key>/...     the cell's artifact and manifest (the record holds their reference and sha256)
    OUT/running/<key>.*.pid     who runs a cell now (local stores only; gone when it ends)
    OUT/matrix.json, matrix.html

A plain path is a local folder. Any URI — ``file:///shared/zoo``, ``s3://bucket/zoo`` — goes through fsspec, so a
Ray cluster's workers can write where the driver reads; for a URI other than file:// the matching fsspec backend
(s3fs, gcsfs, ...) must be installed. Files move between nodes as tar archives of the files a cell needs
(:func:`pack` / :func:`unpack`).

Nothing in a store is trusted: a store on this machine is read and written only through the functions at the end
of this module, which never follow a link below the store's folder; keys.reusable decides whether a stored record
may stand for a finished cell.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import uuid
from pathlib import Path
from typing import Optional

from deploykit.errors import UsageError

# Protocols whose files a cell's child process cannot share with the driver: fsspec's memory:// lives in one
# process (each child would write into its own and the driver would keep nothing), and the archive, web and git
# filesystems are read-only views.
PROCESS_LOCAL = {"memory"}
READ_ONLY = {"zip", "tar", "libarchive", "reference", "http", "https", "data", "github", "gist", "git", "dvc"}
OURS = ("cells", "artifacts", "running", "matrix.json", "matrix.html")     # what a matrix writes in its store


def open_store(location: str) -> "Store":
    """The store for ``location``: a local folder for a plain path, fsspec for a URI."""
    if "://" in location:
        return RemoteStore(location)
    return LocalStore(location)


class Store:
    """What the matrix needs from storage. Names are relative ("cells/ab12.json")."""

    location: str

    def url(self, name: str) -> str:
        raise NotImplementedError

    def read_text(self, name: str) -> Optional[str]:
        raise NotImplementedError

    def write_text(self, name: str, text: str) -> None:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        """Remove a file of the store (nothing when it is not there)."""

    def put_artifacts(self, local: Path, key: str) -> dict:
        """Every entry of the local folder ``local`` as the cell's artifacts; returns {entry name: reference}."""
        raise NotImplementedError

    def get_tree(self, reference: str, local: Path) -> Path:
        """Bring a reference from :meth:`put_artifacts` to ``local``; returns the local path."""
        raise NotImplementedError

    def digest(self, reference: str) -> Optional[str]:
        """sha256 of what a reference holds (a file, or a folder's names and bytes); None when it is not there."""
        raise NotImplementedError

    def local_folder(self) -> Optional[Path]:
        """The folder on this machine, when the store is one (pid files)."""
        return None

    def name_of(self, reference) -> Optional[str]:
        """The store-relative name of a reference this store made, or None for anything else (another place,
        ``..``, a link's target): what a record names is trusted only as a name inside its own store."""
        prefix = self.url("")
        if not isinstance(reference, str) or not reference.startswith(prefix):
            return None
        name = reference[len(prefix):]
        return name if plain(name) else None

    def finished(self, key: str) -> Optional[dict]:
        """The stored record of a cell as JSON, or None (absent, or not a JSON object naming its own key).
        Whether it may be reused is keys.reusable's question: its shape, its artifact's bytes."""
        record, _ = self.stored(key)
        return record

    def stored(self, key: str) -> tuple:
        """(the stored record, None), or (None, why it is not one; None when there is none)."""
        text = self.read_text(f"cells/{key}.json")
        if text is None:
            return None, None
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):
            return None, "its stored record is not JSON"
        if not isinstance(record, dict) or record.get("key") != key:
            return None, "its stored record is not a JSON object naming its own key"
        return record, None

    def save_cell(self, record: dict) -> None:
        self.write_text(f"cells/{record['key']}.json", json.dumps(record, indent=1, default=str))


class LocalStore(Store):
    def __init__(self, location: str) -> None:
        self.root = Path(location).absolute()
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"-o {location} is a file", "give a folder for the matrix's results")
        self.location = str(self.root)

    def local_folder(self) -> Optional[Path]:
        return self.root

    def url(self, name: str) -> str:
        return str(self.root / name) if name else f"{self.root}/"

    def read_text(self, name: str) -> Optional[str]:
        return read_text(self.root, name)

    def write_text(self, name: str, text: str) -> None:
        write_bytes(self.root, name, text.encode())

    def remove(self, name: str) -> None:
        remove(self.root, name)

    def put_artifacts(self, local: Path, key: str) -> dict:
        replace_folder(self.root, f"artifacts/{key}", Path(local))
        return {entry.name: self.url(f"artifacts/{key}/{entry.name}") for entry in sorted(Path(local).iterdir())}

    def get_tree(self, reference: str, local: Path) -> Path:
        return Path(reference)

    def digest(self, reference: str) -> Optional[str]:
        name = self.name_of(reference)
        return tree_digest(self.root, name) if name else None


class RemoteStore(Store):
    """fsspec storage: writes go to a temporary name, then move into place (a reader never sees half a file).
    A file:// store is this machine's folder, read and written as a LocalStore's (never through a link)."""

    def __init__(self, location: str) -> None:
        try:
            from fsspec.core import url_to_fs
        except ImportError:
            raise UsageError(f"-o {location} is a URI and fsspec is not installed",
                             "pip install fsspec (and its backend for the scheme), or give a local folder") from None
        _check_shareable(location)
        try:
            self.fs, self.base = url_to_fs(location)
        except (ImportError, ValueError) as exc:
            raise UsageError(f"-o {location}: no storage backend for this URI ({exc})",
                             "install the fsspec backend for the scheme (s3fs, gcsfs, ...), or give a local folder") from None
        _check_shareable(location, self.fs)
        self.location = location.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.root = Path(self.base) if protocol in ("file", "local") else None

    def _path(self, name: str) -> str:
        return f"{self.base.rstrip('/')}/{name}"

    def local_folder(self) -> Optional[Path]:
        return self.root

    def url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def read_text(self, name: str) -> Optional[str]:
        if self.root is not None:
            return read_text(self.root, name)
        try:
            with self.fs.open(self._path(name), "rb") as handle:
                data = handle.read(MAX_READ_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_READ_BYTES:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def write_text(self, name: str, text: str) -> None:
        self._write_bytes(name, text.encode())

    def remove(self, name: str) -> None:
        if self.root is not None:
            remove(self.root, name)
        elif self.fs.exists(self._path(name)):
            self.fs.rm(self._path(name))

    def _write_bytes(self, name: str, data: bytes) -> None:
        if self.root is not None:
            write_bytes(self.root, name, data)
            return
        final = self._path(name)
        staged = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(final.rpartition("/")[0], exist_ok=True)
        with self.fs.open(staged, "wb") as handle:
            handle.write(data)
        self.fs.mv(staged, final)

    def put_artifacts(self, local: Path, key: str) -> dict:
        references = {}
        for entry in sorted(Path(local).iterdir()):
            self._write_bytes(f"artifacts/{key}/{entry.name}.tar", pack({entry.name: entry}))
            references[entry.name] = self.url(f"artifacts/{key}/{entry.name}.tar")
        return references

    def get_tree(self, reference: str, local: Path) -> Path:
        name = self.name_of(reference)
        if name is None:
            raise UsageError(f"{reference} is not in the matrix store {self.location}", "rerun the cell")
        if self.root is not None:
            data = read_bytes(self.root, name, limit=None)
        else:
            with self.fs.open(self._path(name), "rb") as handle:
                data = handle.read()
        names = unpack(data or b"", local)
        return local / names[0]

    def digest(self, reference: str) -> Optional[str]:
        name = self.name_of(reference)
        if name is None:
            return None
        if self.root is not None:
            return tree_digest(self.root, name)
        digest = hashlib.sha256()
        try:
            with self.fs.open(self._path(name), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except FileNotFoundError:
            return None
        return digest.hexdigest()


def _check_shareable(location: str, fs=None) -> None:
    """Refuse storage the cells' child processes cannot share with the driver (every protocol of a chained
    URL such as ``simplecache::memory://x`` counts)."""
    protocols = {part.partition("://")[0].lower() for part in location.split("::") if "://" in part}
    if fs is not None:
        from fsspec.implementations.memory import MemoryFileSystem

        if isinstance(fs, MemoryFileSystem) or isinstance(getattr(fs, "fs", None), MemoryFileSystem):
            protocols.add("memory")
    fix = "give a folder (-o zoo-out) or storage every worker reaches (file:///shared/zoo, s3://bucket/zoo)"
    if protocols & PROCESS_LOCAL:
        raise UsageError(f"-o {location}: memory:// storage lives inside one process, and every cell runs in a "
                         "child process of its own, so the run would keep nothing", fix)
    if protocols & READ_ONLY:
        raise UsageError(f"-o {location}: {sorted(protocols & READ_ONLY)[0]}:// storage cannot be written by the "
                         "cells' processes", fix)


def pack(files: dict) -> bytes:
    """{name in archive: local file or folder} as an uncompressed tar (models are already dense)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as archive:    # a linked model travels as bytes
        for name, path in files.items():
            archive.add(str(path), arcname=name or Path(path).name)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> list:
    """Extract a :func:`pack` archive into ``folder`` (tarfile's "data" filter: no links out, no devices);
    returns its top-level names in archive order."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        members = archive.getmembers()
        archive.extractall(folder, members=members, filter="data")
    return list(dict.fromkeys(m.name.split("/")[0] for m in members))




# --- a store on this machine: every access relative to the store's folder, never through a link -------------------
# fsutil's atomic writes resolve a path; these open each folder below the store's root with O_NOFOLLOW and work
# relative to its descriptor (openat, renameat, unlinkat), so a link planted anywhere in the store — or swapped in
# while a run is writing — is refused, never written through. The root itself is the user's -o, taken as given.

MAX_READ_BYTES = 64 << 20       # a record is kilobytes; a planted huge or sparse file is not read into memory
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _NotThere(Exception):
    """A name (or a folder on its way) is absent, or is a link or not a folder where a folder belongs."""


def plain(name: str) -> bool:
    """A relative name with no empty, ``.`` or ``..`` part (what the store's own names look like)."""
    parts = name.split("/")
    return bool(name) and "\\" not in name and "\0" not in name and all(p not in ("", ".", "..") for p in parts)


def _link_error(root: Path, parts: list) -> UsageError:
    return UsageError(f"{root / '/'.join(parts)} is a link or not a folder: a matrix store holds no links, and the "
                      "matrix never writes through one", "remove it (and check who planted it), or give a new -o")


@contextlib.contextmanager
def _folder(root: Path, parts: list, create: bool):
    """A descriptor of ``root/parts…`` opened without following a link below ``root``; ``create`` makes the missing
    folders (and raises UsageError at a link), else a missing folder or a link is _NotThere."""
    if create:
        root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise _NotThere() from exc
    try:
        for index, part in enumerate(parts):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            try:
                child = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:       # ELOOP: a link; ENOTDIR: a file; ENOENT: not there
                if create:
                    raise _link_error(root, parts[:index + 1]) from None
                raise _NotThere() from exc
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _split(name: str) -> tuple:
    if not plain(name):
        raise ValueError(f"not a store name: {name!r}")      # our own names only: a bug if it happens
    *parents, leaf = name.split("/")
    return parents, leaf


def read_bytes(root: Path, name: str, limit: Optional[int] = MAX_READ_BYTES) -> Optional[bytes]:
    """The bytes of a regular file of the store, or None: absent, a link (anywhere below root), a FIFO or device
    (opened non-blocking, never read), or larger than ``limit``."""
    parents, leaf = _split(name)
    try:
        with _folder(root, parents, create=False) as folder:
            fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except (_NotThere, OSError):
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = handle.read() if limit is None else handle.read(limit + 1)
    return None if limit is not None and len(data) > limit else data


def read_text(root: Path, name: str) -> Optional[str]:
    data = read_bytes(root, name)
    try:
        return None if data is None else data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def write_bytes(root: Path, name: str, data: bytes) -> None:
    """``data`` as ``name``: a new temporary file (O_CREAT|O_EXCL|O_NOFOLLOW) renamed over the name, in a folder
    opened without following links — a link at the name is replaced, never written through."""
    parents, leaf = _split(name)
    with _folder(root, parents, create=True) as folder:
        staged = f".{leaf}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(staged, leaf, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staged, dir_fd=folder)
            raise


def remove(root: Path, name: str) -> None:
    """Remove a file (or a link, as a name) of the store; nothing when it is not there."""
    parents, leaf = _split(name)
    try:
        with _folder(root, parents, create=False) as folder:
            os.unlink(leaf, dir_fd=folder)
    except (_NotThere, FileNotFoundError):
        pass


def names(root: Path, folder_name: str) -> list:
    """The entries of a folder of the store ([] when it is absent or a link)."""
    try:
        with _folder(root, folder_name.split("/"), create=False) as folder:
            return os.listdir(folder)
    except _NotThere:
        return []


def replace_folder(root: Path, name: str, local: Path) -> None:
    """Copy the local folder ``local`` to ``name`` whole: staged under a new name beside it, then swapped in (what
    was there is removed after, links in it as names), so no earlier file outlives a rerun."""
    parents, leaf = _split(name)
    staged, old = f".{leaf}.{uuid.uuid4().hex[:8]}.tmp", f".{leaf}.{uuid.uuid4().hex[:8]}.old"
    with _folder(root, parents, create=True) as folder:
        try:
            os.mkdir(staged, 0o777, dir_fd=folder)
            _copy_into(folder, staged, Path(local))
            with contextlib.suppress(FileNotFoundError):
                os.rename(leaf, old, src_dir_fd=folder, dst_dir_fd=folder)
            os.rename(staged, leaf, src_dir_fd=folder, dst_dir_fd=folder)
        finally:
            for leftover in (staged, old):
                _discard(folder, leftover)


def _discard(folder: int, name: str) -> None:
    """Remove a folder's entry: a folder by descriptor (rmtree with dir_fd follows no link), anything else — a link
    included — as a name."""
    try:
        is_folder = stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return
    if is_folder:
        shutil.rmtree(name, dir_fd=folder)
    else:
        os.unlink(name, dir_fd=folder)


def _copy_into(parent: int, name: str, local: Path) -> None:
    with contextlib.ExitStack() as stack:
        fd = os.open(name, _DIR, dir_fd=parent)
        stack.callback(os.close, fd)
        for entry in sorted(local.iterdir()):     # the cell's own scratch folder: what the export wrote
            if entry.is_dir() and not entry.is_symlink():
                os.mkdir(entry.name, 0o777, dir_fd=fd)
                _copy_into(fd, entry.name, entry)
            elif entry.is_file():
                out = os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o644, dir_fd=fd)
                with open(entry, "rb") as source, os.fdopen(out, "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)


def tree_digest(root: Path, name: str) -> Optional[str]:
    """sha256 of a file of the store, or of a folder's relative names and bytes in name order; None when it is
    absent or holds a link, FIFO or device (it is then not what was stored)."""
    parents, leaf = _split(name)
    digest = hashlib.sha256()
    try:
        with _folder(root, parents, create=False) as folder:
            if not _digest_entry(folder, leaf, "", digest):
                return None
    except (_NotThere, OSError):
        return None
    return digest.hexdigest()


def _digest_entry(parent: int, name: str, relative: str, digest) -> bool:
    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISREG(info.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        if relative:        # a folder's file: its name counts too (a lone file's digest is its sha256)
            digest.update(relative.encode() + b"\0")
        with os.fdopen(fd, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return True
    if not stat.S_ISDIR(info.st_mode):
        return False
    fd = os.open(name, _DIR, dir_fd=parent)
    try:
        return all(_digest_entry(fd, child, f"{relative}/{child}", digest) for child in sorted(os.listdir(fd)))
    finally:
        os.close(fd)


def foreign_entries(root: Path) -> list:
    """What a store's own names hold that deploykit never writes there: links and FIFOs, devices, sockets."""
    found = []
    for top in OURS:
        path = root / top
        if not os.path.lexists(path):
            continue
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            found.append(path)
            continue
        for folder, subfolders, files in os.walk(path):     # os.walk lists a linked folder, never enters it
            for entry in subfolders + files:
                mode = os.lstat(Path(folder) / entry).st_mode
                if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                    found.append(Path(folder) / entry)
    return found
