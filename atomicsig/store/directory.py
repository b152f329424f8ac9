"""The lookaside sigstore layout and its storage backends (SPEC §3).

Layout: ``<base>/<repository path without host>@<algo>=<hex>/signature-<N>``, N = 1, 2, … without gaps, because
containers/image stops reading at the first missing index and fails on index 128.

Backends share one small interface, :class:`SignatureStore`: a local directory (read + append), an HTTP(S)
lookaside (read only, as in containers/image), and — in :mod:`atomicsig.extension` — the registry signature
extension API. Appending never overwrites: ``signature-N`` is created with :func:`fsutil.create_exclusive`, so
concurrent signers each get their own index and nobody's file is lost.

One lock per digest directory. Every atomicsig writer of a digest directory — append (``sign``, serve's PUT, sync
intake), ``prune``, a peer's delete, journal repair — holds an exclusive ``flock`` on the directory itself
(:func:`lock_dir`) while it reads the directory, decides, changes it and writes its journal lines, and only then
releases it. So a rewrite (renumbering to stay gap-free, atomicsig.sync.prune) never drops a file that was linked
after it looked, and the journal lines of one directory are in the order of its changes. Lock order: a digest
directory, then the journal lock (atomicsig.sync.journal); whoever holds the journal lock only ever *tries* a
directory lock (``wait=False``), so the two orders cannot deadlock. Writers outside atomicsig (skopeo, podman sign)
take no lock; they only append, and create-exclusive keeps them from overwriting anybody.

Only ``sha256`` digest directories are written (SPEC §2.3, §3.1): go-digest parses sha384/sha512 digests, but
containers/image looks signatures up under the image's sha256 digest and ``MatchesDigest`` compares with sha256
only, so a signature stored under another algorithm is never read by a node. Storing one would only make a
signature nobody can use, and the sync journal (which names sha256 paths only) could not carry it; every path
(``sign``, serve's PUT, sync intake, the journal, ``prune``) therefore refuses them before anything is stored.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from atomicsig import fsutil
from atomicsig.errors import InputError, StorageError
from atomicsig.format.reference import Reference
from atomicsig.format.sigpath import MAX_LOOKASIDE_SIGNATURES, digest_dirname, signature_name, stored_digest
from atomicsig.store.base import AppendResult, SignatureStore, StoredSignature
from atomicsig.store.sigdir import append_to_dir, lock_dir, read_dir

if TYPE_CHECKING:
    from atomicsig.store.journal import PendingRecord

DEFAULT_SIGSTORE = "/var/lib/atomic/sigstore"


class DirectoryStore(SignatureStore):
    """A lookaside on the local filesystem (``file://`` or a plain path)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def digest_dir(self, ref: Reference, digest: str) -> Path:
        return self.path_dir(ref.path, digest)

    def path_dir(self, repo_path: str, digest: str) -> Path:
        d = self.root / digest_dirname(repo_path, digest)
        # A symlink inside the store must not redirect reads or writes outside of it. Check the deepest part
        # of the path that exists, so that nothing is created outside before the check fails.
        existing = d
        while not existing.exists() and existing not in (self.root, existing.parent):
            existing = existing.parent
        if (existing.exists() or existing.is_symlink()) and not fsutil.is_within(self.root, existing):
            raise StorageError(f"{d} resolves outside the sigstore {self.root}")
        return d

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        # Not digest_dir(): read_dir already opens every component beneath the root without following a link
        # (fsutil.open_dir_beneath), which is stricter than path_dir's realpath check and skips its two walks of
        # the path (a tenth of an uncached webhook review, issue 17). ``serve`` reads the same way.
        try:
            return read_dir(self.root / digest_dirname(ref.path, digest), self.root)
        except fsutil.UnsafeFileError:
            self.digest_dir(ref, digest)  # a link leading out of the store: say so, as before
            raise

    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        return self.append_path(ref.path, digest, blob)

    def append_unless(self, ref: Reference, digest: str, blob: bytes,
                      present: Callable[[list[StoredSignature]], str | None]) -> AppendResult:
        """Re-check and append under the digest directory's lock (all writers take it, see the module
        docstring). Keep the slow signing outside."""
        d = self._writable_dir(ref.path, digest)
        with lock_dir(d):
            seen = journal_epoch(self.root)
            fsutil.sweep_stale_temps(d)
            existing = read_dir(d)
            found = present(existing)
            if found is not None:
                return AppendResult(found, None, False)
            return self._append_locked(d, blob, existing, seen)

    def append_path(self, repo_path: str, digest: str, blob: bytes, *, origin: str | None = None) -> AppendResult:
        """Append by repository path (what ``atomicsig sync`` gets from a peer), then record it in the journal.

        ``origin``: the sync source that delivered ``blob``; remembered (atomicsig.sync.origin) before the file is
        linked, because only that source may later delete it (SECURITY.md, sync peers).
        """
        d = self._writable_dir(repo_path, digest)
        with lock_dir(d):
            seen = journal_epoch(self.root)
            fsutil.sweep_stale_temps(d)
            existing = read_dir(d)
            if origin is not None and all(s.blob != blob for s in existing):
                from atomicsig.store.origin import remember

                remember(self.root, os.path.relpath(d, self.root), hashlib.sha256(blob).hexdigest(), origin,
                         keep={hashlib.sha256(s.blob).hexdigest() for s in existing})
            return self._append_locked(d, blob, existing, seen)

    def append_batch(self, items: Sequence[tuple[str, str, bytes]], *,
                     origin: str | None = None) -> list[AppendResult | StorageError]:
        """:meth:`append_path` for many ``(repo path, digest, blob)`` at once, with one filesystem flush and one
        journal write for the batch instead of ~4 fsyncs per signature (which capped a first sync at ~250
        signatures/s; docs/sync.md "Bulk first sync"): :meth:`stage_batch`, then :meth:`StagedBatch.commit`.
        Per item: the result, or the StorageError that refused it (a full directory)."""
        staged = self.stage_batch(items, origin=origin)
        staged.commit()
        return staged.results

    def stage_batch(self, items: Sequence[tuple[str, str, bytes]], *,
                    origin: str | None = None) -> StagedBatch:
        """Link a batch's new signatures and return it *staged*: every digest directory it touches is locked, its
        files are linked but neither flushed nor journaled until :meth:`StagedBatch.commit` (or given up by
        :meth:`StagedBatch.abort`). Split from :meth:`append_batch` so that the bulk first sync can link the next
        batch while this one's flush runs (atomicsig.sync.packsync): the flushes (one ``syncfs`` per batch, ~50 ms
        each on this project's disk) took 9.9 s of a 69 s first sync.

        Same rules as one append: every directory's lock is held until the batch is journaled (two batch writers
        cannot deadlock: a batch waits for a directory only while it holds no journal lock, and single-directory
        writers take the journal lock last), identical bytes are never stored twice, the next free index is
        taken create-exclusive (``link``), the source is remembered before the link, and a pending record covers
        each new file until its journal line is written (a kill in between loses no line: the next journal
        writer adds it).

        Directories are walked and written by descriptor (``mkdir``/``open`` with ``O_NOFOLLOW`` relative to the
        parent): a symlink planted anywhere below the root fails the batch instead of leading outside, without
        a realpath per signature.

        Crash safety: a file's name appears only once its content is complete (link of a written temp file), so
        ``kill -9`` can leave no partial signature and no gap; the journal lines, which tell followers and the
        caller's cursor that the batch is stored, are written only after :func:`fsutil.sync_filesystem` made
        the batch durable (:meth:`StagedBatch.commit`).

        System calls per new signature are what bounds a first sync (docs/performance.md), so: every directory
        is read and every new file decided first, then *one* pending record names them all (not one per
        signature), a new directory's origin record is written once with all its entries, and the signature is
        written to an unnamed ``O_TMPFILE`` and linked (:func:`_link_next`). About 11 calls per signature."""
        from atomicsig.store.journal import MAX_PENDING_LINES, META_DIR, begin_pending_batch

        out: list[AppendResult | StorageError | None] = [None] * len(items)
        by_dir: dict[str, list[int]] = {}
        for i, (repo, digest, _) in enumerate(items):
            stored_digest(digest)
            by_dir.setdefault(digest_dirname(repo, digest), []).append(i)
        fsutil.makedirs(self.root / META_DIR, 0o755)
        umask = fsutil.current_umask()
        walker = _DirWalker(self.root, umask)
        pendings: list[PendingRecord] = []
        changes: list[tuple[str, list[tuple[str, str, str]], Callable[[], dict[int, str]]]] = []
        with _or_give_up(self.root, walker, pendings):
            locked: dict[str, tuple[int, bool]] = {}
            for rel_dir in sorted(by_dir):
                dfd, created = walker.ensure(rel_dir)
                fcntl.flock(dfd, fcntl.LOCK_EX)
                locked[rel_dir] = (dfd, created)
            seen = journal_epoch(self.root)
            plans: list[_DirPlan] = []
            for rel_dir, idxs in by_dir.items():
                dfd, created = locked[rel_dir]
                plan = _DirPlan(rel_dir, dfd, created)
                if not created:
                    fsutil.sweep_stale_temps(self.root / rel_dir)
                    try:
                        plan.existing = read_dir(self.root / rel_dir, self.root)
                    except StorageError as exc:  # 128+ files: c/image would refuse the whole directory
                        for i in idxs:
                            out[i] = exc
                        continue
                plan.decide(items, idxs, out)
                plans.append(plan)
            named = [(p.rel_dir, sha) for p in plans for _, sha in p.new]
            for at in range(0, len(named), MAX_PENDING_LINES):  # before the first link (journal module docstring)
                pendings.append(begin_pending_batch(self.root, named[at:at + MAX_PENDING_LINES]))
            root_s = str(self.root)  # locations by string concatenation: a Path per signature cost more than the link
            for plan in plans:
                d = f"{root_s}/{plan.rel_dir}"
                if origin is not None and plan.new:
                    self._remember_plan(walker, plan, origin, umask)
                lines: list[tuple[str, str, str]] = []
                for i, sha in plan.new:
                    blob = items[i][2]
                    res = _link_next(plan.dfd, d, blob, plan.existing, umask)
                    out[i] = res
                    if res.created and res.index is not None:
                        plan.existing.append(StoredSignature(res.index, blob, res.location))
                        lines.append(("add", f"{plan.rel_dir}/{signature_name(res.index)}", sha))
                for j, first in plan.same_as:  # the same bytes twice in the batch: stored once (SPEC §3.3)
                    done = out[first]
                    out[j] = AppendResult(done.location, done.index, False) if isinstance(done, AppendResult) \
                        else done
                if lines:
                    changes.append((plan.rel_dir, lines, functools.partial(_indexed, d)))
        return StagedBatch(self.root, walker, pendings, changes, seen,
                           [r if r is not None else StorageError("not stored") for r in out], frozenset(by_dir))

    def _remember_plan(self, walker: _DirWalker, plan: _DirPlan, origin: str, umask: int | None) -> None:
        """atomicsig.store.origin.remember for a batch, before the directory's first link. A directory created by
        this batch has no earlier record worth keeping and no signature yet, so its record — every new sha256 of
        the batch — is written in one go: the directory's attribute (origin.put_new), or where the filesystem
        has none, the file, in place (no temp + rename): until the first link nothing it describes exists, a
        reader that finds it torn treats it as "no record" (the safe side, atomicsig.store.origin), and a kill
        before the link leaves a record that the next writer of the directory rewrites. No fsync: the batch's
        flush covers it."""
        from atomicsig.store.journal import META_DIR
        from atomicsig.store.origin import ORIGINS_DIR, new_record, put_new, remember

        shas = [sha for _, sha in plan.new]
        if not plan.created:
            remember(self.root, plan.rel_dir, shas, origin,
                     keep={hashlib.sha256(s.blob).hexdigest() for s in plan.existing}, sync=False, dfd=plan.dfd)
            return
        if put_new(plan.dfd, shas, origin):
            return
        parent, _, name = f"{META_DIR}/{ORIGINS_DIR}/{plan.rel_dir}.json".rpartition("/")
        pfd, _ = walker.ensure(parent)
        _write_in_place(pfd, name, new_record(shas, origin), umask)

    def recover(self) -> int:
        """Journal what writers killed mid-append left unjournaled (see atomicsig.sync.journal); lines added."""
        from atomicsig.store.journal import Journal

        return Journal(self.root).reconcile()

    def _writable_dir(self, repo_path: str, digest: str, *, sync: bool = True) -> Path:
        stored_digest(digest)
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"sigstore {self.root} is not a directory")
        d = self.path_dir(repo_path, digest)
        fsutil.makedirs(d, 0o755, sync=sync)
        if not fsutil.is_within(self.root, d):
            raise StorageError(f"{d} resolves outside the sigstore {self.root}")
        return d

    def _append_locked(self, d: Path, blob: bytes, existing: list[StoredSignature],
                       seen_epoch: str | None) -> AppendResult:
        """Store and journal; the caller holds ``d``'s lock, read ``existing`` and ``seen_epoch`` under it.

        A pending record is around the two writes so a kill between them loses no journal line: the next journal
        writer finds the record of a dead owner and journals that directory. On an error the record is abandoned,
        not removed, so a line that failed (disk full) is added by a later writer."""
        from atomicsig.store.journal import begin_pending

        for s in existing:
            if s.blob == blob:
                return AppendResult(s.location, s.index, False)
        rel_dir = os.path.relpath(d, self.root)
        sha = hashlib.sha256(blob).hexdigest()
        with begin_pending(self.root, rel_dir, sha):
            result = append_to_dir(d, blob, existing)
            if result.created:
                try:
                    name = signature_name(result.index or 0)  # created, so append_to_dir named its index
                    commit_dir(self.root, d, seen_epoch, [("add", f"{rel_dir}/{name}", sha)])
                except StorageError as exc:
                    raise StorageError(f"signature stored at {result.location} but not recorded in the sync "
                                       f"journal: {exc.message}", hint="the next write to this sigstore records it "
                                       f"once there is room, or run `atomicsig index {self.root}`") from exc
        return result


