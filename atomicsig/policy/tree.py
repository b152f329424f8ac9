"""The files under ``--root`` that ``policy apply`` reads and writes, reached only through directory descriptors.

Why: a path check followed by a path operation (``realpath`` → ``open``/``mkdir``/``rename``) trusts the tree not
to change in between and, worse, trusted nothing at all for directories that did not exist yet — ``R/etc/pki``
symlinked elsewhere made apply create ``containers/`` and write keyrings outside R (issue 12 #8). Here every
operation starts at a descriptor of R and walks one component at a time with ``O_NOFOLLOW``, creating missing
directories with ``mkdirat`` and writing files with temp + fsync + ``renameat`` inside the same directory
descriptor (fsutil.atomic_write_at). Nothing reached that way can be outside R unless a directory is moved out of
R while apply holds it.

Symlinks, one rule for ``--root R`` and for ``/`` (docs/policy.md "Symlinks under --root"):

* A symlinked **directory** is followed only when its target, resolved on this machine, lies inside R; the walk
  then restarts from R along the resolved path (again with ``O_NOFOLLOW``, so a link swapped in meanwhile is
  checked again). With R = ``/`` every target is inside R: ``/etc -> /usr/etc`` and ostree's
  ``/usr/local -> /var/usrlocal`` are normal, and whoever can plant a link in ``/etc`` or ``/var/lib`` is root
  already. With ``--root``, a link leaving R is refused (exit 2), and so is an absolute link written for a chroot
  (``R/etc/pki -> /usr/share/pki``): it names the host's directory, not R's; use relative links in such trees.
* ``policy.json`` (and unmanaged ``registries.d/*.yaml``, which apply only reads) may be a symlink under the same
  rule: read through it when the target stays inside R. policy.json is then replaced by a regular file by the
  commit rename; the link target is never written.
* Files apply owns (keyrings, ``atomicsig.yaml``, the state record, staged and backup files) are never links:
  a link there was not made by apply and is refused (exit 2).
* Only regular files are read (a FIFO or device under a managed name is refused rather than blocking or
  reading forever), at most MAX_FILE_BYTES.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import weakref
from pathlib import Path

from atomicsig import fsutil
from atomicsig.errors import PolicyError, StorageError

#: Larger than any policy.json, keyring or registries.d file a node needs (a 500-scope policy.json is ~100 KiB).
MAX_FILE_BYTES = 16 * 1024 * 1024
#: Symlinks followed while resolving one directory (Linux MAXSYMLINKS).
MAX_HOPS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _close_all(fds: dict[str, tuple[int, str]]) -> None:
    for fd, _ in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def split(node_path: str) -> tuple[str, str]:
    """(directory, name) of an absolute node path such as ``/etc/containers/policy.json``."""
    d, _, name = node_path.rpartition("/")
    return d, name


class NodeTree:
    """A node's file system as seen from ``root`` (``/`` on a node, a build tree with ``--root``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"--root {self.root} is not a directory")
        self.real = os.path.realpath(self.root)
        # Real directory relative to the root -> (fd, same path); closed with the tree. ``_alias``: directories
        # reached through a symlink, by the path asked for (their fds belong to ``_fds``).
        self._fds: dict[str, tuple[int, str]] = {}
        self._alias: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._fds)

    def close(self) -> None:
        self._finalizer()

    def display(self, node_path: str) -> Path:
        """Where ``node_path`` is under the root, for messages."""
        return self.root / node_path.lstrip("/")

    # ---- directories --------------------------------------------------------------------------------------------

    def _root_fd(self, create: bool) -> int | None:
        if "" in self._fds:
            return self._fds[""][0]
        if create:
            fsutil.makedirs(self.root)
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot open --root {self.root}: {exc.strerror or exc}") from exc
        self._fds[""] = (fd, "")
        return fd

    def dir_fd(self, node_dir: str, *, create: bool) -> int | None:
        """A descriptor of ``<root><node_dir>`` reached without leaving the root, or None if it does not exist
        (``create=False``). Missing levels are created 0755 (``create=True``) and their parents fsynced."""
        key = node_dir.strip("/")
        with self._lock:
            hit = self._fds.get(key) or self._alias.get(key)
            if hit is not None:
                return hit[0]
            found = self._walk(node_dir, create)
            if found is None:
                return None
            if found[1] != key:
                self._alias[key] = found
            return found[0]

    def _walk(self, node_dir: str, create: bool) -> tuple[int, str] | None:
        parts = [p for p in node_dir.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"not a clean node path: {node_dir!r}")
        fd = self._root_fd(create)
        if fd is None:
            return None
        done: list[str] = []
        hops = 0
        while parts:
            name = parts.pop(0)
            key = "/".join([*done, name])
            if key in self._fds:
                fd = self._fds[key][0]
                done.append(name)
                continue
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                self._mkdir(fd, name, key)
                parts.insert(0, name)
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise StorageError(f"cannot open {self.display(key)}: {exc.strerror or exc}") from exc
                target = self._follow(fd, name, key)
                hops += 1
                if hops > MAX_HOPS:
                    raise PolicyError(f"{self.display(node_dir)}: too many levels of symbolic links") from exc
                parts = [p for p in target.split("/") if p] + parts
                fd, done = self._fds[""][0], []
                continue
            self._fds[key] = (nfd, key)
            fd = nfd
            done.append(name)
        return fd, "/".join(done)

    def _mkdir(self, parent_fd: int, name: str, key: str) -> None:
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        except FileExistsError:
            return  # a racing creator; the caller opens it again with O_NOFOLLOW
        except OSError as exc:
            raise StorageError(f"cannot create directory {self.display(key)}: {exc.strerror or exc}") from exc
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                os.fchmod(fd, 0o755)  # the mode must not depend on the umask (SECURITY.md)
            finally:
                os.close(fd)
            os.fsync(parent_fd)
        except OSError as exc:
            raise StorageError(f"cannot create directory {self.display(key)}: {exc.strerror or exc}") from exc

    def _follow(self, parent_fd: int, name: str, key: str) -> str:
        """``key`` (relative to the real root) is a symlink, or not a directory: where the link leads, relative to
        the real root, when that is inside the root; PolicyError otherwise."""
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except OSError as exc:
            raise StorageError(f"cannot read {self.display(key)}: {exc.strerror or exc}") from exc
        if not stat.S_ISLNK(st.st_mode):
            raise StorageError(f"{self.display(key)} is not a directory")
        return self._inside(key)

    def _inside(self, key: str) -> str:
        target = os.path.realpath(os.path.join(self.real, key))
        if not fsutil.is_within(self.real, target):
            raise PolicyError(f"{self.display(key)} is a symlink to {target}, outside {self.root}; refusing to "
                              f"read or write through it")
        return os.path.relpath(target, self.real) if target != self.real else ""

    def _real_dir(self, fd: int) -> str:
        for dfd, real in self._fds.values():
            if dfd == fd:
                return real
        raise AssertionError("descriptor not from this tree")

    # ---- files --------------------------------------------------------------------------------------------------

    def read(self, node_path: str, *, follow: bool = False) -> bytes | None:
        """The content of a regular file, None if it does not exist. A symlink is refused, or with ``follow``
        read through when its target lies inside the root (module docstring)."""
        d, name = split(node_path)
        fd = self.dir_fd(d, create=False)
        if fd is None:
            return None
        try:
            return fsutil.read_regular_file(fd, name, MAX_FILE_BYTES)  # O_NOFOLLOW, O_NONBLOCK, S_ISREG, bounded
        except FileNotFoundError:
            return None
        except fsutil.UnsafeFileError as exc:
            if exc.why == "too-large":
                raise PolicyError(f"{self.display(node_path)} is larger than {MAX_FILE_BYTES} bytes") from None
            if exc.why != "symlink":
                raise PolicyError(f"{self.display(node_path)} is not a regular file; refusing to use it") from None
            if not follow:
                raise PolicyError(f"{self.display(node_path)} is a symlink; apply replaces or removes only regular "
                                  f"files it wrote itself") from None
            with self._lock:
                key = "/".join(x for x in (self._real_dir(fd), name) if x)
            target = self._inside(key)
            return self.read("/" + target, follow=False) if target else None
        except OSError as exc:
            raise StorageError(f"cannot read {self.display(node_path)}: {exc.strerror or exc}") from exc

    def lexists(self, node_path: str) -> bool:
        d, name = split(node_path)
        fd = self.dir_fd(d, create=False)
        if fd is None:
            return False
        try:
            os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot read {self.display(node_path)}: {exc.strerror or exc}") from exc
        return True

    def mode(self, node_path: str) -> int | None:
        d, name = split(node_path)
        fd = self.dir_fd(d, create=False)
        try:
            st = None if fd is None else os.lstat(name, dir_fd=fd)
        except OSError:
            return None
        return st.st_mode & 0o777 if st is not None and stat.S_ISREG(st.st_mode) else None

    def listdir(self, node_dir: str) -> list[str]:
        fd = self.dir_fd(node_dir, create=False)
        if fd is None:
            return []
        try:
            return os.listdir(fd)
        except OSError as exc:
            raise StorageError(f"cannot list {self.display(node_dir)}: {exc.strerror or exc}") from exc

    def write(self, node_path: str, data: bytes, mode: int = 0o644) -> None:
        """temp + fsync + rename inside the directory's descriptor; the directory fsync is :meth:`sync_dir`."""
        d, name = split(node_path)
        fd = self.dir_fd(d, create=True)
        assert fd is not None
        fsutil.atomic_write_at(fd, name, data, mode, display=str(self.display(node_path)))

    def rename(self, src: str, dst: str) -> None:
        """Rename within one directory (the commit renames of apply)."""
        d, sname = split(src)
        d2, dname = split(dst)
        assert d == d2, (src, dst)
        fd = self.dir_fd(d, create=False)
        try:
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
            os.replace(sname, dname, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            raise StorageError(f"cannot rename {self.display(src)} to {self.display(dst)}: "
                               f"{exc.strerror or exc}") from exc

    def unlink(self, node_path: str) -> None:
        """Remove the name (a link is removed, never followed); a missing file is not an error."""
        d, name = split(node_path)
        fd = self.dir_fd(d, create=False)
        if fd is None:
            return
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove {self.display(node_path)}: {exc.strerror or exc}") from exc

    def sync_dir(self, node_dir: str) -> None:
        fd = self.dir_fd(node_dir, create=False)
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"cannot sync {self.display(node_dir)}: {exc.strerror or exc}") from exc
