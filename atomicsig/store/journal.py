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

A signature file and its journal line are two writes, so a crash between them would leave a file no follower ever
hears of. Writers therefore drop a tiny *pending* record (:func:`begin_pending`) before they link ``signature-N``
and remove it after the journal line is written; whoever next holds the journal lock finishes the records of
writers that are gone (:meth:`Journal.reconcile`): it re-reads that digest directory under its lock and appends
what the journal lacks.

Exactly one line per change. Every writer of a digest directory holds that directory's lock from before it reads
the directory until its lines are appended (atomicsig.lookaside), so lines for one directory follow its changes in
order. The one writer that reads directories without their locks is the scan of a rebuild (``atomicsig index``, or
the first writer of a store without a journal): a writer's change may fall before or after the scan of its
directory. So a writer notes the epoch before it changes anything and, under the journal lock, compares: same
epoch — append its own lines; another epoch — the scan may have listed part or all of the change, so it appends
what the new journal's view of that directory (:meth:`Journal.view`) lacks. Without this, a fresh store signed
into by 8 threads got a few lines twice (the scan listed a file whose writer then added its own line).

Replaying the journal of one directory — ``add i s`` puts bytes ``s`` at index ``i`` (and nowhere else: a
directory holds identical bytes once, SPEC §3.3), ``del i s`` removes bytes ``s`` — gives exactly the directory's
files; tests check that after every race (tests/test_store_races.py).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from atomicsig import fsutil
from atomicsig.errors import InputError, StorageError
from atomicsig.format import sigpath
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.format.sigpath import MAX_LOOKASIDE_SIGNATURES, SigPath, is_stored_path, parse_sigpath

META_DIR = ".atomicsig"


JOURNAL_NAME = "journal"


LOCK_NAME = "journal.lock"


PENDING_NAME = "pending"


#: A pending record that cannot be parsed is either being written (its owner is between open and write) or was
#: left by a writer killed before it linked anything; it is dropped only once it is this old.
PENDING_TORN_SECONDS = 60.0


MAGIC = b"atomicsig-journal 1 "


HEADER_LEN = len(MAGIC) + 32 + 1  # 53 bytes: magic, 32 hex epoch, newline


#: A journal line longer than this is corruption (or a hostile peer), never a real record.
MAX_LINE = 1024


OPS = ("add", "del")


_SHA = re.compile(r"^[a-f0-9]{64}$")


class JournalError(StorageError):
    """A journal (ours or a peer's) is not in the format above."""


@dataclass(frozen=True)
class Record:
    seq: int
    op: str
    path: SigPath
    sha256: str
    end: int  # byte offset just after this record's newline


def parse_line(line: bytes, end: int) -> Record:
    """One journal line (without its newline) → Record, or JournalError / InputError (bad path)."""
    if len(line) > MAX_LINE:  # also keeps int() below within Python's digit limit (fuzz finding: ValueError)
        raise JournalError(f"journal line longer than {MAX_LINE} bytes")
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


