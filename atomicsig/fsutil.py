"""Crash-safe file writes, the one helper every writer in atomicsig uses.

Rule: a reader (podman, CRI-O, skopeo, our own sync) must only ever see the old complete file or the new
complete file. So we write to a temporary file in the same directory, fsync it, then either rename it over the
target (replace semantics, for policy.json and friends) or hard-link it to a name that must not exist yet
(create-exclusive semantics, for ``signature-N``: two signers racing for the same N must not overwrite each
other, and ``link(2)`` fails with EEXIST atomically). Finally the directory is fsynced so the new name survives
a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import StorageError


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename/link inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_in(directory: Path, data: bytes, mode: int) -> Iterator[str]:
    """Write ``data`` to a fsynced temp file in ``directory``; remove it on the way out if still there."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp + fsync + rename + directory fsync).

    ``sync_dir=False`` leaves the directory fsync to the caller, who writes many files into one directory and
    calls :func:`fsync_dir` once before anything that depends on them (the policy compiler's phases).
    """
    target = Path(path)
    try:
        with _temp_in(target.parent, data, mode) as tmp:
            os.replace(tmp, target)
        if sync_dir:
            fsync_dir(target.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc


def create_exclusive(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> bool:
    """Create ``path`` with ``data`` only if it does not exist. Returns False if the name was taken.

    The content is complete before the name appears (link of a fsynced temp file), so a concurrent reader never
    sees a partial ``signature-N``.
    """
    target = Path(path)
    try:
        with _temp_in(target.parent, data, mode) as tmp:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
        fsync_dir(target.parent)
        return True
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc


def makedirs(path: str | os.PathLike[str], mode: int = 0o755) -> None:
    """mkdir -p with an explicit mode that ignores the umask, fsyncing each newly created level's parent."""
    target = Path(path)
    missing: list[Path] = []
    cur = target
    while not cur.exists():
        missing.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot create directory {d}: {exc.strerror or exc}") from exc
        else:
            os.chmod(d, mode)
            fsync_dir(d.parent)
    if not target.is_dir():
        raise StorageError(f"{target} exists and is not a directory")


def is_within(root: str | os.PathLike[str], candidate: str | os.PathLike[str]) -> bool:
    """True if ``candidate`` (after resolving symlinks) lies inside ``root`` (also resolved)."""
    r = os.path.realpath(root)
    c = os.path.realpath(candidate)
    return c == r or c.startswith(r.rstrip(os.sep) + os.sep)
