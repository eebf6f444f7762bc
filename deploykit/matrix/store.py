"""Where a matrix keeps its results: a local folder, or shared storage given by URI (fsspec).

    OUT/cells/<key>.json        one finished cell, written atomically: a re-run skips its key
    OUT/artifacts/<key>/...     the cell's artifact and manifest (the record holds their reference)
    OUT/running/<key>.*.pid     who runs a cell now (local stores only; gone when it ends)
    OUT/matrix.json, matrix.html

A plain path is a local folder (atomic rename). Any URI — ``file:///shared/zoo``, ``s3://bucket/zoo`` — goes
through fsspec, so a Ray cluster's workers can write where the driver reads; for a URI other than file:// the
matching fsspec backend (s3fs, gcsfs, ...) must be installed. Files move between nodes as tar archives of the
files a cell needs (:func:`pack` / :func:`unpack`).
"""
from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path
from typing import Optional

from deploykit import fsutil
from deploykit.errors import UsageError


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

    def put_tree(self, local: Path, name: str) -> str:
        """Copy a local file or folder to ``name``; returns its reference (URL)."""
        raise NotImplementedError

    def get_tree(self, reference: str, local: Path) -> Path:
        """Bring a reference from :meth:`put_tree` to ``local``; returns the local path."""
        raise NotImplementedError

    def local_folder(self) -> Optional[Path]:
        """The folder on this machine, when the store is one (pid files, artifacts written in place)."""
        return None

    def finished(self, key: str) -> Optional[dict]:
        """The record of a finished cell, or None (a damaged record counts as not finished)."""
        text = self.read_text(f"cells/{key}.json")
        if text is None:
            return None
        try:
            record = json.loads(text)
        except ValueError:
            return None
        return record if isinstance(record, dict) and record.get("key") == key else None

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
        return str(self.root / name)

    def read_text(self, name: str) -> Optional[str]:
        try:
            return (self.root / name).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_text(self, name: str, text: str) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_text_atomic(path, text)

    def put_tree(self, local: Path, name: str) -> str:
        target = self.root / name
        if Path(local).resolve() != target.resolve():
            import shutil

            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if Path(local).is_dir() else shutil.copy2)(local, target)
        return str(target)

    def get_tree(self, reference: str, local: Path) -> Path:
        return Path(reference)


class RemoteStore(Store):
    """fsspec storage: writes go to a temporary name, then move into place (a reader never sees half a file)."""

    def __init__(self, location: str) -> None:
        try:
            from fsspec.core import url_to_fs
        except ImportError:
            raise UsageError(f"-o {location} is a URI and fsspec is not installed",
                             "pip install fsspec (and its backend for the scheme), or give a local folder") from None
        try:
            self.fs, self.base = url_to_fs(location)
        except (ImportError, ValueError) as exc:
            raise UsageError(f"-o {location}: no storage backend for this URI ({exc})",
                             "install the fsspec backend for the scheme (s3fs, gcsfs, ...), or give a local folder") from None
        self.location = location.rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.base.rstrip('/')}/{name}"

    def local_folder(self) -> Optional[Path]:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return Path(self.base) if protocol in ("file", "local") else None

    def url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def read_text(self, name: str) -> Optional[str]:
        try:
            with self.fs.open(self._path(name), "r") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str) -> None:
        self._write_bytes(name, text.encode())

    def _write_bytes(self, name: str, data: bytes) -> None:
        final = self._path(name)
        staged = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(final.rpartition("/")[0], exist_ok=True)
        with self.fs.open(staged, "wb") as handle:
            handle.write(data)
        self.fs.mv(staged, final)

    def put_tree(self, local: Path, name: str) -> str:
        self._write_bytes(name + ".tar", pack({Path(local).name: Path(local)}))
        return self.url(name + ".tar")

    def get_tree(self, reference: str, local: Path) -> Path:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(reference)
        with fs.open(path, "rb") as handle:
            names = unpack(handle.read(), local)
        return local / names[0]


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