def _validate(items: list[tuple[str, str, str]]) -> None:
    for op, rel, sha in items:
        if op not in OPS or not _SHA.match(sha):
            raise JournalError(f"refusing to journal {op} {rel} {sha}")
        if not is_stored_path(rel):
            parse_sigpath(rel)  # raises, saying why


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
        with fsutil.flocked(self.meta / LOCK_NAME, os.O_RDWR | os.O_CREAT, f"the journal lock in {self.meta}"):
            yield

    def epoch(self) -> str | None:
        try:
            with open(self.path, "rb") as f:
                return parse_header(f.read(HEADER_LEN))
        except FileNotFoundError:
            return None

    def append(self, entries: Iterable[tuple[str, str, str]]) -> None:
        """Append ``(op, relpath, sha256)`` records; creates the journal by a full scan if there is none yet.

        For repairs and tests: a writer that changed a digest directory uses :meth:`commit_dir`, which knows
        whether a rebuild has already listed the change."""
        items = list(entries)
        _validate(items)
        # Decided before taking the lock: Python work under it is what limits parallel signers (the GIL hands a
        # thread back only every few milliseconds), and a record that appears meanwhile waits for the next append.
        check = _suspect_pending(self.meta / PENDING_NAME)
        with self.locked():
            if not self.path.exists():
                # A store that existed before its journal: the scan already sees the new files.
                self._rebuild_locked()
                self._reconcile_locked(covered=True)
                return
            self._reconcile_locked(covered=False, then=items, check=check)

    def commit_dir(self, dirname: str, seen_epoch: str | None, lines: list[tuple[str, str, str]],
                   current: Callable[[], dict[int, str]]) -> None:
        """Journal a change to the digest directory ``dirname``, whose lock the caller holds.

        ``lines``: the change as seen against what the caller read under that lock (``add`` for every index whose
        bytes are new there, ``del`` for every blob it removed); ``seen_epoch``: :meth:`epoch` read under the lock
        before the change; ``current``: index → sha256 of the directory now. Without a journal, the rebuild's scan
        lists the directory as it is now, and only the ``del`` lines are added (so a removal reaches followers even
        from a store that had no journal yet). With another epoch than seen, a rebuild ran during the change: the
        lines appended are what :meth:`view` of the directory lacks (module docstring)."""
        _validate(lines)
        check = _suspect_pending(self.meta / PENDING_NAME)
        with self.locked():
            dels = [x for x in lines if x[0] == "del"]
            if not self.path.exists():
                self._rebuild_locked()
                if dels:
                    self._append_locked(dels)
                self._reconcile_locked(covered=True)
                return
            if self.epoch() != seen_epoch:
                view = self.view(dirname)
                lines = dels + [("add", f"{dirname}/{sigpath.signature_name(i)}", sha)
                                for i, sha in sorted(current().items()) if view.get(i) != sha]
            self._reconcile_locked(covered=False, then=lines, check=check, held=dirname)

    def commit_batch(self, seen_epoch: str | None,
                     changes: list[tuple[str, list[tuple[str, str, str]], Callable[[], dict[int, str]]]]) -> None:
        """:meth:`commit_dir` for many directories at once (the bulk first sync), whose locks the caller holds:
        one journal lock, one write and one fsync for the whole batch. Without a journal (a store's first batch),
        one rebuild lists the batch. If the journal has another epoch than ``seen_epoch`` (a rebuild ran
        meanwhile), each directory goes through :meth:`commit_dir`, which knows what that rebuild may already
        list; that is rare, so its cost does not matter."""
        every = [x for _, lines, _ in changes for x in lines]
        _validate(every)
        check = _suspect_pending(self.meta / PENDING_NAME)
        with self.locked():
            if not self.path.exists():
                # As commit_dir without a journal, once for the batch: the scan lists every file we linked (we
                # hold their directories' locks), only removals need lines. Per directory, each one after the
                # first re-read the new journal (view) and appended with its own fsync: the first batch of a
                # first sync did that 512 times.
                self._rebuild_locked()
                dels = [x for x in every if x[0] == "del"]
                if dels:
                    self._append_locked(dels)
                self._reconcile_locked(covered=True)
                return
            if self.epoch() == seen_epoch:
                self._reconcile_locked(covered=False, then=every, check=check)
                return
        for dirname, lines, current in changes:
            self.commit_dir(dirname, seen_epoch, lines, current)

    def view(self, dirname: str) -> dict[int, str]:
        """index → sha256 of ``dirname`` as the journal's lines replay (module docstring). Reads the whole journal:
        only for repairs (a dead writer's record, a rebuild during a change), never per signature."""
        try:
            with open(self.path, "rb") as f:
                f.seek(HEADER_LEN)
                data = f.read()
        except FileNotFoundError:
            return {}
        data = data[:data.rfind(b"\n") + 1]  # a torn last line is not a record
        needle = f" {dirname}/".encode()
        view: dict[int, str] = {}
        for raw in data.split(b"\n"):
            if needle not in raw:
                continue
            parts = raw.decode("ascii", "replace").split(" ")
            if len(parts) != 4 or parts[1] not in OPS or not _SHA.match(parts[3]):
                continue
            try:
                sp = parse_sigpath(parts[2])  # the lines were validated when written; a stranger's are skipped
            except InputError:
                continue
            if sp.dirname != dirname:
                continue
            sha = parts[3]
            for j in [j for j, s in view.items() if s == sha]:
                del view[j]
            if parts[1] == "add":
                view[sp.index] = sha
        return view

    def resync(self, dirname: str) -> int:
        """Append what the journal lacks for ``dirname`` (whose lock the caller holds); returns lines added."""
        with self.locked():
            if not self.path.exists():
                self._rebuild_locked()
                return 0
            lines = self._resync_lines(dirname)
            if lines:
                self._append_locked(lines)
            return len(lines)

    def _resync_lines(self, dirname: str) -> list[tuple[str, str, str]]:
        """Lines that make :meth:`view` of ``dirname`` equal its files (the caller holds its lock)."""
        from atomicsig.store.sigdir import read_dir

        try:
            now = {s.index: sha256_hex(s.blob) for s in read_dir(self.root / dirname)}
        except StorageError:
            return []
        view = self.view(dirname)
        present = set(now.values())
        lines = [("del", f"{dirname}/{sigpath.signature_name(i)}", sha) for i, sha in sorted(view.items())
                 if sha not in present]
        lines += [("add", f"{dirname}/{sigpath.signature_name(i)}", sha) for i, sha in sorted(now.items())
                  if view.get(i) != sha]
        return lines

    def reconcile(self) -> int:
        """Finish what killed writers left: journal lines for their stored signatures, stale temp files in
        ``.atomicsig/``. Called at the start of ``sign`` to a directory and of every follower pass (also done by
        every :meth:`append` and by ``index``). Returns the number of lines added. A store without ``.atomicsig``
        has nothing to finish and is left untouched."""
        if not self.meta.is_dir():
            return 0
        fsutil.sweep_stale_temps(self.meta)
        with self.locked():
            return self._reconcile_locked(covered=not self.path.exists())

    def _reconcile_locked(self, *, covered: bool, then: list[tuple[str, str, str]] | None = None,
                          check: bool = True, held: str | None = None) -> int:
        """Journal the directories of dead writers' pending records (unless ``covered``: a scan just listed every
        file), followed by ``then``; remove those records only after the lines are durable. Returns lines added.
        ``check=False`` (an append that found no suspect record) only appends ``then``.

        A dead writer's directory is re-read under its lock, tried without waiting (lock order: we hold the
        journal lock); one held by a live writer is left for a later reconcile. ``held``: the directory whose
        lock our caller holds and whose change ``then`` describes; if a dead writer's record names it too, one
        resync of that directory covers both."""
        from atomicsig.store.sigdir import lock_dir

        orphans = _dead_pending(self.meta / PENDING_NAME) if check else []
        try:
            by_dir: dict[str, list[_Orphan]] = {}
            for o in orphans:
                for sigdir in sorted({sd for sd, _ in o.named} if not covered else set()):
                    by_dir.setdefault(sigdir, []).append(o)
            extra: list[tuple[str, str, str]] = []
            unfinished: set[int] = set()  # orphans naming a directory a live writer holds: left for later
            with contextlib.ExitStack() as stack:
                for sigdir, group in sorted(by_dir.items()):
                    d = self.root / sigdir
                    if not d.is_dir():  # never created: nothing was linked
                        continue
                    if sigdir != held and not stack.enter_context(lock_dir(d, wait=False)):
                        unfinished.update(id(o) for o in group)
                        continue
                    extra += self._resync_lines(sigdir)
                    if sigdir == held:
                        then = None
                if extra or then:
                    self._append_locked(extra + (then or []))
            for o in orphans:
                if id(o) not in unfinished:
                    o.remove()
            return len(extra)
        finally:
            for o in orphans:
                o.close()

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
        fsutil.makedirs(self.meta, 0o755)
        fsutil.sweep_stale_temps(self.meta)
        with self.locked():
            n = self._rebuild_locked()
            self._reconcile_locked(covered=True)  # the scan listed whatever dead writers had linked
            return n

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


