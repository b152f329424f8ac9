"""The sync pack: the journal up to a position with every signature it names inlined, for a fast first sync.

A joining node would otherwise GET every signature the journal names, one request each (~190 signatures/s).
The pack is one file, ``<sigstore>/.atomicsig/pack``, written by ``atomicsig pack`` and served by ``atomicsig
serve`` or by any static web server (nginx) next to the journal, so the follower reads it in one streaming
request (docs/sync.md, "Bulk first sync"). Layout (all ASCII except the blobs)::

    atomicsig-pack 1 <journal offset> <last seq> <records>\\n
    <the journal's 53-byte header line, epoch included>
    for each journal record, in journal order:
        <the journal line, byte for byte, with its \\n>
        <blob length>\\n<blob bytes>         an ``add`` whose file still holds those bytes
        -\\n                                 a ``del``, or an ``add`` whose file changed or is gone
    end <sha256 hex of every byte before "end">\\n

Why this shape: the pack *is* the journal prefix, so the follower handles its records with the same rules as the
journal's (sequence continuity, the same rejects) and computes its cursor from the lines it read — never from
a number the pack merely claims. A truncated pack leaves the cursor after its last complete record and the
journal tail continues from there: no gap. The first line names the position the pack covers, so the follower
can tell a complete pack (trailer present, position and count reached) from a cut one, and the header carries
the epoch, so a pack from an earlier journal (``atomicsig index`` since) is recognised and not used. Nothing in a
pack is trusted: every blob goes through the same trust check as a GET (atomicsig.ops.intake), and the sha256
the journal line names must match the inlined bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from atomicsig import fsutil
from atomicsig.errors import InputError, StorageError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.store.journal import HEADER_LEN, MAX_LINE, META_DIR, Journal, JournalError, parse_header, parse_line

PACK_NAME = "pack"
MAGIC = b"atomicsig-pack 1 "
_FIRST = re.compile(rb"^atomicsig-pack 1 ([0-9]{1,18}) ([0-9]{1,18}) ([0-9]{1,18})\n\Z")
_TRAILER = re.compile(rb"^end ([0-9a-f]{64})\n\Z")
_SIZE = re.compile(rb"^(?:([0-9]{1,7})|-)\n\Z")


class PackError(StorageError):
    """A pack that is not well-formed from some byte on (records before it stay valid)."""


@dataclass(frozen=True)
class PackHead:
    """What the first two lines say: the journal position covered, its last seq, the record count, the epoch."""

    offset: int
    seq: int
    records: int
    epoch: str


@dataclass(frozen=True)
class PackEntry:
    """One journal record of the pack: its line (without the newline, as :func:`parse_line` takes it), the
    journal offset just after it, and its inlined bytes."""

    line: bytes
    end: int
    blob: bytes | None
    pack_end: int  # pack bytes read through this record (from where the reader started)


def pack_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / META_DIR / PACK_NAME


def write_pack(root: str | os.PathLike[str]) -> PackHead:
    """Write ``<root>/.atomicsig/pack`` from the journal as it is now (temp + fsync + rename: a reader sees the
    old pack or the new one). Signatures are read confined to the store (no symlinks, regular files, ≤ 4 MiB),
    without the directory locks: a file that changed since its line was written is inlined only if its bytes
    still have the line's sha256, otherwise the record is packed without bytes (the follower fetches it, or
    counts it ``gone``, as for a 404)."""
    store = Path(root)
    journal = Journal(store)
    try:
        with open(journal.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{store} has no journal; run `atomicsig index {store}` first") from None
    epoch = parse_header(data[:HEADER_LEN])
    good = data.rfind(b"\n") + 1  # a torn last line (a writer killed mid-append) is not part of the journal yet
    parts: list[bytes] = []
    seq = count = 0
    pos = HEADER_LEN
    while pos < good:
        nl = data.index(b"\n", pos)
        line = data[pos:nl + 1]
        pos = nl + 1
        count += 1
        parts.append(line)
        try:
            rec = parse_line(line[:-1], pos)
        except (JournalError, InputError):
            parts.append(b"-\n")
            continue
        seq = rec.seq
        blob = _read_if_same(store, str(rec.path), rec.sha256) if rec.op == "add" else None
        parts.append(b"-\n" if blob is None else b"%d\n%s" % (len(blob), blob))
    first = MAGIC + b"%d %d %d\n" % (pos, seq, count)
    body = b"".join([first, data[:HEADER_LEN], *parts])
    body += b"end %s\n" % hashlib.sha256(body).hexdigest().encode()
    fsutil.makedirs(store / META_DIR, 0o755)
    fsutil.atomic_write(pack_path(store), body, 0o644)
    return PackHead(pos, seq, count, epoch)


def _read_if_same(root: Path, rel: str, sha: str) -> bytes | None:
    try:
        blob = fsutil.read_regular_file(root, rel, MAX_SIGNATURE_SIZE)
    except (OSError, StorageError):
        return None
    return blob if hashlib.sha256(blob).hexdigest() == sha else None


def read_head(root: str | os.PathLike[str]) -> PackHead | None:
    """The head of the local pack (None: no pack, or not one we can read): how ``serve`` knows what it offers."""
    try:
        with open(pack_path(root), "rb") as f:
            reader = PackReader()
            reader.feed(f.read(256))
            return reader.head()
    except (OSError, PackError, JournalError):
        return None


class PackReader:
    """Incremental parser: :meth:`feed` it bytes as they arrive, take :meth:`entries`; :attr:`complete` once the
    trailer is read and matches. Memory: the unparsed tail only (at most one record, ≤ 4 MiB + 1 KiB)."""

    def __init__(self, resume_offset: int | None = None) -> None:
        """``resume_offset``: the bytes fed start inside the pack, at the record after journal offset
        ``resume_offset`` (a cut pass resumed with a Range request); the trailer's hash then cannot be checked
        (it covers the whole pack), only its form."""
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._head: PackHead | None = None
        self._resumed = resume_offset is not None
        self._offset = HEADER_LEN if resume_offset is None else resume_offset
        self.consumed = 0
        self.read_records = 0
        self.complete = False

    def feed(self, data: bytes) -> None:
        if self.complete and data:
            raise PackError("bytes after the pack's trailer")
        self._buf += data

    def head(self) -> PackHead | None:
        """Parse the first line and the journal header once they have arrived (None: not yet)."""
        if self._head is not None:
            return self._head
        nl = self._buf.find(b"\n")
        if nl == -1:
            if len(self._buf) > 128 or not MAGIC.startswith(bytes(self._buf[:len(MAGIC)])):
                raise PackError("not an atomicsig pack")
            return None
        m = _FIRST.match(bytes(self._buf[:nl + 1]))
        if not m:
            raise PackError("not an atomicsig pack (bad first line)")
        if len(self._buf) < nl + 1 + HEADER_LEN:
            return None
        header = bytes(self._buf[nl + 1:nl + 1 + HEADER_LEN])
        epoch = parse_header(header)
        self._consume(nl + 1 + HEADER_LEN)
        self._head = PackHead(int(m[1]), int(m[2]), int(m[3]), epoch)
        return self._head

    def _consume(self, n: int) -> bytes:
        taken = bytes(self._buf[:n])
        del self._buf[:n]
        if not self._resumed:
            self._hash.update(taken)
        self.consumed += n
        return taken

    def entries(self) -> Iterator[PackEntry]:
        """Every complete record buffered so far, in order; stops at an incomplete one (more to feed)."""
        if not self._resumed and self.head() is None:
            return
        while not self.complete:
            nl = self._buf.find(b"\n", 0, MAX_LINE + 1)
            if nl == -1:
                if len(self._buf) > MAX_LINE:
                    raise PackError(f"pack record at journal offset {self._offset} has no line end")
                return
            if self._buf.startswith(b"end "):
                m = _TRAILER.match(bytes(self._buf[:nl + 1]))
                expected = self._hash.hexdigest()
                if not m or (not self._resumed and m[1].decode() != expected):
                    raise PackError("the pack's trailer does not match its content (tampered or corrupt)")
                del self._buf[:nl + 1]
                if self._buf:
                    raise PackError("bytes after the pack's trailer")
                self.complete = True
                return
            nl2 = self._buf.find(b"\n", nl + 1, nl + 10)
            if nl2 == -1:
                if len(self._buf) > nl + 10:
                    raise PackError(f"pack record at journal offset {self._offset}: bad size line")
                return
            size = _SIZE.match(bytes(self._buf[nl + 1:nl2 + 1]))
            if size is None:
                raise PackError(f"pack record at journal offset {self._offset}: bad size line")
            n = int(size[1]) if size[1] is not None else -1
            if n > MAX_SIGNATURE_SIZE:
                raise PackError(f"pack record at journal offset {self._offset}: {n} bytes, over the "
                                f"{MAX_SIGNATURE_SIZE} limit")
            need = nl2 + 1 + max(n, 0)
            if len(self._buf) < need:
                return
            line = self._consume(nl + 1)
            self._consume(nl2 - nl)
            blob = self._consume(n) if n >= 0 else None
            self._offset += len(line)
            self.read_records += 1
            yield PackEntry(line[:-1], self._offset, blob, self.consumed)