def _give_up(walker: _DirWalker, pendings: list[PendingRecord]) -> None:
    """A batch that failed: leave its pending records for the next journal writer (which journals whatever was
    linked, atomicsig.store.journal) and release its directories' locks."""
    for p in pendings:
        p.abandon()
    walker.close()  # closing the digest directories' descriptors releases their locks


@contextlib.contextmanager
def _or_give_up(root: Path, walker: _DirWalker, pendings: list[PendingRecord]) -> Iterator[None]:
    """Staging or committing a batch: on any error :func:`_give_up`, and name the store in an OSError."""
    try:
        yield
    except OSError as exc:
        _give_up(walker, pendings)
        raise StorageError(f"cannot store a batch in {root}: {exc.strerror or exc}") from exc
    except BaseException:
        _give_up(walker, pendings)
        raise


class StagedBatch:
    """A batch whose signatures are linked (:meth:`DirectoryStore.stage_batch`) but not yet durable or journaled.
    It holds the locks of :attr:`dirs` until :meth:`commit` or :meth:`abort`. :meth:`commit` may run in another
    thread than the one that staged it (the bulk first sync flushes batch k while it links batch k+1); it never
    waits for anything of the staging thread, so the staging thread may wait for it."""

    def __init__(self, root: Path, walker: _DirWalker, pendings: list[PendingRecord],
                 changes: list[tuple[str, list[tuple[str, str, str]], Callable[[], dict[int, str]]]],
                 seen: str | None, results: list[AppendResult | StorageError], dirs: frozenset[str]) -> None:
        self.root, self._walker, self._pendings, self._changes, self._seen = root, walker, pendings, changes, seen
        #: Per item, in order: created or duplicate (known once staged; durable only after :meth:`commit`), or the
        #: StorageError that refused it.
        self.results = results
        #: The digest directories (relative to the root) this batch holds locked until it is committed.
        self.dirs = dirs
        self._open = True

    @property
    def journaled(self) -> bool:
        """Whether the store had a journal when this batch was staged. Without one, the commit rebuilds the
        journal from a scan of the whole store, which would also list another batch linked meanwhile: such a
        batch must be committed before the next is staged."""
        return self._seen not in (None, "?")

    def commit(self) -> None:
        """Flush the filesystem, then write the batch's journal lines, then release its locks. On an error the
        pending records are left for the next journal writer (StorageError), and the locks are released."""
        from atomicsig.store.journal import Journal

        assert self._open, "a staged batch is committed or aborted once"
        self._open = False
        with _or_give_up(self.root, self._walker, self._pendings):
            fsutil.sync_filesystem(self.root)
            if self._changes:
                Journal(self.root).commit_batch(self._seen, self._changes)
        self._walker.close()
        for p in self._pendings:
            p.done()

    def abort(self) -> None:
        """Give the batch up without its journal lines (an error elsewhere): what it linked stays, and the next
        journal writer journals it from the pending records, as after a kill."""
        if self._open:
            self._open = False
            _give_up(self._walker, self._pendings)