#: Records are written in place into a slot file of this size (padded with spaces), so that recording an intent
#: creates no file and changes no size: per signature it costs an open, two ``pwrite`` and a close.
SLOT_LEN = 1024


class _Slot:
    """One reusable pending-record file of this process, locked (``flock``) for as long as the process lives.

    The lock is how a reconciler tells a dead owner from a live one: locks die with their process, in every pid
    namespace (a pid check could not tell a container's writer from a dead one). Slots are created once and
    reused because creating and unlinking a file per signature measurably slowed signing (ext4 commits the
    extra directory and inode-bitmap blocks with every fsync).

    The lock is held through a *read-only* descriptor; a writable one is open only while a record is: a
    long-running process (``sync``, ``serve``) holding a file open for writing would make
    ``mount -o remount,ro`` of the sigstore's filesystem fail with EBUSY.
    """

    def __init__(self, pending: Path) -> None:
        path = pending / f"{os.getpid()}-{threading.get_native_id()}-{secrets.token_hex(6)}"
        flags = os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:
                fsutil.makedirs(pending, 0o755)
                fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create a pending record in {pending}: {exc.strerror}") from exc
        try:
            # Until its first record the file is empty; a reconciler leaves empty files alone until they are
            # PENDING_TORN_SECONDS old, so the moment between open and flock is safe.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise StorageError(f"cannot lock a pending record in {pending}: {exc.strerror}") from exc
        self.path, self.fd = path, fd
        self.wfd: int | None = None
        self.used = SLOT_LEN

    def open(self) -> None:
        try:
            self.wfd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot write the pending record {self.path}: {exc.strerror}") from exc

    def write(self, line: bytes) -> None:
        """Overwrite the slot with ``line`` (padded with spaces). One record line is one write of ≤ one page: a
        kill leaves all of it or none. A batch's record (:func:`begin_pending_batch`) may take several writes; a
        kill in the middle of them can only leave a prefix of complete lines before spaces or a torn last line
        (the slot was blank before), and it happens before anything of the batch is linked, so a reader that
        takes the complete, well-formed lines and ignores the rest loses nothing (:func:`_parse_pending`)."""
        assert self.wfd is not None
        data = line.ljust(self.used, b" ")
        try:
            view, at = memoryview(data), 0
            while at < len(data):
                at += os.pwrite(self.wfd, view[at:], at)
        except OSError as exc:
            raise StorageError(f"cannot write the pending record {self.path}: {exc.strerror}") from exc
        self.used = max(self.used, len(data))

    def release(self) -> None:
        """Close the writable descriptor (the slot stays locked)."""
        if self.wfd is not None:
            os.close(self.wfd)
            self.wfd = None

    def close(self) -> None:
        """Drop the lock; a reconciler then treats what the slot says as a dead writer's record."""
        self.release()
        os.close(self.fd)


