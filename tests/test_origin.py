"""Where the origin records live (atomicsig.store.origin): the digest directory's extended attribute, a file where
the attribute cannot hold the record, and the files stores written before the attribute still hold.

Real files on the test's filesystem (ext4 or tmpfs here; both keep ``user.`` attributes). Each test states what a
delete from a sync peer is then allowed to do, since that is what the records are for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from atomicsig.format.sigpath import digest_dirname
from atomicsig.store import origin
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.prune import remove_blob
from atomicsig.store.sigdir import read_dir
from tests.test_recovery import REPO, sha

PEER = "https://peer-a.example:8443/sigstore"
OTHER = "https://peer-b.example:8443/sigstore"
DIG = "sha256:" + "a" * 64
DIRNAME = digest_dirname(REPO, DIG)


def _legacy(root: Path, doc: dict[str, list[str]]) -> Path:
    """A record as stores written before the attribute hold it."""
    path = root / ".atomicsig" / "origins" / f"{DIRNAME}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _attr(root: Path) -> dict[str, list[str]] | None:
    try:
        return json.loads(os.getxattr(root / DIRNAME, origin.XATTR))  # type: ignore[no-any-return]
    except OSError:
        return None


def test_one_append_and_a_batch_keep_the_record_on_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = DirectoryStore(root)
    store.append_path(REPO, DIG, b"one", origin=PEER)
    store.append_batch([(REPO, DIG, b"two"), (REPO, "sha256:" + "b" * 64, b"three")], origin=OTHER)
    assert _attr(root) == {sha(b"one"): [PEER], sha(b"two"): [OTHER]}
    assert origin.records(root, digest_dirname(REPO, "sha256:" + "b" * 64)) == {sha(b"three"): [OTHER]}
    assert not (root / ".atomicsig" / "origins").exists()
    assert remove_blob(root, DIRNAME, sha(b"one"), OTHER) == "not-origin"
    assert remove_blob(root, DIRNAME, sha(b"one"), PEER) == "deleted"
    assert [s.blob for s in read_dir(root / DIRNAME)] == [b"two"]
    store.append_path(REPO, DIG, b"four", origin=PEER)  # the next record drops the deleted bytes' entry
    assert _attr(root) == {sha(b"two"): [OTHER], sha(b"four"): [PEER]}


def test_a_record_from_before_the_attribute_is_honoured_and_moved_on_the_next_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = DirectoryStore(root)
    store.append_path(REPO, DIG, b"one")  # local: no record
    legacy = _legacy(root, {sha(b"one"): [PEER]})
    assert origin.recorded(root, DIRNAME, sha(b"one")) == [PEER]
    assert origin.also_delivered(root, DIRNAME, sha(b"one"), OTHER)
    assert _attr(root) == {sha(b"one"): [PEER, OTHER]}
    assert not legacy.exists()
    assert remove_blob(root, DIRNAME, sha(b"one"), PEER) == "withdrawn"
    assert remove_blob(root, DIRNAME, sha(b"one"), OTHER) == "deleted"


def test_a_record_too_large_for_one_attribute_is_a_file_until_it_fits_again(tmp_path: Path) -> None:
    """ext4 keeps one attribute in about a block (4 KiB): 20 signatures from two 100-character URLs do not fit,
    from one they do. The record then lives in the file (and the attribute is removed, since it would win); once
    withdrawals shrink it, it moves back. Every step answers deletes the same."""
    root = tmp_path / "store"
    store = DirectoryStore(root)
    long_a, long_b = PEER + "/" + "a" * 60, OTHER + "/" + "b" * 60
    blobs = [b"sig-%d" % i for i in range(20)]
    store.append_batch([(REPO, DIG, b) for b in blobs], origin=long_a)
    for b in blobs:
        origin.also_delivered(root, DIRNAME, sha(b), long_b)
    file = root / ".atomicsig" / "origins" / f"{DIRNAME}.json"
    if _attr(root) is not None:
        pytest.skip("this filesystem keeps a 16 KiB attribute; the fallback is not reached here")
    assert json.loads(file.read_text()) == {sha(b): [long_a, long_b] for b in blobs}
    assert origin.recorded(root, DIRNAME, sha(blobs[0])) == [long_a, long_b]
    for b in blobs:
        assert remove_blob(root, DIRNAME, sha(b), long_b) == "withdrawn"
    assert _attr(root) == {sha(b): [long_a] for b in blobs}
    assert not file.exists()
    assert remove_blob(root, DIRNAME, sha(blobs[0]), long_b) == "not-origin"
    assert remove_blob(root, DIRNAME, sha(blobs[0]), long_a) == "deleted"


def test_a_stale_file_of_a_directory_made_again_is_not_read(tmp_path: Path) -> None:
    """A directory removed by hand and synced again: the file left from its first life names a source that did
    not deliver what is there now. The new directory's attribute wins over it."""
    root = tmp_path / "store"
    _legacy(root, {sha(b"new"): [OTHER]})
    DirectoryStore(root).append_batch([(REPO, DIG, b"new")], origin=PEER)
    assert origin.recorded(root, DIRNAME, sha(b"new")) == [PEER]
    assert remove_blob(root, DIRNAME, sha(b"new"), OTHER) == "not-origin"


def test_no_record_is_read_through_a_planted_symlink(tmp_path: Path) -> None:
    """The directory is opened without following a symlink below the root: a link planted in place of a digest
    directory (to one with a record naming the attacker) reads as no record, so its deletes are refused."""
    root = tmp_path / "store"
    elsewhere = tmp_path / "elsewhere"
    DirectoryStore(elsewhere).append_path(REPO, DIG, b"one", origin=PEER)
    (root / REPO).mkdir(parents=True)
    (root / DIRNAME).symlink_to(elsewhere / DIRNAME)
    assert origin.records(root, DIRNAME) == {}
    assert origin.records(elsewhere, DIRNAME) == {sha(b"one"): [PEER]}
