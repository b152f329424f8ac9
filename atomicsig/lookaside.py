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
import hashlib
import os
import re
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import fsutil
from .blob import MAX_SIGNATURE_SIZE
from .errors import InputError, StorageError
from .reference import Reference, validate_digest

#: c/image fails a read that reaches this index, so at most 127 signatures are usable per image.
MAX_LOOKASIDE_SIGNATURES = 128
DEFAULT_SIGSTORE = "/var/lib/atomic/sigstore"
_SIG_NAME = re.compile(r"^signature-([1-9][0-9]*)$")


def digest_dirname(repo_path: str, digest: str) -> str:
    """``<repo path>@sha256=<hex>``, validated so it cannot contain ``..`` or a leading ``/``."""
    algo, hexpart = validate_digest(digest).split(":", 1)
    if not repo_path or repo_path.startswith("/") or ".." in repo_path.split("/") or "//" in repo_path \
            or os.path.normpath(repo_path) != repo_path:
        raise InputError(f"invalid repository path {repo_path!r}")
    return f"{repo_path}@{algo}={hexpart}"


@dataclass(frozen=True)
class StoredSignature:
    """One signature as found in a store, with where it came from (for messages)."""

    index: int
    blob: bytes
    location: str
    #: Lookaside reads sniff every blob and fail as a whole on an unrecognized one; the extension API does not.
    sniffed: bool = True


@dataclass(frozen=True)
class AppendResult:
    location: str
    index: int | None
    created: bool  # False when identical bytes were already stored


class SignatureStore(ABC):
    """Where simple signatures of images live."""

    @abstractmethod
    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        """All signatures of ``digest`` in ``ref``'s repository, in index order."""

    @abstractmethod
    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        """Store one more signature; identical bytes already present are not stored twice."""

    @abstractmethod
    def describe(self) -> str:
        """Human-readable location, for messages."""

    def append_unless(self, ref: Reference, digest: str, blob: bytes,
                      present: Callable[[list[StoredSignature]], str | None]) -> AppendResult:
        """Append ``blob`` unless ``present`` (given the current signatures) names one that makes it redundant;
        then returns that location with ``created=False``.

        Meant for "sign first, then store unless someone stored an equivalent one meanwhile". This default is a
        plain read then append (remote backends cannot lock); :class:`DirectoryStore` makes it atomic.
        """
        found = present(self.read(ref, digest))
        if found is not None:
            return AppendResult(found, None, False)
        return self.append(ref, digest, blob)


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
                from .sync.origin import remember

                remember(self.root, os.path.relpath(d, self.root), hashlib.sha256(blob).hexdigest(), origin,
                         keep={hashlib.sha256(s.blob).hexdigest() for s in existing})
            return self._append_locked(d, blob, existing, seen)

    def recover(self) -> int:
        """Journal what writers killed mid-append left unjournaled (see atomicsig.sync.journal); lines added."""
        from .sync.journal import Journal

        return Journal(self.root).reconcile()

    def _writable_dir(self, repo_path: str, digest: str) -> Path:
        if not validate_digest(digest).startswith("sha256:"):
            raise InputError(f"cannot store a signature for {digest.split(':', 1)[0]} digest {digest[:23]}…: only "
                             "sha256 digests are stored, because containers/image looks signatures up and matches "
                             "them by the sha256 digest only (SPEC §2.3, §3.1)")
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
        from .sync.journal import begin_pending

        for s in existing:
            if s.blob == blob:
                return AppendResult(s.location, s.index, False)
        rel_dir = os.path.relpath(d, self.root)
        sha = hashlib.sha256(blob).hexdigest()
        with begin_pending(self.root, rel_dir, sha):
            result = append_to_dir(d, blob, existing)
            if result.created:
                try:
                    commit_dir(self.root, d, seen_epoch, [("add", f"{rel_dir}/signature-{result.index}", sha)])
                except StorageError as exc:
                    raise StorageError(f"signature stored at {result.location} but not recorded in the sync "
                                       f"journal: {exc.message}", hint="the next write to this sigstore records it "
                                       f"once there is room, or run `atomicsig index {self.root}`") from exc
        return result