class _SlotPool:
    """This process's free slots for one sigstore (as many as writers ran at once, e.g. sign's threads)."""

    def __init__(self, pending: Path) -> None:
        self.pending = pending
        self.pid = os.getpid()
        self.free: list[_Slot] = []
        self.names: set[str] = set()  # our slots that are locked (alive); reconcilers skip them unopened
        self.lock = threading.Lock()

    def take(self) -> _Slot:
        with self.lock:
            if self.free:
                return self.free.pop()
        slot = _Slot(self.pending)
        with self.lock:
            self.names.add(slot.path.name)
        return slot

    def give(self, slot: _Slot) -> None:
        slot.release()
        with self.lock:
            self.free.append(slot)

    def close_idle(self) -> None:
        """Remove this process's idle (blank) slots: at exit, so a clean run leaves nothing in ``pending/``.
        Unlinked while still locked, so no reconciler can take one for a dead writer's record meanwhile."""
        with self.lock:
            idle, self.free = self.free, []
            for slot in idle:
                self.names.discard(slot.path.name)
        for slot in idle:
            with contextlib.suppress(OSError):
                os.unlink(slot.path)
            slot.close()

    def drop(self, slot: _Slot) -> None:
        """Unlock a slot for good, leaving its record for a reconciler (which may be this process)."""
        with self.lock:
            self.names.discard(slot.path.name)
        slot.close()


_pools: dict[str, _SlotPool] = {}


_pools_lock = threading.Lock()


def _pool(root: str | os.PathLike[str], *, fresh: bool = False) -> _SlotPool:
    pending = Path(os.path.abspath(root)) / META_DIR / PENDING_NAME
    key = str(pending)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None or pool.pid != os.getpid() or fresh:
            # New store, a forked child (its parent's locks are not ours), or the slots vanished.
            pool = _pools[key] = _SlotPool(pending)
        return pool


@atexit.register
def _close_pools() -> None:
    """At interpreter exit (after sign's worker threads are joined): drop this process's idle slots. A killed
    process cannot do this; its slots are removed by the next reconciler instead."""
    with _pools_lock:
        pools = [p for p in _pools.values() if p.pid == os.getpid()]
    for pool in pools:
        pool.close_idle()


def _own_slots(pending: str) -> set[str]:
    with _pools_lock:
        pool = _pools.get(pending)
    if pool is None or pool.pid != os.getpid():
        return set()
    with pool.lock:
        return set(pool.names)