class _DirPlan:
    """One digest directory of a batch, locked: what it holds and which of the batch's items are new there."""

    def __init__(self, rel_dir: str, dfd: int, created: bool) -> None:
        self.rel_dir, self.dfd, self.created = rel_dir, dfd, created
        self.existing: list[StoredSignature] = []
        self.new: list[tuple[int, str]] = []  # (item index, sha256) to link, in order
        self.same_as: list[tuple[int, int]] = []  # (item index, earlier item of the batch with the same bytes)

    def decide(self, items: Sequence[tuple[str, str, bytes]], idxs: list[int],
               out: list[AppendResult | StorageError | None]) -> None:
        """Dedup by bytes against the directory and the batch (SPEC §3.3), refuse what would not fit."""
        first: dict[bytes, int] = {}
        for i in idxs:
            blob = items[i][2]
            same = next((s for s in self.existing if s.blob == blob), None)
            if same is not None:
                out[i] = AppendResult(same.location, same.index, False)
            elif blob in first:
                self.same_as.append((i, first[blob]))
            elif len(self.existing) + len(self.new) >= MAX_LOOKASIDE_SIGNATURES - 1:
                out[i] = StorageError(f"{self.rel_dir} already holds {len(self.existing) + len(self.new)} "
                                      "signatures")
            else:
                first[blob] = i
                self.new.append((i, hashlib.sha256(blob).hexdigest()))


