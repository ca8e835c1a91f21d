"""LocalBlobStore: content addressing, dedup, atomic durable writes, listing and deletion."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from apps.mailboxes.blobstore import BlobNotFound, LocalBlobStore, blob_hash


@pytest.fixture
def store(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def files_under(root) -> list:
    return sorted(p for p in root.rglob("*") if p.is_file())


def age(path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_blob_put_is_keyed_by_sha256(store):
    content = b"Subject: hi\r\n\r\nhello\r\n"

    sha256 = store.put(content)

    assert sha256 == hashlib.sha256(content).hexdigest() == blob_hash(content)
    path = store.path_for(sha256)
    assert path.name == sha256
    assert path.parent.name == sha256[:2]  # fanned out by hash prefix
    assert store.root in path.parents
    assert files_under(store.root) == [path]
    assert path.read_bytes() == content
    assert store.read(sha256) == content
    with store.open(sha256) as handle:
        assert handle.read() == content
    assert store.exists(sha256)


def test_blob_put_same_content_twice_stores_one_file(store):
    first = store.put(b"same bytes")
    second, third = store.put_many([b"same bytes", b"same bytes"])

    assert first == second == third
    assert files_under(store.root) == [store.path_for(first)]


def test_blob_put_many_returns_hashes_in_order_and_leaves_no_temp_files(store):
    contents = [f"message {i}\r\n".encode() * (i + 1) for i in range(20)] + [b""]

    hashes = store.put_many(contents)

    assert hashes == [blob_hash(c) for c in contents]
    assert [store.read(h) for h in hashes] == contents
    names = [p.name for p in files_under(store.root)]
    assert not [n for n in names if n.startswith(".tmp")]
    assert sorted(names) == sorted(set(hashes))
    assert oct(store.path_for(hashes[0]).stat().st_mode & 0o777) == "0o640"


def test_blob_put_of_existing_content_refreshes_its_age(store):
    """A blob that is stored again is as young as the new write: an orphan sweep running
    between the blob write and the row commit must not delete it."""
    sha256 = store.put(b"dedup me")
    age(store.path_for(sha256), 7200)
    assert list(store.iter_hashes(older_than=datetime.now(UTC) - timedelta(hours=1))) == [sha256]

    store.put(b"dedup me")

    assert list(store.iter_hashes(older_than=datetime.now(UTC) - timedelta(hours=1))) == []
    assert store.read(sha256) == b"dedup me"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "../../etc/passwd",
        "G" * 64,
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "../" + "a" * 61,
        "a" * 62 + "/.",
    ],
)
def test_blob_invalid_hash_is_not_found(store, bad):
    store.put(b"something")

    with pytest.raises(BlobNotFound):
        store.read(bad)
    with pytest.raises(BlobNotFound):
        store.path_for(bad)
    assert store.exists(bad) is False
    assert store.delete(bad) is False
    assert len(files_under(store.root)) == 1


def test_blob_read_unknown_hash_raises_blob_not_found(store):
    with pytest.raises(BlobNotFound):
        store.read(blob_hash(b"never stored"))
    assert store.exists(blob_hash(b"never stored")) is False


def test_blob_delete_removes_file_once(store):
    keep, gone = store.put_many([b"keep", b"gone"])

    assert store.delete(gone) is True
    assert store.delete(gone) is False

    assert not store.exists(gone)
    with pytest.raises(BlobNotFound):
        store.read(gone)
    assert store.read(keep) == b"keep"
    assert files_under(store.root) == [store.path_for(keep)]


def test_blob_iter_hashes_lists_all_or_only_older_than(store):
    old, young = store.put_many([b"old", b"young"])
    age(store.path_for(old), 3 * 3600)

    assert sorted(store.iter_hashes()) == sorted([old, young])
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    assert list(store.iter_hashes(older_than=cutoff)) == [old]


def test_blob_iter_hashes_removes_stale_temp_files_and_skips_foreign_files(store):
    sha256 = store.put(b"real")
    directory = store.path_for(sha256).parent
    stale = directory / ".tmp-0123456789abcdef"
    stale.write_bytes(b"half a mess")
    age(stale, 3 * 3600)
    fresh = directory / ".tmp-fedcba9876543210"
    fresh.write_bytes(b"being written")
    (directory / "README").write_text("not a blob")
    (store.root / "notes.txt").write_text("not a blob either")
    age(store.path_for(sha256), 3 * 3600)

    listed = list(store.iter_hashes(older_than=datetime.now(UTC) - timedelta(hours=1)))

    assert listed == [sha256]
    assert not stale.exists()
    assert fresh.exists()  # a write in progress is left alone


def test_blob_iter_hashes_on_missing_root_is_empty(tmp_path):
    assert list(LocalBlobStore(tmp_path / "nowhere").iter_hashes()) == []