class PendingRecord:
    """A writer's note "I am about to link a signature with these bytes into this directory".

    Begin it (:func:`begin_pending`) before ``signature-N`` is linked and end it (:meth:`done`) after the journal
    line is written, or when nothing was created. If the process dies in between, the note stays in its slot and
    the next journal writer appends the missing line (:meth:`Journal.reconcile`).
    """

    def __init__(self, pool: _SlotPool, slot: _Slot) -> None:
        self._pool = pool
        self._slot: _Slot | None = slot

    @property
    def path(self) -> Path:
        assert self._slot is not None
        return self._slot.path

    def done(self) -> None:
        """Blank the slot and return it to the pool. A reconciler never sees a live slot (it is locked)."""
        slot, self._slot = self._slot, None
        if slot is None:
            return
        try:
            slot.write(b"")
        except StorageError:
            self._pool.drop(slot)  # a reconciler checks the record left in it and removes the file
            return
        self._pool.give(slot)

    def abandon(self) -> None:
        """Leave the record in place and drop its lock, for a write that failed half-way (e.g. the journal
        append hit a full disk after the link): the next journal writer with room finishes it."""
        slot, self._slot = self._slot, None
        if slot is not None:
            self._pool.drop(slot)

    def __enter__(self) -> PendingRecord:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.done()
        else:
            self.abandon()


def begin_pending(root: str | os.PathLike[str], sigdir: str, sha256: str) -> PendingRecord:
    """Record the intent to link a blob with ``sha256`` into ``sigdir`` (``<repo>@sha256=<hex>``) under ``root``.

    No fsync, deliberately. A process crash (kill -9, OOM) cannot lose a written record: it is in the page cache.
    A power cut can: the slot is overwritten in place, so nothing orders its page before the signature's own
    fsyncs, and a power cut in the ~1 ms between the signature's directory fsync and the journal line's fsync
    can leave a signature that podman reads but followers never hear of until ``atomicsig index``. Closing that
    window needs one more fsync per signature (a third more disk flushes, which dominate the store's cost); a
    power cut mid-signing is rare and the remedy (``atomicsig index``, which followers handle as a new epoch) is
    cheap, so we do not pay it.
    """
    return begin_pending_batch(root, [(sigdir, sha256)])


#: Lines in one batch's pending record (each ≤ ~300 bytes): a reader reads a slot whole, so it stays small.
MAX_PENDING_LINES = 1024


#: A slot bigger than this is not ours (a reader reads at most this much).
MAX_PENDING_BYTES = MAX_PENDING_LINES * MAX_LINE


def begin_pending_batch(root: str | os.PathLike[str], entries: list[tuple[str, str]]) -> PendingRecord:
    """:func:`begin_pending` for a batch writer (:meth:`atomicsig.store.directory.DirectoryStore.append_batch`):
    one record naming every ``(digest directory, sha256)`` it is about to link, written once before the first
    link, instead of a record per signature (an open, two writes and a close each; the bulk first sync spent a
    third of its system calls there). Up to MAX_PENDING_LINES entries; same durability as one record."""
    if not entries or len(entries) > MAX_PENDING_LINES:
        raise ValueError(f"a pending record names 1 to {MAX_PENDING_LINES} signatures, not {len(entries)}")
    line = "".join(f"{sigdir} {sha256}\n" for sigdir, sha256 in entries).encode()
    pool = _pool(root)
    slot = pool.take()
    try:
        try:
            slot.open()
        except StorageError:
            if slot.path.parent.is_dir() and slot.path.exists():
                raise
            # The pending directory was removed under us (the store was deleted and made again): start over.
            pool.drop(slot)
            pool = _pool(root, fresh=True)
            slot = pool.take()
            slot.open()
        slot.write(line)
    except StorageError:
        pool.drop(slot)
        raise
    return PendingRecord(pool, slot)


@dataclass
class _Orphan:
    """A pending record whose owner is gone (we hold its lock)."""

    path: Path
    fd: int
    named: list[tuple[str, str]]  # (digest directory, sha256); empty: a blank (idle) slot or nothing well-formed
    removable: bool

    def remove(self) -> None:
        if self.removable:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def close(self) -> None:
        os.close(self.fd)


