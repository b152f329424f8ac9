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

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from atomicsig import fsutil
from atomicsig.errors import InputError, StorageError
from atomicsig.format.reference import Reference
from atomicsig.format.sigpath import digest_dirname, signature_name, stored_digest
from atomicsig.store.base import AppendResult, SignatureStore, StoredSignature
from atomicsig.store.sigdir import append_to_dir, lock_dir, read_dir

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
        return read_dir(self.digest_dir(ref, digest), self.root)

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

    def recover(self) -> int:
        """Journal what writers killed mid-append left unjournaled (see atomicsig.sync.journal); lines added."""
        from atomicsig.store.journal import Journal

        return Journal(self.root).reconcile()

    def _writable_dir(self, repo_path: str, digest: str) -> Path:
        stored_digest(digest)
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"sigstore {self.root} is not a directory")
        d = self.path_dir(repo_path, digest)
        fsutil.makedirs(d, 0o755)
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
