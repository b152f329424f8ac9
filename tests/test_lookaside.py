"""The lookaside directory layout and concurrent, gap-free, exclusive appends (SPEC §3.1, §3.3)."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from atomicsig.errors import InputError, StorageError
from atomicsig.format import reference, sigpath
from atomicsig.store import directory as lookaside
from atomicsig.store import http, select, sigdir

HEX = "c" * 64
DIG = "sha256:" + HEX


def test_layout_and_modes(tmp_path: Path) -> None:
    os.umask(0o077)  # modes must not depend on the umask
    try:
        store = lookaside.DirectoryStore(tmp_path / "store")
        for text, rel in [("registry.example.com:5000/ns1/ns2/app:1", "ns1/ns2/app"),
                          ("busybox", "library/busybox"), ("localhost:5000/alpine:3", "alpine")]:
            res = store.append(reference.parse(text), DIG, b"\xa3blob-" + text.encode())
            assert res.created and res.index == 1
            assert res.location == str(tmp_path / "store" / f"{rel}@sha256={HEX}" / "signature-1")
            p = Path(res.location)
            assert stat.S_IMODE(p.stat().st_mode) == 0o644
            d = p.parent
            while d != tmp_path:
                assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
                d = d.parent
    finally:
        os.umask(0o022)
    assert not list((tmp_path / "store").rglob(".tmp-*"))


def test_append_next_index_dedup_and_gap(tmp_path: Path) -> None:
    store = lookaside.DirectoryStore(tmp_path)
    ref = reference.parse("quay.io/ns/app:1")
    assert store.append(ref, DIG, b"\xa3one").index == 1
    assert store.append(ref, DIG, b"\xa3two").index == 2
    again = store.append(ref, DIG, b"\xa3one")
    assert (again.index, again.created) == (1, False)
    assert [s.blob for s in store.read(ref, DIG)] == [b"\xa3one", b"\xa3two"]
    # Readers stop at the first gap, like c/image.
    d = Path(store.digest_dir(ref, DIG))
    (d / "signature-4").write_bytes(b"\xa3four")
    assert len(store.read(ref, DIG)) == 2
    assert store.read(ref, "sha256:" + "d" * 64) == []


def _worker(root: str, i: int) -> None:
    store = lookaside.DirectoryStore(root)
    store.append(reference.parse("quay.io/ns/app:1"), DIG, b"\xa3" + f"signature from worker {i}".encode() * 50)


def test_concurrent_appends_each_get_a_file(tmp_path: Path) -> None:
    n = 8
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), i)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    d = tmp_path / f"ns/app@sha256={HEX}"
    names = sorted(os.listdir(d))
    assert names == sorted(f"signature-{i}" for i in range(1, n + 1))  # gap-free, no temp files left
    blobs = {(d / f).read_bytes() for f in names}
    assert blobs == {b"\xa3" + f"signature from worker {i}".encode() * 50 for i in range(n)}  # complete, distinct


def test_symlink_escape_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "store"
    root.mkdir()
    (root / "ns").symlink_to(outside)
    store = lookaside.DirectoryStore(root)
    with pytest.raises(StorageError, match="outside"):
        store.append(reference.parse("quay.io/ns/app:1"), DIG, b"\xa3x")
    assert list(outside.iterdir()) == []  # nothing created outside the store
    (root / f"other@sha256={HEX}").symlink_to(outside)
    with pytest.raises(StorageError, match="outside"):
        store.read(reference.parse("quay.io/other:1"), DIG)


def test_store_is_a_file_or_under_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    for root in (f, f / "sub"):
        with pytest.raises(StorageError):
            lookaside.DirectoryStore(root).append(reference.parse("quay.io/a:1"), DIG, b"\xa3x")
    assert f.read_text() == "x"


def test_digest_dirname_validation() -> None:
    assert sigpath.digest_dirname("a/b", DIG) == f"a/b@sha256={HEX}"
    for path in ("../x", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(InputError):
            sigpath.digest_dirname(path, DIG)
    with pytest.raises(reference.ReferenceError_):
        sigpath.digest_dirname("a", "sha256:../../etc")


def test_open_store_and_http_url() -> None:
    assert isinstance(select.open_store("/x"), lookaside.DirectoryStore)
    s = select.open_store("file:///var/lib/x%20y")
    assert isinstance(s, lookaside.DirectoryStore) and str(s.root) == "/var/lib/x y"
    h = select.open_store("https://sigs.example.com/base/")
    assert isinstance(h, http.HTTPLookaside)
    assert h.url(reference.parse("busybox"), DIG, 3) == \
        f"https://sigs.example.com/base/library/busybox@sha256={HEX}/signature-3"
    with pytest.raises(InputError):
        select.open_store("s3://bucket")
    with pytest.raises(InputError):
        h.append(reference.parse("busybox"), DIG, b"\xa3")


def test_max_signatures(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for i in range(1, sigpath.MAX_LOOKASIDE_SIGNATURES):
        (d / f"signature-{i}").write_bytes(b"\xa3%d" % i)
    with pytest.raises(StorageError, match="127"):
        sigdir.append_to_dir(d, b"\xa3new")
    (d / "signature-128").write_bytes(b"\xa3")
    with pytest.raises(StorageError, match="refuses"):
        sigdir.read_dir(d)