class _DirWalker:
    """Directories below a store root by descriptor, created on the way (mode 0755 whatever the umask), never
    through a symlink (``O_NOFOLLOW``). Parent descriptors are shared by every digest directory of a batch."""

    def __init__(self, root: Path, umask: int | None = None) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.fds: dict[str, int] = {}
        self.chmod = umask is None or umask & 0o755 != 0  # mkdir gave 0755 already: no fchmod per directory

    def ensure(self, rel: str) -> tuple[int, bool]:
        """(descriptor, whether the last component was created now) of ``root/rel``."""
        cur, created, prefix = self.root_fd, False, ""
        for name in rel.split("/"):
            prefix = f"{prefix}/{name}" if prefix else name
            fd = self.fds.get(prefix)
            if fd is None:
                try:
                    os.mkdir(name, 0o755, dir_fd=cur)
                    created = True
                except FileExistsError:
                    created = False
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise StorageError(f"{prefix} in the sigstore is a symbolic link or not a directory") from None
                    raise
                if created and self.chmod:
                    os.fchmod(fd, 0o755)
                self.fds[prefix] = fd
            else:
                created = False
            cur = fd
        return cur, created

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        os.close(self.root_fd)


def _fill(fd: int, data: bytes, umask: int | None) -> None:
    """Give the new file ``fd`` mode 0644 — an ``fchmod`` only when the umask (None: unknown) would have taken
    bits from it — and write all of ``data``. No fsync (the batch writer flushes once)."""
    if umask is None or umask & 0o644:
        os.fchmod(fd, 0o644)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_at(dfd: int, name: str, data: bytes, *, replace: bool) -> bool:
    """Write ``data`` to a temp file in ``dfd`` and rename (``replace``) or link (create-exclusive) it to ``name``;
    no fsync (the batch writer flushes once). False: ``name`` existed (create-exclusive only)."""
    tmp = f"{fsutil.TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
    try:
        try:
            _fill(fd, data, None)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            return True
        try:
            os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)


