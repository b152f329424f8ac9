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
import functools
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from atomicsig.errors import StorageError

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
def _temp_in(directory: Path, data: bytes, mode: int, sync: bool = True) -> Iterator[str]:
    """Write ``data`` to a fsynced temp file in ``directory``; remove it on the way out if still there.
    ``sync=False``: the caller flushes a whole batch at once (:func:`sync_filesystem`) before relying on it."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, sync_dir: bool = True,
                 sync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp + fsync + rename + directory fsync).

    ``sync_dir=False`` leaves the directory fsync to the caller, who writes many files into one directory and
    calls :func:`fsync_dir` once before anything that depends on them (the policy compiler's phases).
    ``sync=False`` skips every fsync: a batch writer flushes the whole batch with :func:`sync_filesystem`.
    """
    target = Path(path)
    try:
        with _temp_in(target.parent, data, mode, sync) as tmp:
            os.replace(tmp, target)
        if sync_dir and sync:
            fsync_dir(target.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def atomic_stream(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """:func:`atomic_write` for output too large to build in memory (``bundle export``): the body of the ``with``
    writes to a temp file in ``path``'s directory; on a normal exit it is fsynced and renamed over ``path`` (then
    the directory is fsynced), on an exception it is removed and ``path`` is untouched."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=target.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_at(dir_fd: int, name: str, data: bytes, mode: int = 0o644, *, display: str = "") -> None:
    """:func:`atomic_write` relative to an open directory: temp file created ``O_EXCL|O_NOFOLLOW`` in ``dir_fd``,
    fsynced, then ``renameat`` over ``name`` in the same directory. Nothing is resolved by path, so a symlink
    swapped into the path after the caller opened ``dir_fd`` cannot redirect the write (policy apply, issue 12 #8).
    The directory fsync is the caller's (one per directory and stage). ``display`` names the file in errors."""
    import secrets

    tmp = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    renamed = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            renamed = True
        finally:
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
    except OSError as exc:
        raise StorageError(f"cannot write {display or name}: {exc.strerror or exc}") from exc


def create_exclusive(path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, sync: bool = True) -> bool:
    """Create ``path`` with ``data`` only if it does not exist. Returns False if the name was taken.

    The content is complete before the name appears (link of a fsynced temp file), so a concurrent reader never
    sees a partial ``signature-N``. ``sync=False`` (a batch writer: the bulk first sync) skips both fsyncs: the
    name still appears only once the content is complete (a killed process cannot leave a partial file), and the
    caller calls :func:`sync_filesystem` once for the batch before anything depends on it (journal, cursor).
    """
    target = Path(path)
    try:
        with _temp_in(target.parent, data, mode, sync) as tmp:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
        if sync:
            fsync_dir(target.parent)
        return True
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc


def makedirs(path: str | os.PathLike[str], mode: int = 0o755, *, sync: bool = True) -> None:
    """mkdir -p with an explicit mode that ignores the umask, fsyncing each newly created level's parent
    (``sync=False``: left to the caller's :func:`sync_filesystem` for a whole batch)."""
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
            if sync:
                fsync_dir(d.parent)
    if not target.is_dir():
        raise StorageError(f"{target} exists and is not a directory")


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Make every write to the filesystem holding ``path`` durable: one ``syncfs(2)`` instead of an fsync per
    file and directory. A batch writer (the bulk first sync, thousands of small files) calls it once per batch,
    before the journal lines that announce the batch; per-file fsyncs were most of its cost (docs/sync.md).
    Falls back to ``sync(2)`` where syncfs is unavailable."""
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = _libc()
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise StorageError(f"cannot flush the filesystem of {path}: {os.strerror(err)}")
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


@functools.cache
def _libc() -> Any:
    """libc through ctypes, looked up once per process: ``find_library`` runs ``ldconfig -p`` in a child
    process, which a batch writer calling :func:`sync_filesystem` per batch paid every time."""
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def current_umask() -> int | None:
    """This process's umask, read from /proc (None where that is unavailable). ``os.umask`` can only read it by
    changing it, which would race with other threads creating files. A batch writer uses it to skip an
    ``fchmod`` per file when the umask already gives the mode it wants."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


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


# ---- confined reads ---------------------------------------------------------------------------------------------


class UnsafeFileError(StorageError):
    """A name under a store that is not a plain regular file reached through plain directories.

    ``why`` is one of ``symlink`` (a link in the file's name or in a directory under the root), ``not-regular``
    (FIFO, device, socket, directory), ``too-large`` (over the caller's limit) or ``bad-name``. Readers decide what
    it means for them (serve: 404, verify: cannot decide), so it is its own class, not a plain StorageError.
    """

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _components(relative: str) -> list[str]:
    parts = relative.split("/")
    if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UnsafeFileError(f"refusing to read {relative!r}: not a plain relative path", "bad-name")
    return parts


def _is_link(name: str, dir_fd: int) -> bool:
    import stat

    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_beneath(start: int, parts: list[str], flags: int, shown: str) -> int:
    """Open ``parts`` one component at a time from the directory fd ``start`` (not closed), never following a link.

    Python has no openat2(RESOLVE_BENEATH), so the walk is done by hand: each directory is opened with O_NOFOLLOW
    relative to the previous one, so a symlink anywhere below the root fails with ELOOP (or ENOTDIR) instead of
    leading elsewhere, and no path string is re-resolved between a check and the open.
    """
    fd = start
    try:
        for i, name in enumerate(parts):
            try:
                nxt = os.open(name, flags if i == len(parts) - 1 else _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, fd):
                    raise UnsafeFileError(f"refusing to read {shown}: {name} is a symbolic link", "symlink") from None
                raise
            if fd != start:
                os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        if fd != start:
            os.close(fd)
        raise


def open_dir_beneath(root: str | os.PathLike[str] | int, relative: str) -> int:
    """A directory fd for ``root/relative`` reached without following any symlink below ``root`` (caller closes).

    ``root`` itself (a path, or an open directory fd) is trusted as given: an administrator may well make
    ``/var/lib/atomic/sigstore`` a link to another disk. FileNotFoundError / NotADirectoryError pass through, so a
    caller can treat an absent directory as "no signatures".
    """
    return _dir_beneath(root, [] if relative in ("", ".") else _components(relative), relative)


def _dir_beneath(root: str | os.PathLike[str] | int, parts: list[str], shown: str) -> int:
    if isinstance(root, int):
        return _open_beneath(root, parts, _DIR_FLAGS, shown) if parts else os.dup(root)
    base = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_beneath(base, parts, _DIR_FLAGS, shown) if parts else os.dup(base)
    finally:
        os.close(base)


def open_regular_file(root: str | os.PathLike[str] | int, relative: str) -> int:
    """An fd of the regular file ``root/relative``: no symlink in any component below ``root``, O_NONBLOCK so a
    FIFO never blocks the open, and fstat must say S_ISREG (FIFOs, devices, sockets, directories refused).

    FileNotFoundError and NotADirectoryError pass through (readers treat them as "absent"); other OSErrors too.
    """
    import stat

    parts = _components(relative)
    dir_fd = _dir_beneath(root, parts[:-1], relative)
    try:
        fd = _open_beneath(dir_fd, parts[-1:], _FILE_FLAGS, relative)
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFileError(f"refusing to read {relative}: not a regular file", "not-regular")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular_nonblocking(path: str | os.PathLike[str]) -> bytes | None:
    """The bytes of the configuration file ``path``, None if it does not exist. Opened without blocking and refused
    unless regular (StorageError): a FIFO or device planted where policy.json or a registries.d file belongs must
    not hang ``audit``/``apply``/``explain`` forever; the answer is then "could not check" (exit 3)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise StorageError(f"cannot read {path}: not a regular file")
            return fh.read()
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_regular_file(root: str | os.PathLike[str] | int, relative: str, limit: int) -> bytes:
    """The bytes of the regular file ``root/relative``, opened as :func:`open_regular_file` does, at most ``limit``.

    Every read of a sigstore goes through here (serve's two routes, verify/sign of a directory store, sync, index):
    a ``signature-N`` planted as a link to a file outside the store, to ``/dev/zero`` or as a FIFO must neither leak
    that file, nor exhaust memory, nor pin the reader. ``limit`` is the 4 MiB signature bound of SPEC §8 for
    signatures; a file over it (or growing past it while read) raises UnsafeFileError("too-large").
    """
    fd = open_regular_file(root, relative)
    try:
        if os.fstat(fd).st_size > limit:
            raise UnsafeFileError(f"refusing to read {relative}: larger than {limit} bytes", "too-large")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnsafeFileError(f"refusing to read {relative}: larger than {limit} bytes", "too-large")
        return b"".join(chunks)
    finally:
        os.close(fd)
