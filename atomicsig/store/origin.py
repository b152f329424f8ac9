"""Which sync sources delivered each signature, so that only they can make us delete it (SECURITY.md).

A peer's ``del`` record names a digest directory and the sha256 of the bytes; anyone can compute both for any
signature it has seen. With ``propagate-deletes: true`` a hostile or compromised peer could otherwise delete
signatures it never served (ones signed here, or synced from an honest peer), by hash alone. So when sync stores a
signature, it records the source's URL (as written in the sync config) for those bytes, and a ``del`` is honoured
only from a recorded source:

* a signature made or uploaded locally has no record: no peer can delete it (``atomicsig prune`` here can);
* a signature several sources delivered records all of them (a source offering bytes we already hold from
  another source is added); a ``del`` from one of them withdraws that source only, and the signature goes when
  the last one withdraws. So a peer that re-serves an honest source's public signatures first cannot delete them
  for everybody: it can only withdraw itself;
* renaming a source's URL in the config orphans its records (its deletes are then refused, logged as
  ``not-origin``): refusing is the safe side.

Where a record lives: on the digest directory itself, as the extended attribute ``user.atomicsig.origins``
(``{sha256: [url, …]}`` in JSON). The directory exists anyway, and setting an attribute on it is one ``fsetxattr``
(~45 µs measured under strace on ext4) where a file of its own was a create in ``.atomicsig/origins/`` (~180 µs) plus
a write: a third of the kernel time of a first sync, which stores one new directory per signature
(docs/performance.md). The record also goes with its directory, and nothing that reads the lookaside (skopeo,
podman, nginx, ``serve``) sees it.

Where the filesystem keeps no ``user.`` attributes (``ENOTSUP``), or the record is larger than one attribute may be
(ext4: about one block, reached by a directory holding dozens of signatures from several long URLs), it is the file
``<sigstore>/.atomicsig/origins/<repo path>@sha256=<hex>.json`` — also what stores written before the attribute
hold, read as they were. The attribute wins when both exist; every write (under the directory's lock,
atomicsig.lookaside) puts the attribute and then removes the old file, or, where the attribute cannot hold the
record, removes the attribute and writes the file (temp + rename). A crash between the two steps leaves either the
fresh attribute (which wins) or no record at all (deletes refused: the safe side).

A new signature's record is written *before* it is linked: a crash in between leaves an entry for bytes that are
not stored, which nothing acts on, never a stored signature without its origin. The record is flushed with the
directory (``fsync`` of it, or the batch writer's one flush); a power cut can at worst lose the newest entries,
which makes those signatures undeletable by their source — the safe side, like every other way an entry goes
missing: a store copied without its extended attributes (``rsync`` without ``-X``, ``tar`` without ``--xattrs``;
``cp -a`` keeps them) is one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

from atomicsig import fsutil
from atomicsig.format.sigpath import parse_digest_dirname, stored_digest
from atomicsig.store.journal import META_DIR

ORIGINS_DIR = "origins"
#: The extended attribute of a digest directory that holds its record (module docstring).
XATTR = "user.atomicsig.origins"
#: ≤ 127 entries of 64 hex + a few URLs each; anything bigger is not ours.
_MAX_BYTES = 1 << 20
#: The filesystem keeps no user attributes here: the record is a file.
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
#: The record is larger than one attribute may be on this filesystem: the record is a file.
_TOO_BIG = frozenset({errno.E2BIG, errno.ENOSPC, errno.ERANGE})

Doc = dict[str, list[str]]


def _file(root: Path, dirname: str) -> Path:
    stored_digest(parse_digest_dirname(dirname)[1])  # a digest directory a store holds: no "..", no absolute path
    return root / META_DIR / ORIGINS_DIR / f"{dirname}.json"


def _parse(data: bytes) -> Doc:
    try:
        doc = json.loads(data) if len(data) <= _MAX_BYTES else None
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: [u for u in v if isinstance(u, str)] for k, v in doc.items()
            if isinstance(k, str) and isinstance(v, list)}


def _encode(doc: Doc) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


def _load_file(path: Path) -> Doc:
    try:
        with open(path, "rb") as f:
            return _parse(f.read(_MAX_BYTES + 1))
    except OSError:
        return {}


def _read(root: Path, dirname: str, dfd: int | None) -> Doc:
    """The record of ``dirname`` (``dfd``: the directory, if open): the attribute, else the file, else empty."""
    if dfd is not None:
        try:
            return _parse(os.getxattr(dfd, XATTR))
        except OSError as exc:
            if exc.errno not in _NO_XATTRS and exc.errno != errno.ENODATA:
                return {}  # unreadable: no record (deletes refused)
    return _load_file(_file(root, dirname))


@contextlib.contextmanager
def _opened(root: Path, dirname: str) -> Iterator[int | None]:
    """The digest directory by descriptor, reached without following a symlink below ``root``; None if absent."""
    try:
        dfd = fsutil.open_dir_beneath(root, dirname)
    except (FileNotFoundError, NotADirectoryError, fsutil.UnsafeFileError):
        yield None
        return
    try:
        yield dfd
    finally:
        os.close(dfd)


def _write(root: Path, dirname: str, dfd: int | None, doc: Doc, *, sync: bool = True) -> None:
    """Put ``doc`` as the record of ``dirname`` (module docstring: the attribute, else the file)."""
    path = _file(root, dirname)
    if dfd is not None:
        try:
            os.setxattr(dfd, XATTR, _encode(doc))
        except OSError as exc:
            if exc.errno not in _NO_XATTRS | _TOO_BIG:
                raise
            with contextlib.suppress(OSError):
                os.removexattr(dfd, XATTR)  # a file record is read only where there is no attribute
        else:
            if sync:
                os.fsync(dfd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a record from before the attribute, or from when it did not fit
            return
    fsutil.makedirs(path.parent, 0o755, sync=sync)
    fsutil.atomic_write(path, _encode(doc), 0o644, sync_dir=False, sync=sync)


def new_record(shas: list[str], source: str) -> bytes:
    """The record of a digest directory whose every signature (``shas``) ``source`` delivered, encoded as
    stored, in the attribute or the file alike."""
    return _encode({sha: [source] for sha in shas})


def put_new(dfd: int, shas: list[str], source: str) -> bool:
    """The record of a digest directory a batch writer has just created (nothing stored in it yet, so nothing
    earlier to keep): every new sha256 delivered by ``source``, as the attribute; no flush (the batch flushes the
    filesystem once). False where the attribute cannot hold it: the caller writes :func:`new_record` to the
    file instead."""
    try:
        os.setxattr(dfd, XATTR, new_record(shas, source))
        return True
    except OSError as exc:
        if exc.errno in _NO_XATTRS | _TOO_BIG:
            return False
        raise


def records(root: Path, dirname: str) -> Doc:
    """The whole record of ``dirname`` (``{sha256: [source, …]}``), wherever it is kept."""
    with _opened(root, dirname) as dfd:
        return _read(root, dirname, dfd)


def recorded(root: Path, dirname: str, sha256: str) -> list[str]:
    """The sources that delivered these bytes into ``dirname``; empty: local, unknown or unreadable (a delete
    is then refused)."""
    return records(root, dirname).get(sha256, [])


def remember(root: Path, dirname: str, sha256: str | list[str], source: str, *, keep: set[str],
             sync: bool = True, dfd: int | None = None) -> None:
    """Record ``source`` for new bytes (the caller holds the directory's lock and is about to link them; a batch
    writer names all it is about to link there); entries for bytes no longer in the directory (not in ``keep``)
    are dropped on the way. ``sync=False``: a batch writer flushes the filesystem once for its whole batch
    (atomicsig.store.directory.DirectoryStore.stage_batch), and passes the directory it holds open as ``dfd``
    (opened beneath the root without following a link, as here)."""
    with contextlib.nullcontext(dfd) if dfd is not None else _opened(root, dirname) as d:
        doc = {k: v for k, v in _read(root, dirname, d).items() if k in keep}
        for sha in [sha256] if isinstance(sha256, str) else sha256:
            doc[sha] = [source]
        _write(root, dirname, d, doc, sync=sync)


def also_delivered(root: Path, dirname: str, sha256: str, source: str) -> bool:
    """``source`` offered bytes we already hold from another source: add it (caller holds the directory's lock).
    Bytes without a record (made or uploaded here) stay local. Returns whether the record changed."""
    with _opened(root, dirname) as dfd:
        doc = _read(root, dirname, dfd)
        if sha256 not in doc or source in doc[sha256]:
            return False
        doc[sha256].append(source)
        _write(root, dirname, dfd, doc)
        return True


def withdraw(root: Path, dirname: str, sha256: str, source: str) -> None:
    """``source`` deleted these bytes but others delivered them too: forget it (caller holds the lock)."""
    with _opened(root, dirname) as dfd:
        doc = _read(root, dirname, dfd)
        if source in doc.get(sha256, []):
            doc[sha256] = [u for u in doc[sha256] if u != source]
            _write(root, dirname, dfd, doc)