def _write_in_place(dfd: int, name: str, data: bytes, umask: int | None) -> None:
    """Create or truncate ``name`` in ``dfd`` and write ``data`` (mode 0644), no temp file: only for a file no
    reader relies on yet (see the caller). No fsync (the batch writer flushes once)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
    try:
        _fill(fd, data, umask)
    finally:
        os.close(fd)


#: Whether ``O_TMPFILE`` + ``linkat`` through /proc works here (None: not tried yet in this process).
_tmpfile_ok: bool | None = None if hasattr(os, "O_TMPFILE") else False


def _unnamed(dfd: int, blob: bytes, umask: int | None) -> int | None:
    """An unnamed file in ``dfd`` holding ``blob`` (``O_TMPFILE``), or None where the filesystem or kernel
    cannot make one. Never visible under a name until linked, and gone with its descriptor if never linked: no
    temp name to choose, unlink or sweep after a kill."""
    global _tmpfile_ok
    if _tmpfile_ok is False:
        return None
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=dfd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            _tmpfile_ok = False
            return None
        raise
    try:
        _fill(fd, blob, umask)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _link_unnamed(fd: int, dfd: int, name: str) -> bool:
    """Give the unnamed file ``fd`` the name ``name`` in ``dfd``, create-exclusive. False: ``name`` exists.
    ``linkat`` of /proc/self/fd/N with AT_SYMLINK_FOLLOW, the way open(2) documents for O_TMPFILE (linking by
    AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH)."""
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
        return True
    except FileExistsError:
        return False


def _link_next(dfd: int, d: str, blob: bytes, existing: list[StoredSignature],
               umask: int | None = None) -> AppendResult:
    """:func:`append_to_dir` by descriptor, for a batch: the first free ``signature-N`` after ``existing``.
    Written to an unnamed file (:func:`_unnamed`) and linked; where that is not available, a temp file is
    written and linked (:func:`_write_at`)."""
    global _tmpfile_ok
    fd = _unnamed(dfd, blob, umask)
    n = len(existing) + 1
    try:
        while n < MAX_LOOKASIDE_SIGNATURES:
            name = signature_name(n)
            if fd is not None:
                try:
                    linked = _link_unnamed(fd, dfd, name)
                    _tmpfile_ok = True
                except FileNotFoundError:
                    if _tmpfile_ok or os.path.isdir("/proc/self/fd"):
                        raise  # the directory is gone, not /proc
                    _tmpfile_ok = False  # no /proc mounted: named temp files from now on
                    os.close(fd)
                    fd = None
                    continue
            else:
                linked = _write_at(dfd, name, blob, replace=False)
            if linked:
                return AppendResult(f"{d}/{name}", n, True)
        try:  # someone else took N meanwhile (a writer that takes no lock: skopeo); complete, since linked
            if fsutil.read_regular_file(dfd, name, len(blob) + 1) == blob:
                return AppendResult(f"{d}/{name}", n, False)
        except OSError:
            pass
        n += 1
    finally:
        if fd is not None:
            os.close(fd)
    raise StorageError(f"{d} already holds {MAX_LOOKASIDE_SIGNATURES - 1} signatures, the most containers/image reads")


def _indexed(d: str) -> dict[int, str]:
    return {s.index: hashlib.sha256(s.blob).hexdigest() for s in read_dir(Path(d))}


def journal_epoch(root: Path) -> str | None:
    """The journal's epoch as a writer sees it before changing a directory (None: no journal; "?" unreadable).

    Read under the digest directory's lock, before the change, and compared again under the journal lock
    (:func:`commit_dir`): if they differ, ``atomicsig index`` (or the first writer of a store without a journal)
    rebuilt the journal meanwhile, and its scan may or may not have seen this change."""
    from atomicsig.store.journal import Journal, JournalError

    try:
        return Journal(root).epoch()
    except (JournalError, OSError):
        return "?"


def commit_dir(root: Path, d: Path, seen_epoch: str | None, lines: list[tuple[str, str, str]]) -> None:
    """Journal one change to ``d`` (held locked by the caller): ``lines`` as computed from what the caller read.

    Errors are StorageError (InputError from a bad line is turned into one: it is a bug, not user input)."""
    from atomicsig.store.journal import Journal

    def now() -> dict[int, str]:
        return {s.index: hashlib.sha256(s.blob).hexdigest() for s in read_dir(d)}
    try:
        Journal(root).commit_dir(os.path.relpath(d, root), seen_epoch, lines, now)
    except InputError as exc:
        raise StorageError(exc.message) from exc