def lock_dir(d: Path, *, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
    """The digest directory's lock: an exclusive ``flock`` on the directory itself, so no lock file appears among
    the signatures readers list. Every atomicsig writer of ``d`` holds it (module docstring)."""
    return fsutil.flocked(d, os.O_RDONLY | os.O_DIRECTORY, str(d), wait=wait)


def journal_epoch(root: Path) -> str | None:
    """The journal's epoch as a writer sees it before changing a directory (None: no journal; "?" unreadable).

    Read under the digest directory's lock, before the change, and compared again under the journal lock
    (:func:`commit_dir`): if they differ, ``atomicsig index`` (or the first writer of a store without a journal)
    rebuilt the journal meanwhile, and its scan may or may not have seen this change."""
    from .sync.journal import Journal, JournalError

    try:
        return Journal(root).epoch()
    except (JournalError, OSError):
        return "?"


def commit_dir(root: Path, d: Path, seen_epoch: str | None, lines: list[tuple[str, str, str]]) -> None:
    """Journal one change to ``d`` (held locked by the caller): ``lines`` as computed from what the caller read.

    Errors are StorageError (InputError from a bad line is turned into one: it is a bug, not user input)."""
    from .sync.journal import Journal

    def now() -> dict[int, str]:
        return {s.index: hashlib.sha256(s.blob).hexdigest() for s in read_dir(d)}
    try:
        Journal(root).commit_dir(os.path.relpath(d, root), seen_epoch, lines, now)
    except InputError as exc:
        raise StorageError(exc.message) from exc


#: What an :class:`fsutil.UnsafeFileError` means, in the words a reader's error message uses.
_UNSAFE_WHY = {"symlink": "it is, or lies under, a symbolic link (a sigstore holds plain files and directories)",
               "not-regular": "it is not a regular file (FIFO, device, socket or directory)",
               "too-large": f"it is larger than the {MAX_SIGNATURE_SIZE // (1024 * 1024)} MiB signature limit",
               "bad-name": "its path leaves the sigstore"}


def read_dir(d: Path, root: Path | None = None, *, stop_at_unsafe: bool = False) -> list[StoredSignature]:
    """Read ``signature-1 …`` until the first gap, like c/image's file lookaside reader, but confined and bounded.

    Every file is read with :func:`fsutil.read_regular_file`: no symlink in any component below ``root`` (default:
    ``d`` itself), regular files only, O_NONBLOCK (a FIFO cannot pin the reader), at most 4 MiB (SPEC §8). c/image
    would follow a planted link or block on a FIFO; we do neither, so such an entry is an error for the whole read
    (:class:`fsutil.UnsafeFileError`, "could not decide") — or, with ``stop_at_unsafe``, the end of the list, which
    is what ``atomicsig serve`` shows: its lookaside GET answers 404 for that file, so a node reading through it
    stops there too, and the extension listing must agree with it (docs/serve.md).
    """
    root = d if root is None else root
    try:
        dfd = fsutil.open_dir_beneath(root, os.path.relpath(d, root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except fsutil.UnsafeFileError as exc:
        if stop_at_unsafe:
            return []
        raise fsutil.UnsafeFileError(f"refusing to read {d}: {_UNSAFE_WHY[exc.why]}", exc.why) from None
    except OSError as exc:
        raise StorageError(f"cannot read {d}: {exc.strerror}") from exc
    out: list[StoredSignature] = []
    try:
        for n in range(1, MAX_LOOKASIDE_SIGNATURES + 1):
            p = d / f"signature-{n}"
            try:
                data = fsutil.read_regular_file(dfd, p.name, MAX_SIGNATURE_SIZE)
            except (FileNotFoundError, NotADirectoryError):
                break
            except fsutil.UnsafeFileError as exc:
                if stop_at_unsafe:
                    break
                raise fsutil.UnsafeFileError(f"refusing to read {p}: {_UNSAFE_WHY[exc.why]}", exc.why) from None
            except OSError as exc:
                raise StorageError(f"cannot read {p}: {exc.strerror}") from exc
            if n == MAX_LOOKASIDE_SIGNATURES:
                raise StorageError(f"{d} holds {n} or more signatures; containers/image refuses to read them")
            out.append(StoredSignature(n, data, str(p)))
    finally:
        os.close(dfd)
    return out


def append_to_dir(d: Path, blob: bytes, existing: list[StoredSignature] | None = None) -> AppendResult:
    """Create the first free ``signature-N`` in ``d`` with ``blob`` unless identical bytes are already there.

    Also removes temp files killed writers left here (:func:`fsutil.sweep_stale_temps`). ``existing``: what the
    caller just read of ``d`` (and swept) under the directory lock, so it is not read twice; a file added since
    is still never overwritten (create-exclusive), only possibly a duplicate of bytes stored meanwhile.
    """
    if existing is None:
        fsutil.sweep_stale_temps(d)
        existing = read_dir(d)
    for s in existing:
        if s.blob == blob:
            return AppendResult(s.location, s.index, False)
    n = len(existing) + 1
    while n < MAX_LOOKASIDE_SIGNATURES:
        p = d / f"signature-{n}"
        if fsutil.create_exclusive(p, blob, 0o644):
            return AppendResult(str(p), n, True)
        # Someone else took N meanwhile; their file is complete (created by link), so check it and move on.
        try:
            if p.read_bytes() == blob:
                return AppendResult(str(p), n, False)
        except OSError:
            pass
        n += 1
    raise StorageError(f"{d} already holds {MAX_LOOKASIDE_SIGNATURES - 1} signatures, the most containers/image reads")


class HTTPLookaside(SignatureStore):
    """A read-only HTTP(S) lookaside, read exactly as containers/image does (404 ends the list, else error)."""

    def __init__(self, base_url: str, session: object | None = None, *, verify: bool | str = True) -> None:
        self.base_url = base_url
        self._session = session
        self.verify = verify

    def describe(self) -> str:
        return self.base_url

    def url(self, ref: Reference, digest: str, n: int) -> str:
        u = urllib.parse.urlsplit(self.base_url)
        path = f"{u.path}/{digest_dirname(ref.path, digest)}/signature-{n}"
        return urllib.parse.urlunsplit(u._replace(path=path))

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        import requests

        from .errors import RegistryError
        from .httpbody import read_at_most

        session = self._session or requests.Session()
        out: list[StoredSignature] = []
        for n in range(1, MAX_LOOKASIDE_SIGNATURES + 1):
            url = self.url(ref, digest, n)
            try:
                resp = session.get(url, stream=True, timeout=30, verify=self.verify)  # type: ignore[attr-defined]
            except requests.RequestException as exc:
                raise RegistryError(f"cannot read {url}: {exc.__class__.__name__}") from exc
            with resp:
                if resp.status_code == 404:
                    break
                if resp.status_code != 200:
                    raise RegistryError(f"reading {url}: HTTP {resp.status_code}", status=resp.status_code)
                data = read_at_most(resp, MAX_SIGNATURE_SIZE, url)
            if n == MAX_LOOKASIDE_SIGNATURES:
                raise RegistryError(f"{url}: server provided {n} signatures; containers/image refuses that many")
            out.append(StoredSignature(n, data, url))
        return out

    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        raise InputError(f"writing directly to an HTTP lookaside ({self.base_url}) is not supported; "
                         "use a file: sigstore or a registry with the signature extension")


def open_store(location: str, *, verify: bool | str = True) -> SignatureStore:
    """A store from ``--sigstore``: a path, ``file://`` URL, or ``http(s)://`` URL."""
    if location.startswith(("http://", "https://")):
        return HTTPLookaside(location.rstrip("/"), verify=verify)
    if location.startswith("file://"):
        path = urllib.parse.unquote(urllib.parse.urlsplit(location).path)
        if not path:
            raise InputError(f"invalid sigstore URL {location!r}")
        return DirectoryStore(path)
    if "://" in location:
        raise InputError(f"unsupported sigstore scheme in {location!r} (use a path, file://, http:// or https://)")
    return DirectoryStore(location)
