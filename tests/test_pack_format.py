"""The sync pack's format (atomicsig.store.pack): written from a journal, read back incrementally, and refused
when cut or altered. Fast: files only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from atomicsig.format.sigpath import digest_dirname
from atomicsig.store.journal import Journal
from atomicsig.store.pack import PackError, PackReader, pack_path, write_pack


def _store(root: Path, n: int) -> list[bytes]:
    blobs = []
    for i in range(n):
        digest = "sha256:" + hashlib.sha256(b"%d" % i).hexdigest()
        d = root / digest_dirname("ns/app", digest)
        d.mkdir(parents=True)
        blob = b"\xa3\x01not-a-real-signature-%d" % i  # the format does not judge signatures; intake does
        (d / "signature-1").write_bytes(blob)
        blobs.append(blob)
    Journal(root).rebuild()
    return blobs


def _read(data: bytes, step: int) -> tuple[PackReader, list[tuple[bytes, int, bytes | None]]]:
    r = PackReader()
    out = []
    for i in range(0, len(data), step):
        r.feed(data[i:i + step])
        out += [(e.line, e.end, e.blob) for e in r.entries()]
    return r, out


def test_round_trip_in_any_chunking(tmp_path: Path) -> None:
    blobs = _store(tmp_path, 5)
    (next(tmp_path.rglob("signature-1"))).unlink()  # a file gone since its line: packed without bytes
    head = write_pack(tmp_path)
    data = pack_path(tmp_path).read_bytes()
    journal = Journal(tmp_path).path.read_bytes()
    assert head.offset == len(journal) and head.records == 5 and head.epoch == Journal(tmp_path).epoch()
    for step in (1, 7, 4096):
        r, got = _read(data, step)
        assert r.complete and r.head() == head
        assert [line + b"\n" for line, _, _ in got] == journal.splitlines(keepends=True)[1:]
        assert got[-1][1] == len(journal)  # the cursor the follower computes: the journal's own offsets
        assert sum(b is None for _, _, b in got) == 1 and {b for _, _, b in got if b} < set(blobs)


def test_cut_or_altered_pack(tmp_path: Path) -> None:
    _store(tmp_path, 3)
    write_pack(tmp_path)
    data = pack_path(tmp_path).read_bytes()
    r, got = _read(data[:-100], 5)  # cut inside the last record: the complete ones only, no trailer
    assert not r.complete and 0 < len(got) < 3
    flipped = bytearray(data)
    flipped[-80] ^= 1  # inside the last blob: the trailer's hash no longer matches
    with pytest.raises(PackError, match="trailer"):
        _read(bytes(flipped), 4096)
    with pytest.raises(PackError, match="not an atomicsig pack"):
        _read(b"<html>" + b"x" * 200, 64)
    first = data.index(b"\n", data.index(b"\n") + 1 + 53) + 1  # the first record's size line starts here
    with pytest.raises(PackError, match="size line"):
        _read(data[:first] + b"zz" + data[data.index(b"\n", first):], 4096)
