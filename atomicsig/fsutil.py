"""Crash-safe file writes, the one helper every writer in atomicsig uses.

Rule: a reader (podman, CRI-O, skopeo, our own sync) must only ever see the old complete file or the new
complete file. So we write to a temporary file in the same directory, fsync it, then either rename it over the
target (replace semantics, for policy.json and friends) or hard-link it to a name that must not exist yet
(create-exclusive semantics, for ``signature-N``: two signers racing for the same N must not overwrite each
other, and ``link(2)`` fails with EEXIST atomically). Finally the directory is fsynced so the new name survives
a power cut.

Temp names carry the writer's pid (``.tmp-<pid>-<random>``) so that a later writer can tell a leftover of a
killed process from a file being written right now: :func:`sweep_stale_temps`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import StorageError

TEMP_PREFIX = ".tmp-"
#: A leftover of a writer whose pid is gone is removed after this long; the delay covers a writer in another pid
#: namespace (a container sharing the store) whose pid means nothing here but happens to be free.
STALE_DEAD_PID_SECONDS = 60.0
#: Any temp file this old is a leftover whatever its pid says: no writer here holds a small file open that long.
STALE_ANY_SECONDS = 3600.0
_TEMP_PID = re.compile(r"^\.tmp-([0-9]+)-")


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
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=directory)
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


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a process in our pid namespace (EPERM: it exists but belongs to someone else)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(directory: str | os.PathLike[str], now: float | None = None) -> int:
    """Remove temp files a killed writer left in ``directory``; returns how many were removed.

    A SIGKILL between the temp write and the ``finally`` that unlinks it leaves ``.tmp-<pid>-*`` behind. No reader
    opens these (readers open ``signature-N`` or exact file names), but they pile up, so writers call this when
    they list a directory anyway. A file goes when its pid is not alive *and* it is older than
    STALE_DEAD_PID_SECONDS, or when it is older than STALE_ANY_SECONDS whatever its pid (pids are per namespace).
    Only regular files are touched (``prune`` keeps ``.tmp-prune-*`` directories elsewhere). Errors are ignored:
    a sweep is housekeeping and must never fail a write, nor a reader without write permission.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        m = _TEMP_PID.match(entry.name)
        dead = m is not None and not pid_alive(int(m.group(1)))
        if age > STALE_ANY_SECONDS or (dead and age > STALE_DEAD_PID_SECONDS):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def flocked(path: str | os.PathLike[str], flags: int, what: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` opened with ``flags`` (a directory, or a lock file to create).

    flock, not fcntl locks: it belongs to the open file, so threads of one process exclude each other too, and
    the kernel drops it when a killed holder's descriptor goes away. ``wait=False`` does not block: the block
    then runs with ``False`` when someone else holds the lock (and nothing is held) — for a holder of one lock
    that must not wait for another taken in the opposite order (the journal's reconciler, lock order in
    atomicsig.lookaside).
    """
    import fcntl

    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open {what}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
