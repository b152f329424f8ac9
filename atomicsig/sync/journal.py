"""The per-store append-only journal that followers read instead of scanning the whole sigstore.

``<sigstore>/.atomicsig/journal`` starts with a fixed-length header naming the file's *epoch* (a random id), then
one line per change::

    atomicsig-journal 1 <32 hex epoch>\\n
    <seq> add <repo path>@sha256=<hex>/signature-<N> <sha256 of the bytes>\\n
    <seq> del <repo path>@sha256=<hex>/signature-<N> <sha256 of the bytes>\\n

Why this shape: a follower keeps only (epoch, byte offset) and asks for ``Range: bytes=<offset>-``, so one pass
costs in proportion to what changed, and the same file works behind ``atomicsig serve`` and behind any static web
server (nginx serves Range and ETag). The header has a fixed length so a follower can re-check the epoch with a
tiny ``Range: bytes=0-53``. ``atomicsig index`` rebuilds the file from a full scan (stores written by skopeo or
podman have no journal) with a new epoch, atomically (temp + rename), so followers restart at 0 and dedup by
content (SPEC §3.3: identical bytes are never stored twice under one digest).

Writers append under an exclusive ``flock`` on a separate lock file (the journal itself is replaced by renames)
and first cut a torn last line left by a crash mid-append. An append-only log is the one file here not written by
temp + rename: rewriting it per signature would make every write O(store size).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import fsutil
from ..errors import InputError, StorageError
from ..lookaside import MAX_LOOKASIDE_SIGNATURES, digest_dirname
from ..reference import parse as parse_reference

META_DIR = ".atomicsig"
JOURNAL_NAME = "journal"
LOCK_NAME = "journal.lock"
MAGIC = b"atomicsig-journal 1 "
HEADER_LEN = len(MAGIC) + 32 + 1  # 53 bytes: magic, 32 hex epoch, newline
#: A journal line longer than this is corruption (or a hostile peer), never a real record.
MAX_LINE = 1024
OPS = ("add", "del")

_RELPATH = re.compile(r"^(?P<repo>[^@\s]+)@sha256=(?P<hex>[a-f0-9]{64})/signature-(?P<n>[1-9][0-9]{0,2})$")
_SHA = re.compile(r"^[a-f0-9]{64}$")


class JournalError(StorageError):
    """A journal (ours or a peer's) is not in the format above."""


@dataclass(frozen=True)
class SigPath:
    """A validated ``<repo path>@sha256=<hex>/signature-N`` path, relative to a sigstore root."""

    repo: str
    digest: str
    index: int

    @property
    def dirname(self) -> str:
        return digest_dirname(self.repo, self.digest)

    def __str__(self) -> str:
        return f"{self.dirname}/signature-{self.index}"


def parse_sigpath(relpath: str) -> SigPath:
    """Validate a signature path from a peer strictly: repo grammar of reference.py, sha256 digest, N < 128.

    Everything a peer names ends up as a local path, so anything that is not exactly this shape is refused
    (no ``..``, no absolute paths, no uppercase, no other algorithms).
    """
    m = _RELPATH.match(relpath)
    if not m:
        raise InputError(f"invalid signature path {relpath[:200]!r}")
    repo, n = m.group("repo"), int(m.group("n"))
    try:
        ref = parse_reference(f"localhost/{repo}")
    except InputError as exc:
        raise InputError(f"invalid repository path in {relpath[:200]!r}") from exc
    if ref.domain != "localhost" or ref.path != repo or not ref.name_only or n >= MAX_LOOKASIDE_SIGNATURES:
        raise InputError(f"invalid signature path {relpath[:200]!r}")
    sp = SigPath(repo, "sha256:" + m.group("hex"), n)
    digest_dirname(sp.repo, sp.digest)  # the lookaside's own checks, once more
    return sp


@dataclass(frozen=True)
class Record:
    seq: int
    op: str
    path: SigPath
    sha256: str
    end: int  # byte offset just after this record's newline


def parse_line(line: bytes, end: int) -> Record:
    """One journal line (without its newline) → Record, or JournalError / InputError (bad path)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError as exc:
        raise JournalError("journal line is not ASCII") from exc
    parts = text.split(" ")
    if len(parts) != 4 or not parts[0].isdigit() or parts[1] not in OPS or not _SHA.match(parts[3]):
        raise JournalError(f"malformed journal line {text[:120]!r}")
    return Record(int(parts[0]), parts[1], parse_sigpath(parts[2]), parts[3], end)


def parse_header(data: bytes) -> str:
    """The epoch from the first HEADER_LEN bytes."""
    head = data[:HEADER_LEN]
    epoch = head[len(MAGIC):-1]
    if len(head) != HEADER_LEN or not head.startswith(MAGIC) or head[-1:] != b"\n" \
            or not re.fullmatch(rb"[a-f0-9]{32}", epoch):
        raise JournalError("not an atomicsig journal (bad header)")
    return epoch.decode()


def iter_lines(data: bytes, base: int) -> Iterator[tuple[bytes, int]]:
    """Complete lines of ``data`` (which starts at file offset ``base``) with the offset after each newline.

    A trailing partial line is left out: it is either still being written or torn, and the caller re-reads it
    next time from the returned offset.
    """
    start = 0
    while True:
        nl = data.find(b"\n", start)
        if nl == -1:
            if len(data) - start > MAX_LINE:
                raise JournalError(f"journal line at offset {base + start} is longer than {MAX_LINE} bytes")
            return
        if nl - start > MAX_LINE:
            raise JournalError(f"journal line at offset {base + start} is longer than {MAX_LINE} bytes")
        yield data[start:nl], base + nl + 1
        start = nl + 1


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Journal:
    """The journal of one local sigstore directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.meta = self.root / META_DIR
        self.path = self.meta / JOURNAL_NAME

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock shared by appenders, ``index`` and ``prune`` (a separate file: the journal is renamed)."""
        fsutil.makedirs(self.meta, 0o755)
        try:
            fd = os.open(self.meta / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open the journal lock in {self.meta}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def epoch(self) -> str | None:
        try:
            with open(self.path, "rb") as f:
                return parse_header(f.read(HEADER_LEN))
        except FileNotFoundError:
            return None

    def append(self, entries: Iterable[tuple[str, str, str]]) -> None:
        """Append ``(op, relpath, sha256)`` records; creates the journal by a full scan if there is none yet."""
        items = list(entries)
        for op, rel, sha in items:
            if op not in OPS or not _SHA.match(sha):
                raise JournalError(f"refusing to journal {op} {rel} {sha}")
            parse_sigpath(rel)
        with self.locked():
            if not self.path.exists():
                # A store that existed before its journal: the scan already sees the new files.
                self._rebuild_locked()
                return
            self._append_locked(items)

    def _append_locked(self, items: list[tuple[str, str, str]]) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise StorageError(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            seq, good = _last_seq(fd, size)
            if good != size:  # a crash left a torn last line; cut it
                os.ftruncate(fd, good)
            os.lseek(fd, good, os.SEEK_SET)
            lines = []
            for op, rel, sha in items:
                seq += 1
                lines.append(f"{seq} {op} {rel} {sha}\n")
            data = "".join(lines).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                # Do not leave our own torn line behind; the next appender would cut it anyway.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, good)
            raise StorageError(f"cannot append to {self.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def rebuild(self) -> int:
        """``atomicsig index``: a new epoch listing every signature found by a scan. Returns the record count."""
        with self.locked():
            return self._rebuild_locked()

    def _rebuild_locked(self) -> int:
        header = MAGIC + secrets.token_hex(16).encode() + b"\n"
        lines = [header]
        seq = 0
        for rel, sha in scan(self.root):
            seq += 1
            lines.append(f"{seq} add {rel} {sha}\n".encode())
        fsutil.atomic_write(self.path, b"".join(lines), 0o644)
        return seq

    def has_recent(self, sha256: str, window: int = 256 * 1024) -> bool:
        """Whether an ``add`` of these bytes is among the last ``window`` bytes of the journal (cheap check)."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - window))
                return f" {sha256}\n".encode() in f.read()
        except FileNotFoundError:
            return False

    def read_from(self, offset: int) -> tuple[str, bytes]:
        """(epoch, bytes from ``offset``) of the local journal, for tests, ``status`` and local sources."""
        with open(self.path, "rb") as f:
            epoch = parse_header(f.read(HEADER_LEN))
            f.seek(max(offset, HEADER_LEN))
            return epoch, f.read()


def _last_seq(fd: int, size: int) -> tuple[int, int]:
    """(seq of the last complete record, offset just after it). Reads only the tail of the file."""
    if size < HEADER_LEN:
        raise JournalError("journal is shorter than its header")
    window = min(size, 4 * MAX_LINE)
    tail = os.pread(fd, window, size - window)
    if not tail.endswith(b"\n") and b"\n" not in tail:
        raise JournalError("journal ends in an over-long line; run atomicsig index")
    good = size if tail.endswith(b"\n") else size - window + tail.rfind(b"\n") + 1
    if good < HEADER_LEN:
        raise JournalError("journal header is torn; run atomicsig index")
    if good == HEADER_LEN:
        return 0, good
    body = tail[: good - (size - window) - 1]
    last = body[body.rfind(b"\n") + 1:]
    try:
        return int(last.split(b" ", 1)[0]), good
    except ValueError as exc:
        raise JournalError("journal's last record is corrupt; run atomicsig index") from exc


def scan(root: Path) -> Iterator[tuple[str, str]]:
    """Every readable ``signature-N`` (up to the first gap, as c/image reads) as (relpath, sha256), sorted."""
    for dirpath, dirnames, _files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != META_DIR and not d.startswith(".tmp-"))
        rel_dir = os.path.relpath(dirpath, root)
        if "@sha256=" not in os.path.basename(dirpath):
            continue
        for n in range(1, MAX_LOOKASIDE_SIGNATURES):
            p = Path(dirpath) / f"signature-{n}"
            try:
                data = p.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                break
            rel = f"{rel_dir}/signature-{n}"
            try:
                parse_sigpath(rel)
            except InputError:
                break  # a directory our followers could not accept anyway (e.g. uppercase)
            yield rel, sha256_hex(data)
