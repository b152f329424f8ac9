"""One digest directory of a lookaside: its lock, the gap-free read c/image does, and append."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from atomicsig import fsutil
from atomicsig.errors import StorageError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.format.sigpath import MAX_LOOKASIDE_SIGNATURES, signature_name
from atomicsig.store.base import AppendResult, StoredSignature, TooManySignatures


def lock_dir(d: Path, *, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
    """The digest directory's lock: an exclusive ``flock`` on the directory itself, so no lock file appears among
    the signatures readers list. Every atomicsig writer of ``d`` holds it (module docstring)."""
    return fsutil.flocked(d, os.O_RDONLY | os.O_DIRECTORY, str(d), wait=wait)


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
            p = d / signature_name(n)
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
                raise TooManySignatures(f"{d} holds {n} or more signatures; containers/image refuses to read them")
            out.append(StoredSignature(n, data, str(p)))
    finally:
        os.close(dfd)
    return out


def append_to_dir(d: Path, blob: bytes, existing: list[StoredSignature] | None = None, *,
                  sync: bool = True) -> AppendResult:
    """Create the first free ``signature-N`` in ``d`` with ``blob`` unless identical bytes are already there.

    Also removes temp files killed writers left here (:func:`fsutil.sweep_stale_temps`). ``existing``: what the
    caller just read of ``d`` (and swept) under the directory lock, so it is not read twice; a file added since
    is still never overwritten (create-exclusive), only possibly a duplicate of bytes stored meanwhile.
    ``sync=False``: no fsync here; the batch writer flushes once per batch (:func:`fsutil.sync_filesystem`).
    """
    if existing is None:
        fsutil.sweep_stale_temps(d)
        existing = read_dir(d)
    for s in existing:
        if s.blob == blob:
            return AppendResult(s.location, s.index, False)
    n = len(existing) + 1
    while n < MAX_LOOKASIDE_SIGNATURES:
        p = d / signature_name(n)
        if fsutil.create_exclusive(p, blob, 0o644, sync=sync):
            return AppendResult(str(p), n, True)
        # Someone else took N meanwhile; their file is complete (created by link), so check it and move on.
        try:
            if p.read_bytes() == blob:
                return AppendResult(str(p), n, False)
        except OSError:
            pass
        n += 1
    raise StorageError(f"{d} already holds {MAX_LOOKASIDE_SIGNATURES - 1} signatures, the most containers/image reads")
