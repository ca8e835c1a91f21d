"""Content-addressed storage for raw RFC 5322 messages.

Blobs are keyed by the SHA-256 of their bytes, so identical content is stored once, and
every other part of A3Mailer (delivery, export, backups, erasure) talks in those hashes.
`LocalBlobStore` is the default; anything with the same small interface (an S3-compatible
store, say) can replace it through `A3_BLOB_STORE`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import BinaryIO, Protocol

from django.conf import settings
from django.utils.module_loading import import_string

HEX = frozenset("0123456789abcdef")


class BlobNotFound(LookupError):
    pass


class BlobStore(Protocol):
    def put_many(self, contents: Iterable[bytes]) -> list[str]:
        """Store each content durably (fsynced) before returning their hashes."""

    def put(self, content: bytes) -> str: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def read(self, sha256: str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> bool: ...

    def iter_hashes(self, *, older_than: datetime | None = None) -> Iterator[str]: ...


def blob_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _valid_hash(sha256: str) -> bool:
    return len(sha256) == 64 and set(sha256) <= HEX


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    """Blobs as files under root/ab/<sha256> (256 directories: few enough that they all
    exist after the first few hundred messages, so a write costs one directory fsync,
    not three for a freshly made path).

    A write goes to a temporary file in the final directory, is fsynced, renamed into
    place and the directory fsynced: after `put` returns, a crash or power loss cannot
    lose the blob or leave a partial one under its final name.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        if not _valid_hash(sha256):
            raise BlobNotFound(sha256)
        return self.root / sha256[:2] / sha256

    def put(self, content: bytes) -> str:
        return self.put_many([content])[0]

    def put_many(self, contents: Iterable[bytes]) -> list[str]:
        hashes: list[str] = []
        dirs_to_sync: set[Path] = set()
        for content in contents:
            sha256 = blob_hash(content)
            hashes.append(sha256)
            final = self.path_for(sha256)
            if final.exists():
                # Identical content is stored once. Refresh its age so that the orphan
                # sweep's grace period protects it until the new row is committed.
                try:
                    os.utime(final)
                    continue
                except FileNotFoundError:
                    pass  # swept just now: write it again

            directory = final.parent
            if not directory.exists():
                directory.mkdir(parents=True, exist_ok=True)
                dirs_to_sync.add(directory.parent)  # the new directory's entry, too
            temp = directory / f".tmp-{secrets.token_hex(8)}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(content)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, final)
            dirs_to_sync.add(directory)
        # One fsync per directory per batch, however many blobs landed in it.
        for directory in sorted(dirs_to_sync, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(directory)
        return hashes

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.path_for(sha256).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(sha256) from None

    def read(self, sha256: str) -> bytes:
        with self.open(sha256) as handle:
            return handle.read()

    def exists(self, sha256: str) -> bool:
        return _valid_hash(sha256) and self.path_for(sha256).exists()

    def delete(self, sha256: str) -> bool:
        try:
            self.path_for(sha256).unlink()
        except (FileNotFoundError, BlobNotFound):
            return False
        return True

    def iter_hashes(self, *, older_than: datetime | None = None) -> Iterator[str]:
        """Every stored hash (and stale temp files are removed on the way)."""
        cutoff = older_than.timestamp() if older_than else None
        if not self.root.exists():
            return
        for directory in self.root.iterdir():  # root/ab/<sha256>, as path_for lays them out
            if not directory.is_dir() or len(directory.name) != 2:
                continue
            for entry in directory.iterdir():
                try:
                    mtime = entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if cutoff is not None and mtime >= cutoff:
                    continue
                if entry.name.startswith(".tmp-"):
                    if cutoff is not None:  # never a write still in progress
                        entry.unlink(missing_ok=True)  # a write that never finished
                elif _valid_hash(entry.name) and entry.name[:2] == directory.name:
                    yield entry.name


@cache
def _store_for(path: str, root: str) -> BlobStore:
    return import_string(path)(root)


def blob_store() -> BlobStore:
    """The configured blob store (A3_BLOB_STORE, rooted at A3_BLOB_DIR)."""
    return _store_for(settings.A3_BLOB_STORE, str(settings.A3_BLOB_DIR))