#: Per pending directory (absolute path): (its mtime when last checked, monotonic time of that check).
_checked: dict[str, tuple[int, float]] = {}


#: An append re-lists the pending directory at least this often even if its mtime looks unchanged (mtimes tick
#: coarsely, and a writer that dies creates no directory entry).
QUICK_RECHECK_SECONDS = 1.0


def _suspect_pending(pending: Path) -> bool:
    """Whether an append should look for dead writers' records now: one ``stat``, outside the journal lock.

    Yes if the directory changed since this process last checked it (a slot was created or removed) or that was
    QUICK_RECHECK_SECONDS ago. Listing it and trying every slot's lock on each append instead cost 5–10 % of
    parallel signing (8 threads), because Python work under the journal lock waits for the GIL. So a writer that
    dies while its slot was already known alive is reconciled by the first append a second later at most, or by
    the next ``sign``, follower pass or ``index`` (which always check).
    """
    key = os.path.abspath(pending)
    try:
        mtime = os.stat(key).st_mtime_ns
    except FileNotFoundError:
        return False
    last = _checked.get(key)
    return last is None or last[0] != mtime or time.monotonic() - last[1] >= QUICK_RECHECK_SECONDS


def _dead_pending(pending: Path) -> list[_Orphan]:
    """Slots in ``pending`` whose owners are gone, each returned with its lock held (close to release).

    Owners lock a slot right after creating it and keep the lock until they exit, so a slot we can lock is a
    dead process's — or one being created right now (still empty: kept until it is PENDING_TORN_SECONDS old).
    This process's own locked slots are skipped unopened.
    """
    key = os.path.abspath(pending)
    now = time.monotonic()
    try:
        mtime = os.stat(key).st_mtime_ns  # before listing: a slot created after the listing changes it again
        foreign = set(os.listdir(key)) - _own_slots(key)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot list {pending}: {exc.strerror}") from exc
    _checked[key] = (mtime, now)
    out: list[_Orphan] = []
    for name in foreign:
        path = pending / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its owner is alive
            continue
        try:
            data = os.pread(fd, MAX_PENDING_BYTES, 0)
            age = os.fstat(fd).st_mtime
        except OSError:
            os.close(fd)
            continue
        # Empty: a slot between its creation and its first write (or a writer killed right there); keep it a while.
        removable = bool(data) or time.time() - age > PENDING_TORN_SECONDS
        out.append(_Orphan(path, fd, _parse_pending(data), removable=removable))
    return out


def _parse_pending(data: bytes) -> list[tuple[str, str]]:
    """The (digest directory, sha256) lines of a record: its complete, well-formed lines; empty if it is blank
    (an idle slot). A line without its newline is a record torn by a kill while it was written, before anything
    it names was linked (:meth:`_Slot.write`): ignored, like a line that is not well-formed."""
    try:
        text = data.decode("ascii").rstrip(" ")
    except UnicodeDecodeError:
        return []
    out: list[tuple[str, str]] = []
    for line in text.split("\n")[:-1]:  # the last piece has no newline: empty, or torn
        parts = line.split(" ")
        if len(parts) != 2 or not _SHA.match(parts[1]):
            continue
        try:
            repo, digest = sigpath.parse_digest_dirname(parts[0])
            sigpath.stored_digest(digest)
        except InputError:
            continue
        out.append((sigpath.digest_dirname(repo, digest), parts[1]))
    return out


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
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != META_DIR and not d.startswith(".tmp-"))
        rel_dir = os.path.relpath(dirpath, root)
        try:  # only the digest directories a store holds; anything else (e.g. uppercase) followers could not accept
            sigpath.stored_digest(sigpath.parse_digest_dirname(rel_dir)[1])
        except InputError:
            continue
        if any(f.startswith(fsutil.TEMP_PREFIX) for f in files):  # `atomicsig index` cleans up after kills
            fsutil.sweep_stale_temps(dirpath)
        for n in range(1, MAX_LOOKASIDE_SIGNATURES):
            rel = f"{rel_dir}/{sigpath.signature_name(n)}"
            try:  # no links, regular files, 4 MiB: what `atomicsig serve` would serve (fsutil.read_regular_file)
                data = fsutil.read_regular_file(root, rel, MAX_SIGNATURE_SIZE)
            except (FileNotFoundError, NotADirectoryError, fsutil.UnsafeFileError):
                break
            yield rel, sha256_hex(data)
